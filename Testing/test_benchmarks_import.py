"""Benchmarks that nobody runs rot: every entry point imports, and none imports a sibling script by its bare name
(``import nnunet_peer`` broke ``python3 -m benchmarks.inference`` once ``benchmarks/`` became a package)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_and_reaches_its_siblings_through_the_package(name):
    importlib.import_module(f"benchmarks.{name}")
    tree = ast.parse((BENCHMARKS / f"{name}.py").read_text(encoding="utf-8"))
    bare = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
            if alias.name in MODULES]
    bare += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0
             and node.module in MODULES]
    assert not bare, f"benchmarks/{name}.py imports {bare} by bare name: use `from benchmarks import ...`"


def test_fine_tune_benchmark_scenarios_train_on_real_cts_and_never_on_s0009(tmp_path):
    import json

    from benchmarks import finetune

    for name, scenario in finetune.SCENARIOS.items():
        assert all("s0009" not in str(path) for case in scenario.cases for path in case), name
        case_list, mapping = finetune.write_dataset(scenario, len(scenario.cases), tmp_path / name)
        listed = json.loads(case_list.read_text())
        assert list(listed["labels"])[1:] == list(scenario.new_classes)
        assert set(json.loads(mapping.read_text()).values()) == set(range(1, len(scenario.new_classes) + 1))
        assert set(finetune.totalseg_ids_by_name(scenario)) >= set(scenario.new_classes) | {"liver", "spleen"}

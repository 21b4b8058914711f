"""What the ``maskmed`` commands share is declared once: the device names, the threshold defaults, the image
suffixes, the exit codes and which error gets which."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from factories import tiny_model_file

from maskmed_core.cli import build_parser
from maskmed_core.devices import DEVICES, TRAINING_DEVICES, DeviceError
from maskmed_core.exit_codes import KNOWN_FAILURES, ExitCode, exit_code_for, exit_codes_help, known_exit_code

REPO = Path(__file__).resolve().parents[1]


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest)


@pytest.mark.parametrize("command", ["predict", "evaluate", "demo", "train"])
def test_every_command_offers_the_one_device_list(command):
    wanted = TRAINING_DEVICES if command == "train" else DEVICES
    assert tuple(_action(_command_parsers()[command], "device").choices) == wanted
    assert set(TRAINING_DEVICES) < set(DEVICES)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_thresholds_default_to_the_semantic_defaults(command):
    from maskmed_core.inference import result
    from maskmed_core.model import semantic

    parser = _command_parsers()[command]
    assert _action(parser, "query_threshold").default == semantic.DEFAULT_QUERY_THRESHOLD
    assert _action(parser, "class_threshold").default == semantic.DEFAULT_CLASS_THRESHOLD
    assert result.DEFAULT_CLASS_THRESHOLD is semantic.DEFAULT_CLASS_THRESHOLD


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_every_image_suffix_names_a_case_and_a_label_only_file(tmp_path, suffix):
    from maskmed_core.predict_command import case_name
    from maskmed_core.training.cache import _label_only_name
    from maskmed_core.training.trainer import _label_only_files

    assert case_name(tmp_path / f"ct{suffix.upper()}") == "ct"
    assert _label_only_name(tmp_path / f"labels{suffix}") == "labels-labels"
    (tmp_path / f"labels{suffix}").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a label map")
    assert _label_only_files([str(tmp_path)]) == [tmp_path / f"labels{suffix}"]


# ----- one error-to-exit-code mapping -----------------------------------------------------------------------------


def test_every_known_failure_names_a_real_exception_type():
    import importlib

    for name in KNOWN_FAILURES:
        module, _, qualname = name.rpartition(".")
        kind = getattr(importlib.import_module(module), qualname)
        assert isinstance(kind, type) and issubclass(kind, BaseException), name


def test_errors_get_their_exit_code_by_type_and_a_bug_is_not_a_usage_error():
    from maskmed_core.checkpoint import ModelFileError
    from maskmed_core.io.errors import InputError, OutputLocationError
    from maskmed_core.plans.fingerprint import PlanOptionError
    from maskmed_core.training.options import OptionError
    from maskmed_core.training.state import TrainingStateError
    from maskmed_core.training.trainer import DivergedError, TrainingError

    assert exit_code_for(OutputLocationError("x")) == ExitCode.USAGE  # nearer than its base InputError
    assert exit_code_for(InputError("x")) == ExitCode.BAD_INPUT
    assert exit_code_for(DivergedError("x")) == ExitCode.DIVERGED
    assert exit_code_for(TrainingError("x")) == ExitCode.BAD_INPUT
    assert exit_code_for(ModelFileError("x")) == ExitCode.BAD_MODEL
    for refused in (OptionError("x"), PlanOptionError("x"), TrainingStateError("x"), DeviceError("x")):
        assert exit_code_for(refused) == ExitCode.USAGE
    assert exit_code_for(FileNotFoundError("x")) == ExitCode.ERROR
    for bug in (ValueError("x"), TypeError("x"), KeyError("x")):
        assert known_exit_code(bug) is None and exit_code_for(bug) == ExitCode.ERROR


@pytest.fixture
def model_path(tmp_path) -> Path:
    return tiny_model_file(tmp_path / "tiny.maskmed")


def _bug(*args, **kwargs):
    raise ValueError("an internal bug")


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "demo", "average"])
def test_an_internal_bug_exits_as_an_error_not_as_bad_usage(command, tmp_path, capsys, monkeypatch, model_path):
    from maskmed_core.cli import main

    monkeypatch.setattr("maskmed_core.inference.Predictor.from_file", _bug)
    monkeypatch.setattr("maskmed_core.training.trainer.run_training", _bug)
    monkeypatch.setattr("maskmed_core.model_averaging.average_model_files", _bug)
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")
    argv = {"predict": ["predict", str(ct), "--model", str(model_path), "-o", str(tmp_path / "out")],
            "train": ["train", str(tmp_path), "-o", str(tmp_path / "out")],
            "evaluate": ["evaluate", str(model_path), str(ct), str(ct)],
            "demo": ["demo", "--model", str(model_path), "-o", str(tmp_path / "out")],
            "average": ["average", str(tmp_path / "out.maskmed"), str(model_path), str(model_path)]}[command]
    assert main(argv) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "internal error, a bug in MaskMed" in err and "ValueError: an internal bug" in err


def test_a_device_that_is_not_here_is_a_usage_error(tmp_path, capsys, monkeypatch, model_path):
    from maskmed_core.cli import main

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")
    assert main(["predict", str(ct), "--model", str(model_path), "-o", str(tmp_path / "out"), "--device",
                 "cuda"]) == ExitCode.USAGE
    assert "no CUDA GPU is usable here" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "demo", "average"])
def test_every_command_lists_its_exit_codes_and_the_readme_lists_them_all(command):
    parser = _command_parsers()[command]
    assert parser.epilog.startswith("exit codes: 0 ok, 1 error, 2 usage")
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert exit_codes_help() in readme


# ----- commands stand beside each other, above what they share -----------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (at its top or inside functions), as dotted names."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "maskmed_core").glob("*_command.py")), ids=lambda p: p.name)
def test_no_command_imports_another_command(path):
    commands = {f"maskmed_core.{p.stem}" for p in (REPO / "maskmed_core").glob("*_command.py")}
    assert len(commands) >= 4
    assert not (_imported_modules(path) & (commands - {f"maskmed_core.{path.stem}"}))


def test_the_import_check_sees_a_command_imported_inside_a_function(tmp_path):
    planted = tmp_path / "x_command.py"
    planted.write_text("def run():\n    from maskmed_core.predict_command import case_name\n"
                       "    from maskmed_core import train_command\n")
    assert {"maskmed_core.predict_command", "maskmed_core.train_command"} <= _imported_modules(planted)

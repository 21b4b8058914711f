"""Benchmarks that cannot rot: every entry point of ``benchmarks/`` runs here on its smallest setting (tiny sizes, one
repeat, one step, the package's bundled demo CT instead of ../shared), and the nnU-Net peer's path runs wherever
nnU-Net v2 is installed (skipped only where it is missing). Nothing asserts on a timing or a figure: what is checked
is that each script gets through to its report, so a renamed function or a changed signature fails here, not on the
day someone wants the numbers. ``benchmarks/finetune.py`` and ``finetune_heads.py`` train for minutes and score for
one, so their runs and the scoring are stood in for and the rest of each script runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# The modules with a command line (a `main`), each run by the test named after it below.
RUN_TESTED = {"ablation", "data_loading", "deform_attn", "finetune", "finetune_heads", "inference", "mask_refinement",
              "mirrored", "model", "protocol_shifts", "slicer_logic", "training"}


def _has_main(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def test_every_benchmark_entry_point_has_a_run_test():
    entry_points = {p.stem for p in BENCHMARKS.glob("*.py") if _has_main(p)}
    assert entry_points == RUN_TESTED, "add a run test for each new benchmark (and drop the ones removed)"


def _run_main(module: str, *argv: str, replace: dict[str, str] | None = None) -> str:
    """``python3 -m benchmarks.<module> argv...`` from the repository root, in a fresh process as a user runs it (this
    process's sys.path and its multiprocessing helpers stay out of it); ``replace``: module constants set first (e.g.
    a path the script has no option for). Returns what it printed; fails with its output if it exits non-zero."""
    setup = "".join(f"module.{name} = {value!r}; " for name, value in (replace or {}).items())
    code = (f"import sys, importlib; module = importlib.import_module('benchmarks.{module}'); {setup}"
            f"sys.argv = ['benchmarks/{module}.py', *sys.argv[1:]]; sys.exit(module.main())")
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True)
    output = f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"benchmarks.{module} failed (exit {run.returncode}):\n{output}"
    return run.stdout


def _write_tiny_dataset(folder: Path, cases: int) -> Path:
    """``cases`` synthetic CTs (air around a water body at 3 mm) with two box organs each, as a JSON case list."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    rng = np.random.default_rng(0)
    for index in range(cases):
        image = np.full((24, 32, 32), -1000, dtype=np.int16)
        image[2:22, 4:28, 4:28] = 40
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[6:14, 8:16, 8:16 + index] = 1
        labels[10:18, 16:24, 18:26] = 2
        image[labels == 1] = 120
        image += rng.integers(-10, 10, image.shape, dtype=np.int16)
        paths = {}
        for kind, array in (("image", image), ("label", labels)):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((3.0, 3.0, 3.0))
            paths[kind] = folder / f"case{index}_{kind}.nii.gz"
            sitk.WriteImage(volume, str(paths[kind]))
        listed.append({"name": f"case{index}", "image": str(paths["image"]), "label": str(paths["label"])})
    case_list = folder / "cases.json"
    case_list.write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "liver": 2}, "cases": listed}))
    return case_list


def test_data_loading_benchmark():
    _run_main("data_loading", "--shape", "40", "48", "48", "--patch", "32", "32", "32",
              "--augmentation", "none", "--batch-size", "1", "--samples", "2", "--workers", "0")


def test_deform_attn_benchmark(monkeypatch, capsys):
    from benchmarks import deform_attn

    # The `small` preset's op sizes shrunk to a few voxels per level: the same code path, in milliseconds.
    tiny = deform_attn.Preset("small", ((8,) * 3, (4,) * 3, (2,) * 3), (1, 2), 1, 2, 4, 2)
    monkeypatch.setitem(deform_attn.PRESETS, "small", tiny)
    assert deform_attn.main(["--sizes", "small", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                             "--threads", "1", "--no-memory"]) == 0
    assert "preset small" in capsys.readouterr().out


class _ListQueue(list):
    """What the model benchmark's measurements put their result into, in this process."""

    def put(self, item) -> None:
        self.append(item)


def test_model_benchmark_measures_maskmed_without_the_peer():
    from benchmarks import model

    results = _ListQueue()
    model.measure_forward("MaskMed small", 2, (32, 32, 32), 1, "cpu", 1, results)
    model.measure_transformer((32, 32, 32), 1, "cpu", results)
    (name, parameters, _, _), (shapes, _, _, backend) = results
    assert name == "MaskMed small" and parameters > 0 and len(shapes) > 1 and backend


@pytest.mark.slow
def test_model_benchmark_with_the_nnunet_peer():
    pytest.importorskip("dynamic_network_architectures", reason="the nnU-Net peer is not installed")
    _run_main("model", "--patch", "32", "32", "32", "--classes", "2", "--repeats", "1", "--skip-base",
              "--skip-transformer-memory")


def _peer_arguments(peer: bool) -> list[str]:
    """Run the nnU-Net peer too (skipped where nnunetv2 is missing), or only MaskMed."""
    if peer:
        pytest.importorskip("nnunetv2", reason="the nnU-Net peer is not installed")
        return []
    return ["--skip-nnunet"]


@pytest.mark.slow
@pytest.mark.parametrize("peer", [False, True], ids=["maskmed", "with_nnunet_peer"])
def test_inference_benchmark(tmp_path, demo_data, peer):
    _run_main("inference", "--skip-large", *_peer_arguments(peer), "--threads", "1", "--real-ct",
              str(demo_data.ct), "--workdir", str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("peer", [False, True], ids=["maskmed", "with_nnunet_peer"])
def test_training_benchmark(tmp_path, demo_data, peer):
    _run_main("training", "--patch", "32", "32", "32", "--batch", "1", "--steps", "1",
              *_peer_arguments(peer), "--workers", "0", "--loader-batches", "1", "--threads", "1", "--real-ct",
              str(demo_data.ct), "--real-labels", str(demo_data.labels), "--label-mapping",
              str(demo_data.label_mapping), "--workdir", str(tmp_path))


@pytest.mark.slow
@pytest.mark.slow
def test_mask_refinement_benchmark_times_and_scores_both_models(tmp_path, demo_data):
    from factories import tiny_model_file

    model = tiny_model_file(tmp_path / "tiny.maskmed", num_classes=3)
    printed = _run_main("mask_refinement", "--baseline", str(model), "--ct", str(demo_data.ct), "--labels",
                        str(demo_data.labels), "--mapping", str(demo_data.label_mapping), "--workdir", str(tmp_path))
    assert "masks at stage 1" in printed and "masks at stage 0" in printed  # the grown model's are finer
    assert "refined / baseline: time" in printed and "right kidney" in printed
    assert (tmp_path / "refined_zero.maskmed").is_file()


def test_slicer_logic_benchmark(tmp_path, demo_data):
    pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")
    _run_main("slicer_logic", "--skip-large", "--workdir", str(tmp_path), replace={"REAL_CT": str(demo_data.ct)})


@pytest.mark.slow
def test_ablation_benchmark(tmp_path):
    case_list = _write_tiny_dataset(tmp_path / "data", 2)
    output = tmp_path / "ablation.json"
    printed = _run_main("ablation", "--dataset", str(case_list), "--label-mapping", "none", "--variants",
              "maskmed", "conv", "--folds", "case1", "--patch-size", "32", "32", "32", "--batch-size", "1",
              "--steps", "1", "--augmentation", "none", "--device", "cpu", "--workers", "0",
              "--work-dir", str(tmp_path / "work"), "--output", str(output))
    report = json.loads(output.read_text())
    assert [(run["fold"], run["variant"]) for run in report["runs"]] == [("case1", "maskmed"), ("case1", "conv")]
    assert "verdict: " in printed


def _fake_training(calls: list):
    """A stand-in for ``benchmarks.finetune.fine_tune`` (minutes of training) that records its arguments."""

    def fine_tune(case_list, mapping, output, minutes, extra, threads, init=None):
        calls.append({"case_list": Path(case_list), "output": Path(output), "minutes": minutes, "extra": extra,
                      "init": init})
        return {"steps": 7, "seconds": 1.0, "peak_rss_gib": 0.5}

    return fine_tune


def _fake_scores(model, ids_by_name):
    """Dice 0.5 for every class of the scenario (the held-out scoring runs the network for a minute)."""
    return {name: 0.5 for name in ids_by_name}


def test_finetune_benchmark_plans_runs_records_them_and_does_not_repeat_them(tmp_path, monkeypatch, capsys):
    from benchmarks import finetune

    calls: list = []
    monkeypatch.setattr(finetune, "fine_tune", _fake_training(calls))
    monkeypatch.setattr(finetune, "score_on_s0009", _fake_scores)
    argv = ["--scenarios", "iliopsoas", "--minutes", "5", "--variants", "default", "former", "--workdir",
            str(tmp_path)]
    assert finetune.main(argv) == 0
    assert [call["extra"] for call in calls] == [finetune.VARIANTS["default"], finetune.VARIANTS["former"]]
    written = json.loads(calls[0]["case_list"].read_text())
    assert set(written["labels"]) == {"background", "left iliopsoas", "right iliopsoas"}  # the new structure only
    assert "s0009" not in calls[0]["case_list"].read_text()  # the scoring CT is never a fine-tune case
    printed = capsys.readouterr().out
    assert "iliopsoas      1 default          5     7" in printed and "former" in printed
    assert finetune.main(argv) == 0 and len(calls) == 2  # recorded runs are not run again


def test_finetune_heads_benchmark_fits_a_conv_twin_and_fine_tunes_both_heads(tmp_path, monkeypatch, capsys):
    import torch

    from benchmarks import finetune, finetune_heads
    from maskmed_core.checkpoint import load_model_file

    calls: list = []
    monkeypatch.setattr(finetune, "fine_tune", _fake_training(calls))
    monkeypatch.setattr(finetune_heads, "fine_tune", _fake_training(calls))
    monkeypatch.setattr(finetune, "score_on_s0009", _fake_scores)
    monkeypatch.setattr(finetune_heads, "pseudo_labelled_cases", lambda cases, folder: folder / "cases.json")
    assert finetune_heads.main(["--minutes", "2", "--twin-minutes", "3", "--workdir", str(tmp_path)]) == 0
    twin, decoupled, conv = calls
    start = tmp_path / "iliopsoas_1_conv_twin" / "conv_start.maskmed"
    assert twin["init"] == start and twin["minutes"] == 3
    assert twin["extra"] == ["--learning-rate", "0.003"]  # a fresh head: not the fine-tune's 3e-4
    assert decoupled["init"] == finetune.DEFAULT_MODEL and conv["init"] == twin["output"] / "best.maskmed"
    assert decoupled["minutes"] == conv["minutes"] == 2 and decoupled["extra"] == conv["extra"] == []
    printed = capsys.readouterr().out
    assert "decoupled" in printed and "conv " in printed
    assert finetune_heads.main(["--minutes", "2", "--twin-minutes", "3", "--workdir", str(tmp_path)]) == 0
    assert len(calls) == 3  # recorded runs are not run again ...
    assert finetune_heads.main(["--minutes", "2", "--twin-minutes", "3", "--twin-learning-rate", "1e-3",
                                "--workdir", str(tmp_path)]) == 0
    # ... but another twin is fitted, and the conv head fine-tuned from it again (the decoupled run stands)
    assert [call["init"] for call in calls[3:]] == [start, calls[3]["output"] / "best.maskmed"]
    # The twin's start: a conv head on the default model's encoder, transformer and pixel decoder.
    default, made = load_model_file(finetune.DEFAULT_MODEL), load_model_file(start)
    assert made.config.head.kind == "conv" and made.classes == default.classes
    for key in ("encoder.stem.conv.weight", "transformer.level_embed"):
        shared = [k for k in default.state_dict if k.startswith(key.split(".")[0])]
        assert shared and all(torch.equal(made.state_dict[k], default.state_dict[k]) for k in shared)


def test_protocol_shifts_benchmark_scores_each_model_under_each_change(tmp_path, demo_data):
    from factories import tiny_model_file

    first, second = tiny_model_file(tmp_path / "a.maskmed"), tiny_model_file(tmp_path / "b.maskmed")
    printed = _run_main("protocol_shifts", str(first), str(second), "--changes", "as given", "7.5 mm slices",
                        "--ct", str(demo_data.ct), "--labels", str(demo_data.labels), "--mapping",
                        str(demo_data.label_mapping))
    rows = [line for line in printed.splitlines() if line.startswith(("| as given |", "| 7.5 mm slices |"))]
    assert len(rows) == 2 and all("(+0.000)" in row for row in rows), printed  # the same weights score the same
    verdict = [line for line in printed.splitlines() if line.startswith(f"- {tmp_path.name}/b.maskmed: ")]
    assert len(verdict) == 1 and "fails: as given: mean" in verdict[0] and "not above" in verdict[0], printed


def test_ship_rule_needs_a_higher_mean_no_class_lost_and_no_change_worse():
    from benchmarks.protocol_shifts import MAX_CLASS_LOSS, ship_verdict

    shipped = {"as given": {"liver": 0.9, "spleen": 0.8}, "noise 60 HU": {"liver": 0.8, "spleen": 0.6}}
    better = {"as given": {"liver": 0.92, "spleen": 0.8}, "noise 60 HU": {"liver": 0.8, "spleen": 0.6}}
    assert ship_verdict(shipped, better) == []
    trade = {**better, "as given": {"liver": 1.0, "spleen": 0.8 - MAX_CLASS_LOSS - 0.01}}
    assert ship_verdict(shipped, trade) == ["as given: spleen 0.760 against 0.800"]
    missing_class = {**better, "as given": {"liver": 1.0}}
    assert ship_verdict(shipped, missing_class) == ["as given: spleen 0.000 against 0.800"]
    fragile = {**better, "noise 60 HU": {"liver": 0.8, "spleen": 0.5}}
    assert ship_verdict(shipped, fragile) == ["noise 60 HU: mean 0.650 below 0.700"]
    assert ship_verdict(shipped, shipped) == ["as given: mean 0.850, not above 0.850"]


def test_mirrored_benchmark_on_the_held_out_ct(demo_data):
    printed = _run_main("mirrored", "--cases", "1")
    assert "false alarms: 0" in printed and "not warned about: 0" in printed


@pytest.mark.slow
def test_nnunet_peer_builds_and_predicts(tmp_path, demo_data):
    pytest.importorskip("nnunetv2", reason="the nnU-Net peer is not installed")
    from benchmarks import nnunet_peer
    from maskmed_core.plans import IntensityNormalization

    nnunet_peer.set_environment(tmp_path / "env", threads=1)
    folder = nnunet_peer.build_model_folder(tmp_path / "model", (3.0, 3.0, 3.0), (32, 32, 32), ["spleen"],
                                            IntensityNormalization())
    predictor = nnunet_peer.make_predictor(folder, tta=False)
    assert nnunet_peer.network_parameters(predictor) > 0
    assert Path(nnunet_peer.predict_file(predictor, demo_data.ct, tmp_path / "labels.nii.gz")).is_file()


def test_device_session_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCHMARKS / "device_session.sh")], check=True)

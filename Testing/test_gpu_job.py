"""The bare-GPU-machine training job (recipes/gpu_training_job.sh), dry-run on the CPU: a cache prepared by
`maskmed train --prepare-only`, then the job trains from the cache alone (SimpleITK made unimportable), scores the
held-out case and leaves its files, each under 16 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import SimpleITK as sitk  # noqa: N813
from factories import HANG_SECONDS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "maskmed_core" / "resources" / "demo"


@pytest.mark.slow
def test_gpu_job_dry_run_on_cpu_trains_from_the_cache_alone(tmp_path):
    image = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm.nii.gz"))
    labels = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))
    sitk.WriteImage(image[25:89, 18:82, 64:112], str(tmp_path / "real.nii.gz"))
    sitk.WriteImage(labels[25:89, 18:82, 64:112], str(tmp_path / "real_labels.nii.gz"))
    sitk.WriteImage(labels[20:84, 22:86, 40:88], str(tmp_path / "label_only.nii.gz"))
    sitk.WriteImage(image[30:94, 20:84, 60:108], str(tmp_path / "held_out.nii.gz"))
    sitk.WriteImage(labels[30:94, 20:84, 60:108], str(tmp_path / "held_out_labels.nii.gz"))
    (tmp_path / "cases.json").write_text(json.dumps({
        "labels": {"spleen": 1, "right kidney": 2, "left kidney": 3, "liver": 6},
        "cases": [{"image": "real.nii.gz", "label": "real_labels.nii.gz"}],
    }))
    (tmp_path / "mapping.json").write_text(json.dumps({"1": 1, "2": 2, "3": 3, "5": 6}))
    cache = tmp_path / "cache"
    prepare = subprocess.run([
        sys.executable, "-m", "maskmed_core.cli", "train", str(tmp_path / "cases.json"), "-o", str(tmp_path / "prep"),
        "--cache-dir", str(cache), "--prepare-only", "--label-mapping", str(tmp_path / "mapping.json"),
        "--patch-size", "32", "32", "32", "--spacing", "3", "3", "3",
        "--synthetic-labels", str(tmp_path / "label_only.nii.gz"),
        "--holdout", str(tmp_path / "held_out.nii.gz"), str(tmp_path / "held_out_labels.nii.gz"),
    ], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert prepare.returncode == 0, prepare.stderr
    assert "prepared 1 real and 1 label-only cases and a held-out case" in prepare.stdout
    archive = tmp_path / "cache.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cache, arcname="cache")

    # The job's machine has no SimpleITK: a stand-in package that refuses to import proves none is needed.
    blocker = tmp_path / "no_simpleitk" / "SimpleITK"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('SimpleITK is not on this machine')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    out = tmp_path / "job_out"
    job = subprocess.run([
        "bash", "recipes/gpu_training_job.sh", str(archive), str(out), "0.2", "--device", "cpu",
        "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--workers", "0", "--val-every", "1",
        "--synthetic-prob", "0.5", "--contrast-prob", "0.5",
    ], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert job.returncode == 0, job.stdout + job.stderr + (out / "train_stderr.txt").read_text()
    for name in ("training_log.jsonl", "training_curves.png", "holdout_evaluation.json", "timeline.txt",
                 "train_stdout.jsonl", "best.maskmed.sha256"):
        assert (out / name).is_file(), name
    # The model file whole, or in parts under 16 MiB that rejoin to it.
    parts = sorted(out.glob("best.maskmed.part-*")) or [out / "best.maskmed"]
    import hashlib

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert digest == (out / "best.maskmed.sha256").read_text().strip()
    assert all(f.stat().st_size < 16 * 1024 * 1024 for f in out.iterdir())
    holdout = json.loads((out / "holdout_evaluation.json").read_text())
    assert holdout["grid"].startswith("model grid") and holdout["classes_in_reference"] >= 1
    assert "held-out case" in (out / "timeline.txt").read_text()
    assert "build the CUDA op" not in (out / "timeline.txt").read_text()  # GPU steps skipped with --device cpu


def _recipe_config(tmp_path: Path, *command: str):
    """The TrainConfig a recipe script's `maskmed train` command means, read with a stand-in python3 that records
    its arguments instead of training."""
    from maskmed_core.cli import build_parser
    from maskmed_core.train_command import _config_from_args

    recorder = tmp_path / "bin" / "python3"
    recorder.parent.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    recorder.chmod(0o755)
    env = {**os.environ, "PATH": f"{recorder.parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", *command], capture_output=True, text=True, cwd=REPO, env=env, timeout=HANG_SECONDS)
    assert run.returncode == 0, run.stderr
    argv = json.loads(record.read_text())
    assert argv[:3] == ["-m", "maskmed_core.cli", "train"]
    return _config_from_args(build_parser().parse_args(argv[2:]))


def test_cpu_recipe_is_a_train_command_that_trains_the_whole_model_on_its_own_lists(tmp_path):
    """recipes/default_model/train_cpu.sh parses as `maskmed train` options into a valid TrainConfig that trains the
    encoder and adds no rehearsal data (a recipe that continues the default model's training is not a user's
    fine-tune, whose --init defaults differ)."""
    config = _recipe_config(tmp_path, "recipes/default_model/train_cpu.sh", str(tmp_path / "out"), "7", "--seed", "3")
    assert config.freeze_encoder is False and config.rehearsal == 0.0
    assert config.time_limit_minutes == 7 and config.seed == 3 and config.init is not None
    assert not any("s0009" in str(path) for path in config.synthetic_labels)
    untimed = _recipe_config(tmp_path, "recipes/default_model/train_cpu.sh", str(tmp_path / "out"), "none")
    assert untimed.time_limit_minutes is None


def test_long_recipe_plans_its_schedule_by_steps_and_resumes_only_a_saved_state(tmp_path):
    """train_long.sh: no time limit (the learning rate follows the 6000 planned steps), the balanced mask loss, and
    --resume exactly when the output folder holds a training state (a first start would be refused with it)."""
    out = tmp_path / "long"
    first = _recipe_config(tmp_path, "recipes/default_model/train_long.sh", str(out))
    assert first.time_limit_minutes is None and first.epochs * first.steps_per_epoch == 6000
    assert first.mask_loss == "balanced" and first.resume is False and first.output == str(out)
    out.mkdir()
    (out / "training_state.safetensors").write_bytes(b"")
    assert _recipe_config(tmp_path, "recipes/default_model/train_long.sh", str(out)).resume is True

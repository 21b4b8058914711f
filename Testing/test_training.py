"""`maskmed train` end to end on real CT crops: outputs, bad data, resume after kill -9, NaN stop, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from safetensors.torch import load_file

from maskmed_core.cli import main
from maskmed_core.events import ExitCode
from maskmed_core.inference import Predictor
from maskmed_core.training.state import load_state

REPO = Path(__file__).resolve().parents[1]
# TotalSegmentator v2 id -> AMOS id for the organs inside the crops.
MAPPING = {1: 1, 2: 2, 3: 3, 5: 6, 6: 7}
LABELS = {"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "liver": 6, "stomach": 7}
CROPS = {
    "abd_000": (slice(25, 89), slice(18, 82), slice(64, 112)),
    "abd_001": (slice(20, 84), slice(22, 86), slice(60, 108)),
}


@pytest.fixture(scope="module")
def dataset(demo_data, tmp_path_factory) -> tuple[Path, Path]:
    """An nnU-Net v2 raw folder with two 64 x 64 x 48 crops of the real CT, and the label mapping file."""
    root = tmp_path_factory.mktemp("Dataset010_Crops")
    image = sitk.ReadImage(str(demo_data.ct))
    labels = sitk.ReadImage(str(demo_data.labels))
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for name, (x, y, z) in CROPS.items():
        sitk.WriteImage(image[x, y, z], str(root / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(labels[x, y, z], str(root / "labelsTr" / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}
    ))
    mapping = root.parent / "mapping.json"
    mapping.write_text(json.dumps({str(k): v for k, v in MAPPING.items()}))
    return root, mapping


def train_args(dataset, output, *extra):
    root, mapping = dataset
    return [
        "train", str(root), "-o", str(output), "--label-mapping", str(mapping), "--patch-size", "32", "32", "32",
        "--spacing", "3", "3", "3", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2",
        "--workers", "0", "--device", "cpu", "--val-every", "1", "--cache-dir", str(output.parent / "cache"), *extra,
    ]


def test_train_writes_usable_model_files_log_and_plot(dataset, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(train_args(dataset, output)) == ExitCode.OK
    summary = capsys.readouterr().out
    assert "best epoch" in summary and "liver" in summary
    for name in ("best.maskmed", "last.maskmed", "training_state.safetensors", "training_log.jsonl",
                 "training_curves.png"):
        assert (output / name).is_file(), name
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("dice" in r for r in log)
    predictor = Predictor.from_file(output / "best.maskmed", "cpu")
    assert [c.name for c in predictor.classes] == ["spleen", "right kidney", "left kidney", "liver", "stomach"]
    assert predictor.classes[3].terminology is not None  # AMOS names get their SNOMED CT codes
    image = sitk.ReadImage(str(dataset[0] / "imagesTr" / "abd_000_0000.nii.gz"))
    assert predictor.predict(image).label_map().GetSize() == image.GetSize()


def test_time_limit_stops_early_validates_and_saves(dataset, tmp_path, capsys):
    output = tmp_path / "run"
    # 1.2 s of training time: well under the 50 planned steps, more than one step.
    argv = train_args(dataset, output, "--time-limit", "0.02")
    argv[argv.index("--epochs") + 1] = "25"
    assert main(argv) == ExitCode.OK
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    last = log[-1]
    assert last["stopped"] == "time limit" and last["step"] < 50 and "dice" in last
    assert last["seconds"] >= 1.2
    assert (output / "best.maskmed").is_file() and (output / "last.maskmed").is_file()
    assert "time limit" in capsys.readouterr().err


def test_time_left_counts_down_to_the_time_limit():
    """The ETA of a --time-limit run is what is left of the limit, not the steps that will never run."""
    from maskmed_core.training.schedule import TrainingClock

    clock = TrainingClock(10 / 60)  # a 10 s limit; 4 s spent on 2 of 100 steps (the clock is not running)
    clock.spent_before = 4.0
    assert clock.remaining(2, 100) == pytest.approx(6.0)
    assert TrainingClock(None).remaining(0, 100) == 0.0
    unlimited = TrainingClock(None)
    unlimited.spent_before = 4.0
    assert unlimited.remaining(2, 100) == pytest.approx(196.0)
    clock.spent_before = 12.0
    assert clock.remaining(2, 100) == 0.0


def test_learning_rate_factor_follows_the_larger_of_step_and_time_progress():
    from maskmed_core.training.schedule import learning_rate_factor

    assert learning_rate_factor(0, 100, 10, "poly") == pytest.approx(0.1)  # warm-up is by steps only
    assert learning_rate_factor(55, 100, 10, "poly") == pytest.approx(0.5 ** 0.9)
    assert learning_rate_factor(55, 100, 10, "poly", time_fraction=0.9) == pytest.approx(0.1 ** 0.9)
    assert learning_rate_factor(55, 100, 10, "cosine", time_fraction=1.0) == pytest.approx(0.0)


def test_bad_dataset_is_reported_before_training(dataset, tmp_path, capsys):
    root, mapping = dataset
    broken = tmp_path / "Dataset011_Broken"
    broken.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        (broken / sub).mkdir()
    (broken / "dataset.json").write_text((root / "dataset.json").read_text())
    for name in CROPS:
        (broken / "imagesTr" / f"{name}_0000.nii.gz").symlink_to(root / "imagesTr" / f"{name}_0000.nii.gz")
    (broken / "labelsTr" / "abd_000.nii.gz").symlink_to(root / "labelsTr" / "abd_000.nii.gz")
    output = tmp_path / "run"
    code = main(train_args((broken, mapping), output))
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT
    assert "abd_001" in err and "--skip-bad-cases" in err
    assert not output.exists(), "the refused run left its output folder behind"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow
def test_resume_after_kill_minus_nine_ends_with_the_same_weights(dataset, tmp_path):
    straight = tmp_path / "straight"
    assert main(train_args(dataset, straight, "--deterministic")) == ExitCode.OK

    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "maskmed_core.cli", *train_args(dataset, interrupted, "--deterministic")]
    # The same number of torch threads as this process: a CPU convolution's sums are ordered by its threads, so the
    # first steps in a child with another count differ in the last bit (CI failed on that, not on the resume).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = interrupted / "training_state.safetensors"
    # No deadline: on a busy machine the first epoch may take minutes; a run that fails ends the wait by exiting.
    while not state.exists() and process.poll() is None:
        time.sleep(0.02)
    assert state.exists(), "the run ended without writing its first state"
    process.send_signal(signal.SIGKILL)  # in the middle of epoch 2 (or wherever it is now)
    process.wait()
    assert load_state(state).step in (2, 4)
    assert main(train_args(dataset, interrupted, "--deterministic", "--resume")) == ExitCode.OK
    expected, resumed = _weights(straight / "last.maskmed"), _weights(interrupted / "last.maskmed")
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.slow
def test_sigterm_during_training_is_a_clean_cancel(dataset, tmp_path):
    """Issue 23: SIGTERM (a scheduler's stop, `kill`) ended a training with -15 and no word; now as Ctrl+C."""
    output = tmp_path / "run"
    command = [sys.executable, "-m", "maskmed_core.cli", *train_args(dataset, output, "--epochs", "500")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = output / "training_state.safetensors"
    # No deadline: on a busy machine the first epoch may take minutes; a run that fails ends the wait by exiting.
    while not state.exists() and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGTERM)  # after the first epoch's files, during a later epoch
    _, err = process.communicate()  # the cancel comes at the next step, however slow the machine is
    assert process.returncode == ExitCode.CANCELLED, err
    assert "interrupted (SIGTERM); the files of the last completed epoch are kept: add --resume to continue" in err
    assert "Traceback" not in err, err
    assert load_state(state).step >= 2


def test_ctrl_c_while_an_epoch_s_files_are_written_keeps_the_previous_epoch_s_files(dataset, tmp_path, monkeypatch,
                                                                                   capsys):
    """The model files, the state and the log of an epoch replace the previous epoch's together: a Ctrl+C after the
    model files were written but before the state (which --resume reads) leaves every file as the epoch before left
    it, and no temporary file behind."""
    from maskmed_core.training import trainer

    output = tmp_path / "run"
    names = ("best.maskmed", "last.maskmed", "training_state.safetensors", "training_log.jsonl")
    before: dict[str, bytes] = {}
    real_save_state = trainer.save_state

    def interrupted_at_the_second_epoch(path, state):
        if state.step < 4:
            return real_save_state(path, state)
        before.update({name: (output / name).read_bytes() for name in names})  # the first epoch's, still in place
        real_save_state(path, state)  # written under its temporary name, as the model files before it
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_state", interrupted_at_the_second_epoch)
    assert main(train_args(dataset, output)) == ExitCode.CANCELLED
    assert "the files of the last completed epoch are kept" in capsys.readouterr().err
    assert before, "the second epoch's files were never written"
    assert {name: (output / name).read_bytes() for name in names} == before
    assert load_state(output / "training_state.safetensors").step == 2
    assert [json.loads(line)["step"] for line in (output / "training_log.jsonl").read_text().splitlines()] == [2]
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []


def test_an_export_target_that_cannot_be_written_is_refused_before_training(dataset, tmp_path, capsys):
    in_the_way = tmp_path / "default.maskmed"
    in_the_way.mkdir()
    assert main(train_args(dataset, tmp_path / "run", "--export", str(in_the_way))) == ExitCode.USAGE
    assert "a folder has that name" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "the run started before the export target was checked"


def test_an_export_failing_after_training_says_where_the_run_s_files_are(dataset, tmp_path, capsys, monkeypatch):
    import errno

    from maskmed_core import train_command

    def disk_full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(train_command, "_export", disk_full)
    output = tmp_path / "run"
    assert main(train_args(dataset, output, "--export", str(tmp_path / "copy.maskmed"))) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert f"the training finished (best model: {output / 'best.maskmed'}), but it could not be copied" in err
    assert "No space left on device" in err and "Traceback" not in err
    assert (output / "best.maskmed").is_file()


def test_resume_from_a_state_whose_optimizer_does_not_fit_is_refused(dataset, tmp_path, capsys):
    """A state edited by hand (no parameter groups) passed the checks and failed in torch's load_state_dict, an
    internal error; now a refusal naming the file (exit 2)."""
    from maskmed_core.training.state import save_state

    output = tmp_path / "run"
    assert main(train_args(dataset, output, "--epochs", "1")) == ExitCode.OK
    state_path = output / "training_state.safetensors"
    state = load_state(state_path)
    state.optimizer["param_groups"] = []
    save_state(state_path, state)
    capsys.readouterr()
    assert main(train_args(dataset, output, "--resume")) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{state_path} does not fit this run" in err and "start without --resume" in err and "Traceback" not in err


def test_a_run_removes_what_a_killed_run_left_half_written(dataset, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    ours = [output / ".training_state.0123456789ab.tmp.safetensors", output / ".last.0123456789ab.tmp.maskmed"]
    foreign = output / ".tmpAbC123"
    for path in (*ours, foreign):
        path.write_bytes(bytes(100))
    assert main(train_args(dataset, output, "--epochs", "1")) == ExitCode.OK
    assert not any(path.exists() for path in ours) and foreign.exists()


def test_nan_loss_stops_naming_step_and_cases(dataset, tmp_path, capsys, monkeypatch):
    from maskmed_core.model.heads import build_criterion
    from maskmed_core.training import trainer

    def poisoned(config, **options):
        criterion = build_criterion(config, **options)
        calls = {"n": 0}
        original = criterion.forward

        def forward(outputs, labels):
            losses = original(outputs, labels)
            calls["n"] += 1
            if calls["n"] == 3:
                losses["loss"] = losses["loss"] * float("nan")
            return losses

        criterion.forward = forward
        return criterion

    monkeypatch.setattr(trainer, "build_criterion", poisoned)
    output = tmp_path / "run"
    code = main(train_args(dataset, output))
    err = capsys.readouterr().err
    assert code == ExitCode.DIVERGED
    assert "at step 3" in err and "abd_00" in err
    assert (output / "last.maskmed").is_file() and load_state(output / "training_state.safetensors").step == 2


def test_fine_tune_from_a_model_file_extends_the_class_head(dataset, tmp_path, capsys):
    from factories import tiny_model_file

    init = tiny_model_file(tmp_path / "init.maskmed", num_classes=3, patch_size=(32, 32, 32))  # spleen, kidneys
    output = tmp_path / "run"
    code = main(train_args(dataset, output, "--init", str(init), "--absent-classes", "freeze", "--freeze-encoder"))
    assert code == ExitCode.OK, capsys.readouterr().err
    predictor = Predictor.from_file(output / "last.maskmed", "cpu")
    assert [c.name for c in predictor.classes] == ["spleen", "right kidney", "left kidney", "liver", "stomach"]
    before, after = _weights(init), _weights(output / "last.maskmed")
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert not torch.equal(before["query_decoder.query_feat.weight"], after["query_decoder.query_feat.weight"])


def _relabelled_dataset(dataset, tmp_path, labels: dict[str, int], mapping: dict[int, int]):
    """The crops of ``dataset`` with another dataset.json label list and label mapping."""
    root, _ = dataset
    other = tmp_path / "Dataset012_Relabelled"
    other.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        (other / sub).symlink_to(root / sub)
    (other / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}))
    mapping_file = tmp_path / "relabelled_mapping.json"
    mapping_file.write_text(json.dumps({str(k): v for k, v in mapping.items()}))
    return other, mapping_file


def test_fine_tune_keeps_the_classes_the_data_lacks_taught_by_the_starting_model(dataset, tmp_path, capsys):
    """The data labels the liver and the stomach only; the model's spleen and kidneys are kept (the default,
    --absent-classes distill), with the starting model's predictions as their targets."""
    from factories import tiny_model_file

    init = tiny_model_file(tmp_path / "init.maskmed", num_classes=3, patch_size=(32, 32, 32))  # spleen, kidneys
    relabelled = _relabelled_dataset(dataset, tmp_path, {"background": 0, "liver": 6, "stomach": 7},
                                     {1: 0, 2: 0, 3: 0, 5: 6, 6: 7})
    output = tmp_path / "run"
    assert main(train_args(relabelled, output, "--init", str(init))) == ExitCode.OK
    err = capsys.readouterr().err
    assert "distillation: --init's model labels the classes your data does not (spleen, right kidney, left kidney)" \
        in err
    assert "new class 'liver'" in err and "new class 'stomach'" in err  # imprinted, or said to start fresh
    assert "object queries hold the model's classes; the new classes are matched to the others" in err
    assert "rehearsal: 7 shipped label maps (TotalSegmentator dataset, CC BY 4.0) label 5 of the 5 classes" in err
    predictor = Predictor.from_file(output / "last.maskmed", "cpu")
    assert [c.name for c in predictor.classes] == ["liver", "stomach", "spleen", "right kidney", "left kidney"]
    # The encoder stays as --init's (a fine-tune's default); the rest of the network learns.
    from maskmed_core.checkpoint import load_model_file

    before, after = load_model_file(init).state_dict, predictor.model_file.state_dict
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("pixel_decoder."))
    dropped = main(train_args(relabelled, tmp_path / "dropped", "--init", str(init), "--absent-classes", "drop"))
    assert dropped == ExitCode.OK and "distillation" not in capsys.readouterr().err
    assert [c.name for c in Predictor.from_file(tmp_path / "dropped" / "last.maskmed", "cpu").classes] == [
        "liver", "stomach"]


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "liver": 6, "tumour": 9}, "new class(es) 'tumour' have no labelled voxel in any case"),
    ({"background": 0, "liver": 6, "Liver ": 7}, "differ only in case or spacing"),
    ({"background": 0, **{f"structure {k}": 10 + k for k in range(6)}, "liver": 6},
     "more than the 8 object queries"),
])
def test_fine_tune_refuses_classes_it_cannot_learn(dataset, tmp_path, capsys, labels, message):
    from factories import tiny_model_file

    init = tiny_model_file(tmp_path / "init.maskmed", num_classes=3, patch_size=(32, 32, 32))  # 8 object queries
    relabelled = _relabelled_dataset(dataset, tmp_path, labels, {1: 0, 2: 0, 3: 0, 5: 6, 6: 0})
    output = tmp_path / "run"
    assert main(train_args(relabelled, output, "--init", str(init))) == ExitCode.BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (output / "last.maskmed").exists() and not (output / "best.maskmed").exists()


def test_another_head_on_a_model_files_encoder_needs_init_encoder_only(dataset, tmp_path, capsys):
    from factories import tiny_model_file

    from maskmed_core.checkpoint import load_model_file

    init = tiny_model_file(tmp_path / "init.maskmed", num_classes=3, patch_size=(32, 32, 32))  # decoupled + FSA
    refused = main(train_args(dataset, tmp_path / "refused", "--init", str(init), "--head", "conv"))
    assert refused == ExitCode.BAD_INPUT
    assert "decoupled head with the FSA transformer" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "last.maskmed").exists()
    output = tmp_path / "conv"
    code = main(train_args(dataset, output, "--init", str(init), "--init-encoder-only", "--head", "conv",
                           "--no-transformer", "--freeze-encoder"))
    assert code == ExitCode.OK, capsys.readouterr().err
    trained = load_model_file(output / "last.maskmed")
    assert trained.config.head.kind == "conv" and not trained.config.transformer.enabled
    before, after = _weights(init), _weights(output / "last.maskmed")
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert not any(k.startswith(("transformer.", "query_decoder.")) for k in after)


def test_mask_refinement_grows_a_model_file_and_is_never_dropped(dataset, tmp_path, capsys):
    from factories import tiny_model_file

    from maskmed_core.checkpoint import load_model_file

    init = tiny_model_file(tmp_path / "init.maskmed", num_classes=3, patch_size=(32, 32, 32))
    output = tmp_path / "refined"
    assert main(train_args(dataset, output, "--init", str(init), "--mask-refine-levels", "1")) == ExitCode.OK, \
        capsys.readouterr().err
    refined = load_model_file(output / "last.maskmed")
    assert refined.config.pixel_decoder.mask_refine_levels == 1
    before, after = _weights(init), _weights(output / "last.maskmed")
    assert set(after) - set(before) and all(k.startswith(("mask_refine_proj.", "pixel_decoder."))
                                            for k in set(after) - set(before))
    predictor = Predictor.from_file(output / "last.maskmed", device="cpu")  # the file builds and loads strictly
    assert predictor.model.config.pixel_decoder.mask_refine_levels == 1
    capsys.readouterr()
    dropped = tmp_path / "dropped"
    assert main(train_args(dataset, dropped, "--init", str(output / "last.maskmed"), "--mask-refine-levels", "0")) \
        == ExitCode.BAD_INPUT
    assert "fine-tuning keeps them" in capsys.readouterr().err
    assert not (dropped / "last.maskmed").exists()


def test_init_encoder_only_without_init_is_a_usage_error(dataset, tmp_path, capsys):
    assert main(train_args(dataset, tmp_path / "run", "--init-encoder-only")) == ExitCode.USAGE
    assert "init_encoder_only needs init" in capsys.readouterr().err


def _step_losses(output: str) -> list[float]:
    return [json.loads(line)["loss"] for line in output.splitlines() if '"event": "step"' in line]


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_loss_curve(dataset, tmp_path):
    """Same global batch (2): 1 process x 2 patches vs 2 processes x 1 patch. Tolerance: 5% per step, because
    the mask losses use random points drawn independently by each rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "maskmed_core.cli", *train_args(dataset, tmp_path / "one", "--json", "--epochs", "1",
                                                                "--steps-per-epoch", "3")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        [sys.executable, "-m", "maskmed_core.cli", *train_args(dataset, tmp_path / "two", "--json", "--epochs", "1",
                                                                "--steps-per-epoch", "3", "--nproc", "2")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = _step_losses(single.stdout), _step_losses(double.stdout)
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=0.05)


def test_mirror_axes_are_trained_recorded_in_the_model_file_and_used_by_tta(dataset, tmp_path, capsys, monkeypatch):
    from maskmed_core.checkpoint import load_model_file
    from maskmed_core.inference import predictor as predictor_module
    from maskmed_core.training import augmentation

    built = []
    original_augmenter = augmentation.Augmenter.__init__

    def recording(self, config, *args, **kwargs):
        built.append(config.mirror_axes)
        original_augmenter(self, config, *args, **kwargs)

    monkeypatch.setattr(augmentation.Augmenter, "__init__", recording)
    output = tmp_path / "run"
    assert main(train_args(dataset, output, "--mirror-axes", "none")) == ExitCode.OK
    assert built == [()]  # the augmentation mirrors nothing
    model_file = load_model_file(output / "best.maskmed")
    assert model_file.mirror_axes == () and model_file.extra["mirror_axes"] == []
    # A fine-tune keeps its starting model's axes unless told otherwise (a model that learnt sides keeps them).
    built.clear()
    finetuned = tmp_path / "finetuned"
    assert main(train_args(dataset, finetuned, "--init", str(output / "best.maskmed"), "--rehearsal", "0")) == 0
    assert built == [()] and load_model_file(finetuned / "best.maskmed").mirror_axes == ()

    axes_seen = []
    original_window = predictor_module.sliding_window
    monkeypatch.setattr(predictor_module, "sliding_window",
                        lambda *a, **k: axes_seen.append(k["mirror_axes"]) or original_window(*a, **k))
    image = sitk.ReadImage(str(dataset[0] / "imagesTr" / "abd_000_0000.nii.gz"))
    result = Predictor(model_file, "cpu").predict(image, tta=True)
    assert axes_seen == [()] and any("without mirrored images" in w for w in result.warnings)

    assert main(train_args(dataset, tmp_path / "zy", "--mirror-axes", "yz", "--epochs", "1")) == ExitCode.OK
    assert load_model_file(tmp_path / "zy" / "best.maskmed").mirror_axes == (0, 1)
    capsys.readouterr()
    assert main(train_args(dataset, tmp_path / "bad", "--mirror-axes", "xq")) == ExitCode.USAGE
    assert "mirror_axes must be letters among z, y, x" in capsys.readouterr().err


def test_left_right_mirrors_only_where_every_class_of_one_side_has_its_partner():
    """x mirrors swap partner classes; with a class of one side alone (or sides unknown) x is not mirrored in training
    and not recorded for test-time augmentation, and the user is told why."""
    from types import SimpleNamespace

    from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
    from maskmed_core.training.config import TrainConfig
    from maskmed_core.training.trainer import _lateral_pairs_by_index, _mirror_axes

    colour = (1, 2, 3)
    amos = list(AMOS15_CLASSES)
    assert _lateral_pairs_by_index(amos) == [(3, 2), (12, 11)]
    users = [*amos, SegmentClass(16, "left iliopsoas", colour), SegmentClass(17, "right iliopsoas", colour)]
    assert _lateral_pairs_by_index(users) == [(3, 2), (12, 11), (16, 17)]
    assert _lateral_pairs_by_index([SegmentClass(1, "liver", colour), SegmentClass(2, "tumour", colour)]) is None
    alone = [*amos, SegmentClass(16, "left iliopsoas", colour)]
    assert _lateral_pairs_by_index(alone) is None

    config = TrainConfig(dataset="d", output="o", mirror_axes="zyx")
    events: list = []
    assert _mirror_axes(config, SimpleNamespace(classes=users, init_file=None), events.append) == "zyx"
    assert events == []
    assert _mirror_axes(config, SimpleNamespace(classes=alone, init_file=None), events.append) == "zy"
    assert len(events) == 1 and "'left iliopsoas' has no class of the other side" in events[0].text
    only_x = TrainConfig(dataset="d", output="o", mirror_axes="x")
    assert _mirror_axes(only_x, SimpleNamespace(classes=alone, init_file=None), events.append) == ""


def test_mask_loss_option_reaches_the_criterion(dataset, tmp_path, capsys, monkeypatch):
    from maskmed_core.model import heads as heads_module
    from maskmed_core.training import trainer

    built = []

    def recording(config, logits_first=True, mask_loss="points"):
        made = heads_module.build_criterion(config, logits_first, mask_loss)
        built.append(made.mask_loss)
        return made

    monkeypatch.setattr(trainer, "build_criterion", recording)
    assert main(train_args(dataset, tmp_path / "grid", "--mask-loss", "grid", "--epochs", "1")) == ExitCode.OK
    assert built == ["grid"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # argparse refuses an unknown choice itself
        main(train_args(dataset, tmp_path / "bad", "--mask-loss", "voxels"))
    assert refused.value.code == ExitCode.USAGE
    assert "invalid choice: 'voxels'" in capsys.readouterr().err


def _rank_pid(parent: int, rank: int) -> int:
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} under {parent}")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["maskmed train", "rank 1"])
def test_sigterm_to_a_multi_process_training_stops_every_process_and_keeps_the_last_epoch(dataset, tmp_path, target):
    """Issue 23: `maskmed train --nproc 2` ran torchrun, which ran the workers; SIGTERM to it (what Slicer's Cancel
    and a scheduler send) killed torchrun and left both workers training as orphans. Now every process stops, as
    one clean cancel; a signal to one worker alone (`kill` of one process) stops all of them too, at the same step
    (before: its partner failed with "Connection closed by peer" and a traceback). Output goes to files, not
    pipes: an orphan holding a pipe would block the test's read."""
    output = tmp_path / "run"
    command = [sys.executable, "-m", "maskmed_core.cli",
               *train_args(dataset, output, "--epochs", "500", "--nproc", "2")]
    state = output / "training_state.safetensors"
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        while not state.exists() and process.poll() is None:  # no deadline: a failed run ends the wait by exiting
            time.sleep(0.02)
        assert process.poll() is None, (tmp_path / "err.txt").read_text()
        os.kill(process.pid if target == "maskmed train" else _rank_pid(process.pid, 1), signal.SIGTERM)
        process.wait()
    left = subprocess.run(["pgrep", "-f", str(output)], capture_output=True, text=True).stdout.split()
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    message = (tmp_path / "err.txt").read_text()
    assert not left, f"{len(left)} training processes were still running"
    assert process.returncode == ExitCode.CANCELLED, message
    assert message.count("interrupted (SIGTERM); the files of the last completed epoch are kept: add --resume to "
                         "continue") == 1, message
    assert "Traceback" not in message, message
    assert load_state(state).step >= 2


def test_weight_average_is_the_mean_of_the_epochs_weights_across_a_resume(dataset, tmp_path, monkeypatch, capsys):
    """--weight-average-from 0: averaged.maskmed is the mean of the weights at every epoch's end; a resumed run goes on
    averaging from the count its state kept (not from the resumed weights alone)."""
    from maskmed_core.checkpoint import load_model_file
    from maskmed_core.training import trainer

    saved: list[dict[str, torch.Tensor]] = []
    real_save_model = trainer._save_model

    def recording(path, model, *rest):
        real_save_model(path, model, *rest)
        if path.name == "last.maskmed":  # as the file holds them (written under a temporary name until the epoch ends)
            saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(trainer, "_save_model", recording)
    output = tmp_path / "run"
    argv = train_args(dataset, output, "--weight-average-from", "0", "--warmup-steps", "0")
    argv[argv.index("--epochs") + 1] = "1"
    assert main(argv) == ExitCode.OK
    assert "averaged.maskmed (the weights averaged over the last 1 epochs' ends)" in capsys.readouterr().out
    state = load_state(output / "training_state.safetensors")  # the mean in float32 (the model file: half)
    assert state.averaged_count == 1
    assert all(torch.equal(state.averaged[k], v) for k, v in saved[0].items())

    argv[argv.index("--epochs") + 1] = "2"
    assert main([*argv, "--resume"]) == ExitCode.OK
    state = load_state(output / "training_state.safetensors")
    assert state.averaged_count == 2 and len(saved) == 2
    assert any(not torch.equal(saved[0][k], v) for k, v in saved[1].items())  # it trained on
    for key, value in saved[1].items():
        torch.testing.assert_close(state.averaged[key], (saved[0][key] + value) / 2, msg=key)
    in_file = _weights(output / "averaged.maskmed")
    assert all(torch.equal(in_file[k], v.to(in_file[k].dtype)) for k, v in state.averaged.items())
    training = load_model_file(output / "averaged.maskmed").extra["training"]
    assert training["averaged_epochs"] == 2 and "mean_dice" not in training  # its validation scored other weights
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    assert [r.get("averaged_epochs") for r in log] == [1, 2]


def test_weight_average_starts_at_its_fraction_of_the_schedule(dataset, tmp_path):
    """From 0.6 of a 4-step schedule without warm-up: the first epoch's end (step 2, progress 0.5) is left out, so
    the average is the last epoch's weights; without the option no averaged file is written."""
    output = tmp_path / "run"
    assert main(train_args(dataset, output, "--weight-average-from", "0.6", "--warmup-steps", "0")) == ExitCode.OK
    last, averaged = _weights(output / "last.maskmed"), _weights(output / "averaged.maskmed")
    assert all(torch.equal(averaged[k], v) for k, v in last.items())
    assert load_state(output / "training_state.safetensors").averaged_count == 1
    assert [r.get("averaged_epochs") for r in map(json.loads, (output / "training_log.jsonl").read_text().splitlines())
            ] == [None, 1]
    plain = tmp_path / "plain"
    assert main(train_args(dataset, plain)) == ExitCode.OK
    assert not (plain / "averaged.maskmed").exists()

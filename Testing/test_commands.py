"""What the ``maskmed`` commands share is declared once: the device names, the threshold defaults, the image
suffixes."""

from __future__ import annotations

import argparse

import pytest

from maskmed_core.cli import build_parser
from maskmed_core.devices import DEVICES, TRAINING_DEVICES


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


def test_predict_thresholds_default_to_the_semantic_defaults():
    from maskmed_core.inference import result
    from maskmed_core.model import semantic

    predict = _command_parsers()["predict"]
    assert _action(predict, "query_threshold").default == semantic.DEFAULT_QUERY_THRESHOLD
    assert _action(predict, "class_threshold").default == semantic.DEFAULT_CLASS_THRESHOLD
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

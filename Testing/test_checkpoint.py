"""The model file: round trip, and refusal of unsafe, damaged, foreign or too-new files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from factories import full_disk_write_bytes, tiny_model
from safetensors.torch import load_file, save_file

from maskmed_core.checkpoint import ModelFileError, load_model_file, save_model_file
from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
from maskmed_core.plans import Plans

CLASSES = list(AMOS15_CLASSES[:3])


@pytest.fixture
def model_path(tmp_path):
    return save_model_file(tmp_path / "tiny.maskmed", tiny_model(), Plans(), CLASSES, {"note": "test"})


def test_round_trip(model_path):
    loaded = load_model_file(model_path)
    assert loaded.classes == CLASSES
    assert loaded.plans == Plans()
    assert loaded.extra == {"note": "test"}
    model = loaded.build_model()
    reference = tiny_model()
    # Stored as float16 (the default), loaded back as float32: exactly the float16 rounding of each weight.
    for key, value in reference.state_dict().items():
        assert model.state_dict()[key].dtype == torch.float32
        torch.testing.assert_close(model.state_dict()[key], value.half().float(), rtol=0, atol=0)
    assert not any(p.name.startswith(".") for p in model_path.parent.iterdir()), "temporary file left behind"


def test_float32_file_round_trips_exactly(tmp_path):
    path = save_model_file(tmp_path / "full.maskmed", tiny_model(), Plans(), CLASSES, weights_dtype="float32")
    model = load_model_file(path).build_model()
    for key, value in tiny_model().state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.maskmed"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ModelFileError, match="not a MaskMed model file"):
        load_model_file(evil)
    assert not marker.exists()


def test_torch_save_checkpoint_is_refused(tmp_path):
    path = tmp_path / "torch.maskmed"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelFileError, match="pickled PyTorch checkpoints are refused"):
        load_model_file(path)


def _rewrite_metadata(source, target, change):
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    change(metadata)
    save_file(load_file(str(source)), str(target), metadata=metadata)


def test_newer_format_version_is_refused(model_path, tmp_path):
    target = tmp_path / "newer.maskmed"
    _rewrite_metadata(model_path, target, lambda m: m.update(format_version="99"))
    with pytest.raises(ModelFileError, match="newer than this maskmed_core reads"):
        load_model_file(target)


def _with_setting(metadata: dict, key: str, path: tuple[str, ...]) -> None:
    """Add a setting this version does not know at ``path`` inside the JSON of ``metadata[key]``."""
    value = json.loads(metadata[key])
    target = value[0] if isinstance(value, list) else value
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = 1
    metadata[key] = json.dumps(value)


@pytest.mark.parametrize(("key", "path", "named"), [
    ("config", ("pixel_decoder", "a_later_setting"), "PixelDecoderConfig: unknown fields: a_later_setting"),
    ("config", ("a_later_setting",), "ModelConfig: unknown fields: a_later_setting"),
    ("plans", ("a_later_setting",), "plans: unknown fields: a_later_setting"),
    ("classes", ("a_later_setting",), "classes[0]: unknown fields: a_later_setting"),
])
def test_a_setting_from_a_newer_version_asks_for_an_update_not_a_re_export(model_path, tmp_path, key, path, named):
    target = tmp_path / "newer_setting.maskmed"
    _rewrite_metadata(model_path, target, lambda m: _with_setting(m, key, path))
    with pytest.raises(ModelFileError) as refused:
        load_model_file(target)
    message = str(refused.value)
    assert named in message and "written by a newer maskmed_core; update maskmed_core" in message
    assert "re-export" not in message


@pytest.mark.parametrize("version", ["-7", "0", "1.0", "+1", " 1", "one", "", "1" * 40])
def test_invalid_format_version_is_refused(model_path, tmp_path, version):
    target = tmp_path / "invalid.maskmed"
    _rewrite_metadata(model_path, target, lambda m: m.update(format_version=version))
    with pytest.raises(ModelFileError, match="invalid model file format version"):
        load_model_file(target)


def test_missing_metadata_is_refused(model_path, tmp_path):
    target = tmp_path / "missing.maskmed"
    _rewrite_metadata(model_path, target, lambda m: m.pop("plans"))
    with pytest.raises(ModelFileError, match="lacks model metadata \\(plans\\)"):
        load_model_file(target)


def test_foreign_safetensors_is_refused(tmp_path):
    target = tmp_path / "other.maskmed"
    save_file({"w": torch.zeros(2)}, str(target))
    with pytest.raises(ModelFileError, match="not a MaskMed model file"):
        load_model_file(target)


def test_weights_not_matching_config_are_refused(model_path, tmp_path):
    target = tmp_path / "mismatch.maskmed"

    def bigger_head(metadata):
        config = json.loads(metadata["config"])
        config["head"]["num_queries"] += 1
        metadata["config"] = json.dumps(config)

    _rewrite_metadata(model_path, target, bigger_head)
    # Refused from the header, before any tensor is read or the network is built.
    with pytest.raises(ModelFileError, match="do not match its network configuration"):
        load_model_file(target)


def test_truncated_file_is_refused(model_path, tmp_path):
    target = tmp_path / "truncated.maskmed"
    data = model_path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model_file(target)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model_file(tmp_path / "nope.maskmed")


def test_bad_classes_are_refused_on_save(tmp_path):
    classes = [SegmentClass(1, "a", (1, 2, 3)), SegmentClass(1, "b", (1, 2, 3)), SegmentClass(2, "c", (0, 0, 0))]
    with pytest.raises(ValueError, match="distinct"):
        save_model_file(tmp_path / "x.maskmed", tiny_model(), Plans(), classes)
    assert not list(tmp_path.iterdir())


def test_terminology_tag_has_slicer_layout():
    tag = AMOS15_CLASSES[1].terminology.slicer_tag()
    parts = tag.split("~")
    assert parts[1] == "SCT^123037004^Anatomical Structure"
    assert parts[2] == "SCT^64033007^Kidney" and parts[3] == "SCT^24028007^Right"


def test_failed_save_keeps_the_previous_model_file(model_path, monkeypatch):
    before = model_path.read_bytes()

    monkeypatch.setattr(Path, "write_bytes", full_disk_write_bytes)
    with pytest.raises(OSError, match="No space left"):
        save_model_file(model_path, tiny_model(), Plans(), CLASSES)
    assert model_path.read_bytes() == before
    assert [p.name for p in model_path.parent.iterdir()] == [model_path.name]

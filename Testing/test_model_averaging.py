"""``maskmed average``: weight averaging of model files of one lineage (model soups, WiSE-FT)."""

from __future__ import annotations

import copy

import pytest
import torch
from factories import tiny_model

from maskmed_core.checkpoint import ModelFileError, load_model_file, save_model_file
from maskmed_core.classes import AMOS15_CLASSES
from maskmed_core.cli import main
from maskmed_core.exit_codes import ExitCode
from maskmed_core.model import MaskMed
from maskmed_core.model_averaging import average_model_files, average_state_dicts, normalized_weights
from maskmed_core.plans import Plans

CLASSES = list(AMOS15_CLASSES[:3])


def _file(path, seed: int = 0, classes=CLASSES, plans: Plans | None = None, extra=None, mutate=None):
    """A tiny model file from ``seed``'s weights, saved as float32 so the expected averages are exact."""
    model = tiny_model(len(classes), seed=seed)
    if mutate is not None:
        config = copy.deepcopy(model.config)
        mutate(config)
        model = MaskMed(config)
    return save_model_file(path, model, plans or Plans(), list(classes), extra or {"mirror_axes": []},
                           weights_dtype="float32")


def test_weights_are_scaled_to_sum_to_one_and_must_be_positive():
    assert normalized_weights(None, 4) == [0.25] * 4
    assert normalized_weights([1.0, 3.0], 2) == [0.25, 0.75]
    for bad in ([1.0], [1.0, 0.0], [1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]):
        with pytest.raises(ValueError):
            normalized_weights(bad, 2)


def test_a_state_dict_average_weights_each_float_tensor_and_keeps_equal_integer_ones():
    a = {"w": torch.tensor([0.0, 4.0]), "count": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 8.0]), "count": torch.tensor(7)}
    averaged = average_state_dicts([a, b], [3.0, 1.0])
    torch.testing.assert_close(averaged["w"], torch.tensor([1.0, 5.0]))
    assert int(averaged["count"]) == 7
    with pytest.raises(ValueError, match="count"):
        average_state_dicts([a, {**b, "count": torch.tensor(8)}])


def test_averaging_files_averages_their_weights_and_records_where_they_came_from(tmp_path):
    first = _file(tmp_path / "a.maskmed", seed=0, extra={"mirror_axes": [], "training": {"step": 300,
                                                                                         "mean_dice": 0.5}})
    second = _file(tmp_path / "b.maskmed", seed=1)
    averaged = average_model_files([first, second], [1.0, 3.0])
    a, b = load_model_file(first).state_dict, load_model_file(second).state_dict
    for key, value in averaged.state_dict.items():
        torch.testing.assert_close(value, 0.25 * a[key] + 0.75 * b[key])
    assert averaged.classes == CLASSES and averaged.mirror_axes == ()
    sources = averaged.extra["averaged_from"]
    assert [(s["file"], s["weight"]) for s in sources] == [("a.maskmed", 0.25), ("b.maskmed", 0.75)]
    assert sources[0]["step"] == 300 and sources[0]["mean_dice"] == 0.5 and "step" not in sources[1]
    assert all(len(s["sha256"]) == 64 for s in sources)


def test_a_file_averaged_with_itself_is_itself(tmp_path):
    path = _file(tmp_path / "a.maskmed")
    averaged = average_model_files([path, path])
    original = load_model_file(path)
    for key, value in original.state_dict.items():
        torch.testing.assert_close(averaged.state_dict[key], value, rtol=0, atol=0)
    averaged.build_model()


def test_averages_of_averages_stay_loadable(tmp_path):
    """A file's provenance is copied as flat numbers, so averaging averages again never nests deeper."""
    previous = _file(tmp_path / "0.maskmed", seed=0)
    for generation in range(1, 12):
        other = _file(tmp_path / f"other{generation}.maskmed", seed=generation)
        averaged = average_model_files([previous, other])
        previous = save_model_file(tmp_path / f"{generation}.maskmed", averaged.build_model(), averaged.plans,
                                   averaged.classes, averaged.extra)
    assert load_model_file(previous).extra["averaged_from"][0]["file"] == "10.maskmed"


def _deeper_encoder(config) -> None:
    config.encoder.blocks_per_stage = (2, 1, 1, 1, 1)


def _other_loss(config) -> None:
    config.loss.class_weight = 7.0


@pytest.mark.parametrize(("change", "named"), [
    ({"classes": list(AMOS15_CLASSES[1:4])}, "classes"),
    ({"plans": Plans(spacing=(2.0, 2.0, 2.0))}, "plans.spacing"),
    ({"extra": {"mirror_axes": [2]}}, "mirror_axes"),
    ({"mutate": _deeper_encoder}, "config.encoder.blocks_per_stage"),
])
def test_files_of_different_networks_plans_classes_or_mirrors_are_refused_by_name(tmp_path, change, named):
    first = _file(tmp_path / "a.maskmed")
    other = _file(tmp_path / "b.maskmed", seed=1, **change)
    with pytest.raises(ModelFileError, match=f"b.maskmed cannot be averaged with .*a.maskmed: they differ in {named}"):
        average_model_files([first, other])


def test_training_only_loss_weights_may_differ(tmp_path):
    first = _file(tmp_path / "a.maskmed")
    other = _file(tmp_path / "b.maskmed", seed=1, mutate=_other_loss)
    assert average_model_files([first, other]).config == load_model_file(first).config


def test_the_command_writes_a_loadable_average(tmp_path, capsys):
    first, second = _file(tmp_path / "a.maskmed"), _file(tmp_path / "b.maskmed", seed=1)
    output = tmp_path / "new" / "soup.maskmed"
    assert main(["average", str(output), str(first), str(second), "--weights", "1", "1"]) == ExitCode.OK
    assert f"wrote {output}: the average of a.maskmed (0.5), b.maskmed (0.5)" in capsys.readouterr().out
    averaged = load_model_file(output)
    a, b = load_model_file(first).state_dict, load_model_file(second).state_dict
    key = next(iter(a))
    # Written as half precision, the default of every model file.
    torch.testing.assert_close(averaged.state_dict[key], ((a[key] + b[key]) / 2).half().float(), rtol=0, atol=0)


@pytest.mark.parametrize(("arguments", "code", "message"), [
    (["{a}"], ExitCode.USAGE, "at least two model files"),
    (["{a}", "{b}", "--weights", "1"], ExitCode.USAGE, "--weights: 1 weights given for 2 model files"),
    (["{a}", "{b}", "--weights", "1", "-1"], ExitCode.USAGE, "--weights: averaging weights must be positive"),
    (["{a}", "{other_classes}"], ExitCode.BAD_MODEL, "they differ in classes"),
    (["{a}", "{missing}"], ExitCode.BAD_MODEL, "does not exist"),
])
def test_the_command_refuses_bad_input_and_leaves_the_output_as_it_was(tmp_path, capsys, arguments, code, message):
    paths = {"a": _file(tmp_path / "a.maskmed"), "b": _file(tmp_path / "b.maskmed", seed=1),
             "other_classes": _file(tmp_path / "c.maskmed", classes=AMOS15_CLASSES[1:4]),
             "missing": tmp_path / "missing.maskmed"}
    output = tmp_path / "out.maskmed"
    output.write_bytes(b"an earlier file")
    assert main(["average", str(output), *(a.format(**paths) for a in arguments)]) == code
    assert message in capsys.readouterr().err
    assert output.read_bytes() == b"an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.maskmed", "b.maskmed", "c.maskmed", "out.maskmed"]), "a temporary file was left behind"

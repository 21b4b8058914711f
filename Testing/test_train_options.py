"""A training option is declared once (its TrainConfig field): the command line, the validation and the resume check
are derived from it, so adding an option touches one place."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from factories import tiny_model

from maskmed_core.cli import build_parser, main
from maskmed_core.events import ExitCode
from maskmed_core.train_command import _config_from_args
from maskmed_core.training import options
from maskmed_core.training.config import TrainConfig
from maskmed_core.training.options import OptionError, option
from maskmed_core.training.state import TrainingState, TrainingStateError, check_resumable


def _train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def _jsonable(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def test_every_option_with_a_flag_is_in_the_parser_with_its_default_and_help():
    actions = {a.dest: a for a in _train_parser()._actions}
    declared = options.options_of(TrainConfig)
    assert len(declared) == len(dataclasses.fields(TrainConfig)), "every TrainConfig field is an option(...)"
    for field, spec in declared:
        assert spec.flags, f"{field.name} has no command-line flag"
        action = actions[field.name]
        # (a BooleanOptionalAction adds the --no- form of its flag)
        assert tuple(action.option_strings or [action.dest])[:len(spec.flags)] == spec.flags
        assert action.help == spec.help
        if spec.requires is None and spec.action is None:
            assert action.default == options.default_of(field), field.name
    own = {"help", "export", "nproc", "json"}  # the command's own arguments, not training settings
    assert set(actions) - own == {field.name for field, _ in declared}


def test_the_defaults_on_the_command_line_are_the_config_defaults():
    args = build_parser().parse_args(["train", "d", "-o", "o"])
    assert _config_from_args(args) == TrainConfig(dataset="d", output="o")


def test_the_four_settings_that_had_no_flag_have_one():
    args = build_parser().parse_args(["train", "d", "-o", "o", "--weight-decay", "0.01", "--warmup-steps", "3",
                                      "--schedule", "cosine", "--grad-clip", "2.5"])
    config = _config_from_args(args)
    assert (config.weight_decay, config.warmup_steps, config.schedule, config.grad_clip) == (0.01, 3, "cosine", 2.5)
    assert not hasattr(config, "extra")


@pytest.mark.parametrize("field, value", [("weight_decay", -0.1), ("grad_clip", 0.0), ("warmup_steps", -1),
                                          ("num_workers", -1), ("rehearsal", 1.5)])
def test_a_value_out_of_its_declared_range_is_refused_naming_it(field, value):
    with pytest.raises(OptionError, match=field):
        TrainConfig(dataset="d", output="o", **{field: value})


@pytest.mark.parametrize("name", options.must_match_on_resume(TrainConfig))
def test_every_setting_that_must_match_is_checked_on_resume(name):
    model = tiny_model()
    config = TrainConfig(dataset="d", output="o")
    stored = _jsonable(config)
    current = dict(stored)
    value = stored[name]
    current[name] = ("other" if isinstance(value, str) else not value if isinstance(value, bool)
                     else value + 1 if isinstance(value, (int, float)) else [value, "other"])
    state = TrainingState(step=1, model=model.state_dict(), optimizer={}, scheduler={},
                          torch_rng=torch.get_rng_state(), run_config=stored)
    check_resumable(state, stored, model, "state")
    with pytest.raises(TrainingStateError, match=rf"\({name}: |; {name}: "):
        check_resumable(state, current, model, "state")


def test_a_setting_that_may_change_is_not_checked_on_resume():
    must_match = set(options.must_match_on_resume(TrainConfig))
    assert {"epochs", "device", "num_workers", "val_every", "time_limit_minutes", "output"}.isdisjoint(must_match)
    assert {"synthetic_ratio", "grad_clip", "weight_decay", "schedule"} <= must_match


def test_an_option_added_to_a_config_is_on_the_command_line_checked_and_compared_on_resume():
    """The one place: a new field with its option metadata, nothing else."""

    @dataclasses.dataclass
    class Config:
        share: float = option(0.5, flag="--share", at_least=0.0, at_most=1.0, must_match=True, before=0.0,
                              requires="labels", help="a share")
        labels: list[str] = option(default_factory=list, flag="--labels", nargs="+", convert=list)
        kind: str = option("a", flag="--kind", choices=("a", "b"))

        def __post_init__(self) -> None:
            options.check(self)

    parser = argparse.ArgumentParser()
    options.add_arguments(parser, Config)
    assert options.from_arguments(Config, parser.parse_args(["--labels", "x", "--share", "0.25", "--kind", "b"])) \
        == Config(0.25, ["x"], "b")
    with pytest.raises(OptionError, match="--share 0.25 has no effect without --labels"):
        options.from_arguments(Config, parser.parse_args(["--share", "0.25"]))
    with pytest.raises(OptionError, match="share must be between 0 and 1"):
        Config(2.0, ["x"])
    with pytest.raises(OptionError, match="kind must be one of a, b"):
        Config(kind="c")
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    assert options.must_match_on_resume(Config) == ("share",)
    assert options.values_before(Config) == {"share": 0.0}
    assert options.choices_of(Config) == {"kind": ("a", "b")}


def test_synthetic_ratio_without_synthetic_labels_is_refused(tmp_path, capsys):
    code = main(["train", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--synthetic-ratio", "0.3"])
    assert code == ExitCode.USAGE
    assert "--synthetic-ratio 0.3 has no effect without --synthetic-labels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(OptionError, match="synthetic_ratio has no effect without synthetic_labels"):
        TrainConfig(dataset="d", output="o", synthetic_ratio=0.3)


def test_resume_without_a_saved_state_is_refused_naming_the_folder(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    code = main(["train", str(tmp_path / "data"), "-o", str(output), "--resume", "--device", "cpu"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{output} holds no saved training state" in err and "without --resume" in err
    assert list(output.iterdir()) == []


def test_an_output_the_run_could_not_write_is_refused_before_training(tmp_path, capsys):
    # Found at the first epoch's end, minutes later, before: a folder named best.maskmed; -o a file (exit 1).
    output = tmp_path / "out"
    (output / "best.maskmed").mkdir(parents=True)
    (output / "best.maskmed" / "kept.txt").write_text("the user's")
    code = main(["train", str(tmp_path / "data"), "-o", str(output), "--device", "cpu"])
    assert code == ExitCode.USAGE
    assert f"Cannot write {output / 'best.maskmed'}: a folder has that name" in capsys.readouterr().err
    assert sorted(p.name for p in output.rglob("*")) == ["best.maskmed", "kept.txt"]

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert main(["train", str(tmp_path / "data"), "-o", str(a_file), "--device", "cpu"]) == ExitCode.USAGE
    assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "not a folder"


def test_the_encoder_is_frozen_by_default_only_when_fine_tuning_a_whole_model():
    from maskmed_core.training.trainer import encoder_frozen

    assert encoder_frozen(TrainConfig(dataset="d.json", output="o", init="m.maskmed"))
    assert not encoder_frozen(TrainConfig(dataset="d.json", output="o"))  # a new model
    assert not encoder_frozen(TrainConfig(dataset="d.json", output="o", init="m.maskmed", init_encoder_only=True))
    assert not encoder_frozen(TrainConfig(dataset="d.json", output="o", init="m.maskmed", freeze_encoder=False))
    assert encoder_frozen(TrainConfig(dataset="d.json", output="o", freeze_encoder=True))

"""The JSON-lines event schema shared by `maskmed predict`, `maskmed train` and the Slicer Lib."""

from __future__ import annotations

import json

import pytest

from maskmed_core import events
from maskmed_core.events import (
    DoneEvent,
    EpochEvent,
    ExitCode,
    MessageEvent,
    OutputEvent,
    ProgressEvent,
    StepEvent,
    SummaryEvent,
    from_dict,
    from_json,
    to_json,
)

EXAMPLES = [
    ProgressEvent("ct", "inference", 0.25),
    MessageEvent("warning", "an MR volume?"),
    OutputEvent("ct", ["out/ct.nii.gz"], 1.5, [{"label": 1, "name": "spleen", "voxels": 3}]),
    DoneEvent(0),
    StepEvent(3, 10, 0.5, 2.0),
    EpochEvent(1, 2, 0.4, 1e-3, 3.0),
    EpochEvent(2, 4, 0.3, 1e-3, 6.0, dice={"liver": 0.5}, mean_dice=0.5, stopped="time limit"),
    SummaryEvent(2, 0.5, {"liver": 0.5}, "best.maskmed", "last.maskmed", 4, 6.0),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_round_trips_through_one_json_line(event):
    line = to_json(event)
    assert "\n" not in line and json.loads(line)["event"] == event.KIND
    assert from_json(line) == event


def test_fields_that_are_none_are_left_out_of_the_line():
    assert json.loads(to_json(EpochEvent(1, 2, 0.4, 1e-3, 3.0))) == {
        "event": "epoch", "epoch": 1, "step": 2, "loss": 0.4, "lr": 1e-3, "seconds": 3.0}


@pytest.mark.parametrize("line", [
    "plain text", "{not json", "[1, 2]", '{"event": "unknown"}', '{"event": "progress", "case": "ct"}',
    '{"event": "progress", "case": "ct", "stage": "reading", "fraction": "half"}',
    '{"event": "done", "exit_code": true}', '{"event": "message", "level": "info", "text": 3}',
])
def test_lines_that_are_not_events_of_the_schema_give_none(line):
    assert from_json(line) is None


def test_unknown_keys_of_a_newer_writer_are_ignored():
    assert from_dict({"event": "done", "exit_code": 3, "extra": 1}) == DoneEvent(3)


def test_the_trainer_epoch_record_is_an_epoch_event():
    # The trainer reports {"event": "epoch", **record}; its record keys are the EpochEvent fields.
    record = {"epoch": 1, "step": 2, "loss": 0.4, "lr": 1e-3, "seconds": 3.0, "dice": {"liver": 0.1},
              "mean_dice": 0.1}
    assert isinstance(from_dict({"event": "epoch", **record}), EpochEvent)


def test_exit_codes_keep_their_numbers_and_are_shared():
    from maskmed_core import predict_command, train_command

    assert [(c.name, c.value) for c in ExitCode] == [
        ("OK", 0), ("ERROR", 1), ("USAGE", 2), ("BAD_INPUT", 3), ("BAD_MODEL", 4), ("CANCELLED", 5), ("DIVERGED", 6)]
    assert predict_command.ExitCode is ExitCode
    assert predict_command.EXIT_CODES_HELP == (
        "exit codes: 0 ok, 1 error, 2 usage, 3 bad_input, 4 bad_model, 5 cancelled")
    assert train_command.EXIT_HELP.endswith("6 diverged")
    assert events.exit_codes_help(ExitCode.OK) == "exit codes: 0 ok"

"""The JSON-lines events of ``maskmed predict --json`` and ``maskmed train --json`` (exit codes: ``exit_codes``).

One schema for the writers (the two commands) and the reader (the Slicer module's Lib, which runs them as child
processes). Each event is a small frozen dataclass; on the wire it is one JSON object per line whose ``"event"``
key names the kind and whose other keys are the dataclass fields (fields that are None are left out)::

    {"event": "progress", "case": "ct", "stage": "inference", "fraction": 0.5}

``to_json(event)`` writes a line, ``from_json(line)`` reads one back (None for a line that is not an event of this
schema, e.g. a stray print). Kinds: ``progress``, ``message``, ``output`` and ``done`` (predict); ``step``,
``epoch``, ``message`` and ``summary`` (train). ``LogEvent`` is not written by either command: it is what a
reader makes of a plain text line (stderr, or stdout that is not JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

# The exit codes (declared in maskmed_core.exit_codes) are part of what a reader of these events needs: DoneEvent's
# exit_code is one of them.
from maskmed_core.exit_codes import ExitCode as ExitCode
from maskmed_core.exit_codes import exit_codes_help as exit_codes_help

# ProgressEvent.stage of `maskmed predict`, in order (the Predictor reports the first four, predict adds "writing").
PREDICT_STAGES = ("reading", "preparing", "inference", "finishing", "writing")


@dataclass(frozen=True)
class ProgressEvent:
    """predict: ``fraction`` (0..1) of ``stage`` (reading, preparing, inference, finishing, writing) of ``case``."""

    KIND: ClassVar[str] = "progress"
    case: str
    stage: str
    fraction: float


@dataclass(frozen=True)
class MessageEvent:
    """Both commands: a text for the user; ``level`` is "info", "warning" or "error"."""

    KIND: ClassVar[str] = "message"
    level: str
    text: str


@dataclass(frozen=True)
class OutputEvent:
    """predict: the files written for one case, the time it took (s) and one statistics row per class
    (label, name, voxels, volume_ml, mean_confidence)."""

    KIND: ClassVar[str] = "output"
    case: str
    files: list[str]
    seconds: float
    classes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DoneEvent:
    """predict: the last line, with the process's exit code."""

    KIND: ClassVar[str] = "done"
    exit_code: int


@dataclass(frozen=True)
class StepEvent:
    """train: optimiser step ``step`` of ``total`` done; mean loss over the processes; training seconds so far;
    ``remaining``: seconds to go, the steps left at the pace so far or what is left of ``--time-limit`` when that ends
    the run first (None from writers older than the field)."""

    KIND: ClassVar[str] = "step"
    step: int
    total: int
    loss: float
    elapsed: float
    remaining: float | None = None


@dataclass(frozen=True)
class EpochEvent:
    """train: an epoch ended (mean training loss); ``dice``/``mean_dice`` when it was validated; ``stopped`` says
    why training ended early ("time limit"); ``averaged_epochs``: how many epochs' ends averaged.maskmed now holds
    (--weight-average-from), when this one joined them."""

    KIND: ClassVar[str] = "epoch"
    epoch: int
    step: int
    loss: float
    lr: float
    seconds: float
    dice: dict[str, float] | None = None
    mean_dice: float | None = None
    stopped: str | None = None
    averaged_epochs: int | None = None


@dataclass(frozen=True)
class SummaryEvent:
    """train: the last line of a successful run: best epoch and its Dice, the model files, steps and seconds."""

    KIND: ClassVar[str] = "summary"
    best_epoch: int | None
    best_mean_dice: float
    dice: dict[str, float]
    best_model: str
    last_model: str
    steps: int
    seconds: float
    exported: str | None = None
    averaged_model: str | None = None  # --weight-average-from: the mean of averaged_epochs epochs' ends
    averaged_epochs: int | None = None


@dataclass(frozen=True)
class LogEvent:
    """A plain text line of a child process (never written as JSON by the commands)."""

    KIND: ClassVar[str] = "log"
    text: str
    stream: str = "stdout"


Event = ProgressEvent | MessageEvent | OutputEvent | DoneEvent | StepEvent | EpochEvent | SummaryEvent | LogEvent

EVENT_TYPES: dict[str, type] = {
    cls.KIND: cls
    for cls in (ProgressEvent, MessageEvent, OutputEvent, DoneEvent, StepEvent, EpochEvent, SummaryEvent, LogEvent)
}


def to_dict(event: Event) -> dict[str, Any]:
    """``{"event": kind, **fields}`` without the fields that are None."""
    return {"event": event.KIND, **{k: v for k, v in asdict(event).items() if v is not None}}


def to_json(event: Event) -> str:
    """One line of JSON (no newline)."""
    return json.dumps(to_dict(event))


def from_dict(data: dict[str, Any]) -> Event | None:
    """The event a decoded JSON object holds, or None when it is not one of this schema (unknown kind, missing
    or mistyped fields). Keys the dataclass does not know are ignored (a newer writer may add some)."""
    cls = EVENT_TYPES.get(str(data.get("event")))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        event = cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a required field is missing
        return None
    return event if _types_ok(event) else None


def from_json(line: str) -> Event | None:
    """The event of one line written by :func:`to_json`, or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return from_dict(data) if isinstance(data, dict) else None


def _types_ok(event: Event) -> bool:
    """The numbers are numbers and the texts texts (a reader must not crash on a malformed line)."""
    numbers = (int, float)
    for f in fields(event):
        value = getattr(event, f.name)
        if value is None:
            continue
        expected = str(f.type)
        if expected.startswith(("float", "int")) and (isinstance(value, bool) or not isinstance(value, numbers)):
            return False
        if expected.startswith("str") and not isinstance(value, str):
            return False
        if expected.startswith(("list", "dict")) and not isinstance(value, list if expected.startswith("list")
                                                                          else dict):
            return False
    return True

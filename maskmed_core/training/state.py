"""The resumable training state: weights, optimiser moments, step counters, RNG states, history.

Stored like the model file: one safetensors file (tensors only, nothing is unpickled on load) with the
scalars in JSON metadata, written to a temporary name and renamed, so a kill -9 or a full disk at any
moment leaves the previous state file intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskmed_core.atomic import write_safetensors
from maskmed_core.training.config import TrainConfig
from maskmed_core.training.options import must_match_on_resume, values_before

STATE_FORMAT = "maskmed-training-state"
STATE_VERSION = 1


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    torch_rng: torch.Tensor
    best_metric: float = -1.0
    best_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    run_config: dict[str, Any] = field(default_factory=dict)
    # --weight-average-from: the mean of the weights so far (the network's keys) and how many epochs' ends it holds
    averaged: dict[str, torch.Tensor] = field(default_factory=dict)
    averaged_count: int = 0


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in rest["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_state(path: str | Path, state: TrainingState) -> Path:
    """Write the state atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    optimizer_tensors, optimizer_rest = _flatten_optimizer(state.optimizer)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.model.items()}
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = state.torch_rng.cpu().contiguous()
    tensors.update({f"averaged.{k}": v.detach().cpu().contiguous() for k, v in state.averaged.items()})
    metadata = {
        "format": STATE_FORMAT,
        "format_version": str(STATE_VERSION),
        "step": str(state.step),
        "optimizer": json.dumps(optimizer_rest),
        "scheduler": json.dumps(state.scheduler),
        "best_metric": repr(state.best_metric),
        "best_step": str(state.best_step),
        "history": json.dumps(state.history),
        "run_config": json.dumps(state.run_config),
        "averaged_count": str(state.averaged_count),
    }
    return write_safetensors(path, tensors, metadata)


class TrainingStateError(ValueError):
    """A training state that cannot be resumed: foreign, damaged, or written by another run or another
    configuration. The message gives the reason; nothing was changed in the output folder."""


# Settings that make a run what it is (``option(..., must_match=True)`` in TrainConfig): resuming with any of them
# changed would silently continue another experiment (a different dataset, data mix, network or optimisation). The
# rest (epochs, time limit, device, workers, validation interval, output path) may change between the interrupted run
# and its resumption.
RESUME_MUST_MATCH = must_match_on_resume(TrainConfig)
# Settings that states written before they existed lack, with the value those runs had (``option(..., before=)``).
ADDED_LATER = values_before(TrainConfig)
# The history of a long run: at most this much JSON per metadata field.
_MAX_STATE_JSON = 64 << 20


def load_state(path: str | Path) -> TrainingState:
    """Read a state file written by ``save_state``; a foreign or damaged file raises TrainingStateError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from maskmed_core.untrusted import load_json

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        if metadata.get("format") != STATE_FORMAT:
            raise TrainingStateError(f"{path} is not a MaskMed training state; start without --resume")
        fields = {name: load_json(metadata[name], name, _MAX_STATE_JSON)
                  for name in ("optimizer", "scheduler", "history", "run_config")}
        tensors = load_file(str(path))
        _check_progress_fields(fields["history"], tensors.get("rng.torch"))
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        averaged = {k[len("averaged.") :]: v for k, v in tensors.items() if k.startswith("averaged.")}
        averaged_count = int(metadata.get("averaged_count", "0"))  # states written before averaging: none
        if averaged_count < 0 or (averaged_count > 0) != bool(averaged):
            raise ValueError(f"its averaged weights ({len(averaged)} tensors) and their count ({averaged_count}) "
                             "disagree")
        return TrainingState(
            step=int(metadata["step"]),
            model=model,
            optimizer=_unflatten_optimizer(optimizer_tensors, fields["optimizer"]),
            scheduler=fields["scheduler"],
            torch_rng=tensors["rng.torch"],
            best_metric=float(metadata["best_metric"]),
            best_step=int(metadata["best_step"]),
            history=fields["history"],
            run_config=fields["run_config"],
            averaged=averaged,
            averaged_count=averaged_count,
        )
    except TrainingStateError:
        raise
    except Exception as error:  # safetensors' own errors, a missing key, a wrong type: all mean "damaged"
        raise TrainingStateError(
            f"{path} is not a readable training state ({str(error)[:200]}); start without --resume"
        ) from error


def _check_progress_fields(history: Any, rng: torch.Tensor | None) -> None:
    """ValueError unless the history is a list of epoch records (objects with an integer step and a number of
    seconds) and the generator state a 1-D uint8 tensor, as ``save_state`` writes them."""
    if not isinstance(history, list) or not all(
            isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("seconds", 0.0), (int, float))
            for r in history):
        raise ValueError("its history is not a list of epoch records")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise ValueError("its random generator state is not a byte tensor")


def require_saved_state(path: Path) -> None:
    """``--resume`` needs the state file ``path``: without it the run would silently start from scratch. Raises
    TrainingStateError naming the folder and what to do."""
    if not path.is_file():
        raise TrainingStateError(
            f"--resume: {path.parent} holds no saved training state ({path.name}), so there is nothing to continue: "
            "give -o the output folder of the run to continue, or start afresh without --resume"
        )


def _renamed_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """A state written before ``absent_classes`` had ``keep_absent_classes``: True kept them frozen, False dropped
    them."""
    if "absent_classes" not in run_config and "keep_absent_classes" in run_config:
        run_config["absent_classes"] = "freeze" if run_config["keep_absent_classes"] else "drop"
    return run_config


def check_resumable(state: TrainingState, run_config: dict[str, Any], model: torch.nn.Module, path: Path) -> None:
    """Raise TrainingStateError unless ``state`` was written by this run: the settings in RESUME_MUST_MATCH
    equal (after a JSON round trip, so tuples and lists compare equal) and the weights fit ``model``."""
    stored = {**ADDED_LATER, **_renamed_settings(json.loads(json.dumps(state.run_config)))}
    current = {**ADDED_LATER, **json.loads(json.dumps(run_config))}
    differing = [name for name in RESUME_MUST_MATCH if stored.get(name) != current.get(name)]
    if differing:
        details = "; ".join(f"{name}: {stored.get(name)!r:.80} there, {current.get(name)!r:.80} now"
                            for name in differing)
        raise TrainingStateError(
            f"--resume refused: {path} was written by another run ({details}). Resume with the same settings, "
            "or train into a new output folder (-o)."
        )
    own = model.state_dict()
    wrong = sorted(set(own) ^ set(state.model)) + sorted(
        k for k in set(own) & set(state.model) if own[k].shape != state.model[k].shape
    )
    if wrong:
        raise TrainingStateError(
            f"--resume refused: the weights in {path} do not fit this run's network ({', '.join(wrong[:3])}"
            f"{' ...' if len(wrong) > 3 else ''}); train into a new output folder (-o)."
        )

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

from maskmed_core.atomic import atomic_path, verify_safetensors

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
    from safetensors.torch import save_file

    path = Path(path)
    optimizer_tensors, optimizer_rest = _flatten_optimizer(state.optimizer)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.model.items()}
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = state.torch_rng.cpu().contiguous()
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
    }
    with atomic_path(path, verify=verify_safetensors) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def load_state(path: str | Path) -> TrainingState:
    """Read a state file written by ``save_state``; a foreign or damaged file raises ValueError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable training state ({error}); start without --resume") from error
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a MaskMed training state")
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return TrainingState(
        step=int(metadata["step"]),
        model=model,
        optimizer=_unflatten_optimizer(optimizer_tensors, json.loads(metadata["optimizer"])),
        scheduler=json.loads(metadata["scheduler"]),
        torch_rng=tensors["rng.torch"],
        best_metric=float(metadata["best_metric"]),
        best_step=int(metadata["best_step"]),
        history=json.loads(metadata["history"]),
        run_config=json.loads(metadata["run_config"]),
    )

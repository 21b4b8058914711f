"""The files a training run writes into its output folder: their names, the epoch log and the curves picture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskmed_core.atomic import atomic_path

STATE_FILE = "training_state.safetensors"
LOG_FILE = "training_log.jsonl"
PLOT_FILE = "training_curves.png"
BEST_MODEL = "best.maskmed"
LAST_MODEL = "last.maskmed"
AVERAGED_MODEL = "averaged.maskmed"
HOLDOUT_FILE = "holdout_evaluation.json"
# Every file a run writes into its output folder.
RUN_FILES = (BEST_MODEL, LAST_MODEL, AVERAGED_MODEL, STATE_FILE, LOG_FILE, PLOT_FILE, HOLDOUT_FILE)


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The epochs' records as JSON lines, rewritten whole from the history the state keeps (so a resumed run's log
    has every epoch the state has, and no epoch the state lost)."""
    with atomic_path(path) as temporary:
        temporary.write_text("".join(json.dumps(record) + "\n" for record in history), encoding="utf-8")


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Loss and validation Dice curves as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    validated = [r for r in history if "dice" in r]
    for name in validated[-1]["dice"] if validated else []:
        right.plot([r["epoch"] for r in validated], [r["dice"][name] for r in validated], label=name)
    right.set_xlabel("epoch")
    right.set_ylabel("validation Dice")
    right.set_ylim(0, 1)
    if validated:
        right.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    try:
        with atomic_path(path, sync=False) as temporary:  # a picture: not worth an fsync per epoch
            figure.savefig(temporary, dpi=80, format="png")
    finally:
        plt.close(figure)  # a failed write must not leave the figure open in a long run

"""The training schedule: the learning rate's warm-up and decay, and the training clock that a time limit reads."""

from __future__ import annotations

import math
import time


def learning_rate_factor(step: int, total: int, warmup: int, schedule: str, time_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then poly (power 0.9, as nnU-Net) or cosine decay to 0.

    ``time_fraction`` (0..1, the share of a time limit used so far) moves the decay on when the clock runs out
    before the steps do, so a run stopped by its time limit still ends at a low learning rate.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = schedule_progress(step, total, warmup, time_fraction)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** 0.9


def schedule_progress(step: int, total: int, warmup: int, time_fraction: float = 0.0) -> float:
    """How far the decay after the warm-up has gone (0..1): the share of the steps after ``warmup`` done, or of the
    time limit used (``time_fraction``) when that is further on."""
    return min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction, 0.0))


class TrainingClock:
    """Training time (s) counted across --resume, and the share of an optional time limit used."""

    def __init__(self, limit_minutes: float | None):
        self.limit = None if limit_minutes is None else 60.0 * limit_minutes
        self.spent_before = 0.0
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self.spent_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    @property
    def fraction(self) -> float:
        return 0.0 if not self.limit else min(1.0, self.elapsed() / self.limit)

    def out_of_time(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit

    def remaining(self, step: int, total: int) -> float:
        """Seconds to go after ``step`` of ``total`` steps: the steps left at the pace so far, or what is left of the
        time limit when that comes first (the ETA a user reads must count down to the limit)."""
        elapsed = self.elapsed()
        left = elapsed / max(1, step) * max(0, total - step)
        return left if self.limit is None else min(left, max(0.0, self.limit - elapsed))

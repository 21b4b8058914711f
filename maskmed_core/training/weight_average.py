"""The weights averaged over a run's last epochs (stochastic weight averaging, Izmailov et al., UAI 2018).

A short CPU run's best epoch is chosen by a validation on a few CTs that swings by several points from one check to
the next (recipes/default_model/README.md); the mean of the weights at the epochs' ends over the run's decaying tail
needs no such choice and sits in a flatter region of the loss, which is what generalises to unseen scans.
``--weight-average-from F`` starts the average at the first epoch's end where the learning-rate schedule's progress
(``schedule.schedule_progress``: steps, or the time limit's share when that runs out first) has reached F; the run
then writes ``averaged.maskmed`` beside best.maskmed and last.maskmed. PyTorch's ``AveragedModel`` keeps the mean (of
the parameters; the network has no buffers); its copy of the weights and the count travel in the training state, so a
resumed run goes on averaging where it stopped.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    """The running mean of ``model``'s parameters over the epochs' ends from ``start_fraction`` of the schedule on.

    ``start_fraction`` in [0, 1]; the averaged weights are ``module``'s (a copy of the network, same device)."""

    def __init__(self, model: torch.nn.Module, start_fraction: float):
        self.start_fraction = start_fraction
        self._averaged = AveragedModel(model)

    @property
    def module(self) -> torch.nn.Module:
        return self._averaged.module

    @property
    def count(self) -> int:
        """How many epochs' ends are in the mean (0: none yet)."""
        return int(self._averaged.n_averaged)

    def due(self, progress: float) -> bool:
        """Whether an epoch's end at schedule progress ``progress`` (0..1) joins the mean."""
        return progress >= self.start_fraction

    def update(self, model: torch.nn.Module) -> None:
        """Add ``model``'s current parameters to the mean (the first call copies them)."""
        self._averaged.update_parameters(model)

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged weights (the network's state-dict keys), for the training state."""
        return self.module.state_dict()

    def restore(self, weights: dict[str, torch.Tensor], count: int) -> None:
        """Continue the mean of ``count`` epochs' ends whose average is ``weights`` (a resumed run)."""
        self.module.load_state_dict(weights)
        self._averaged.n_averaged.fill_(count)

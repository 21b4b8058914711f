"""Infinite, reproducible stream of augmented training patches, and its DataLoader.

How the randomness is laid out (so that a stream does not depend on the number of workers and a resumed run
continues it exactly):

* Sample ``i`` of DDP rank ``r`` is a pure function of ``(seed, g)`` where ``g`` is its index in the run's
  global stream (``global_index``: rank ``r`` takes the ``r``-th block of each global batch): its
  ``np.random.Generator`` is seeded with ``SeedSequence([seed, g])``; it chooses the case and the position
  (``PatchSampler.draw``), then gives the augmenter the one draw it re-seeds MONAI with. Ranks get disjoint
  samples, K processes see the same global batches as one, and nothing depends on the epoch (the stream is
  infinite) nor on global random state.
* The stream of a rank starts at sample ``start_step`` (a resumed run at optimizer step ``s`` with per-rank
  batch size ``B`` passes ``start_step = s * B``).
* With ``W`` workers, the stream is cut in blocks of ``block_size`` consecutive samples (``make_loader`` sets
  ``block_size`` to the batch size): worker ``w`` produces blocks ``k = w, w + W, w + 2W, ...``, i.e. sample
  ``start_step + k * block_size + j``. The DataLoader takes one batch from each worker in turn, so batch ``k``
  is block ``k`` for any ``W`` (0 included): the same batches in the same order.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskmed_core.plans import IntensityNormalization
from maskmed_core.training.augmentation import Augmenter
from maskmed_core.training.intensity_sources import SynthesisOptions, choose_source
from maskmed_core.training.sampling import PatchSampler
from maskmed_core.training.synthesis import SynthesisPriors


@dataclass(frozen=True)
class SynthesisSetup:
    """What synthesised and contrast-changed patches need: how often (``options``), the HU priors, the
    intensity normalisation of the plans and the grid spacing (z, y, x, mm)."""

    options: SynthesisOptions
    priors: SynthesisPriors
    intensity: IntensityNormalization
    spacing_zyx: tuple[float, float, float]


class PatchDataset(IterableDataset):
    """Yields ``{"image": float32 (1, z, y, x), "labels": int64 (z, y, x), "case": str}`` forever.

    Args:
        sampler: where patches come from.
        augmenter: applied to each patch (the sampler then reads ``augmenter.region_size``); None = plain
            patches of ``sampler.patch_size``.
        seed: the run's seed (non-negative).
        rank: this process's DDP rank (default: ``torch.distributed``'s rank if initialised, else 0).
        world_size: number of DDP ranks (default likewise); only checked against ``rank``.
        start_step: index of the first sample of this rank's stream to yield.
        block_size: consecutive samples per worker block; keep it equal to the batch size (``make_loader``
            does) so that the batches do not depend on the number of workers.
        label_only_sampler: patches of label-only cases (no image: one is synthesised); with ``sampler`` also
            given, a share ``synthesis.options.synthetic_ratio`` of the samples comes from it.
        synthesis: enables synthesised images and contrast-phase changes (needs ``augmenter``); None = real
            images only, exactly as without it.
        unannotated: case name -> the 0-based class indices its label map does not annotate (rehearsal label maps
            know the starting model's classes, not the ones a fine-tune adds); with ``num_classes``, every sample then
            carries ``"unannotated"``: bool (C,), for the criterion (see ``maskmed_core.model.criterion``).
        num_classes: C; 0 (default) leaves the ``"unannotated"`` key out.
    """

    def __init__(
        self,
        sampler: PatchSampler,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
        block_size: int = 1,
        label_only_sampler: PatchSampler | None = None,
        synthesis: SynthesisSetup | None = None,
        unannotated: Mapping[str, Sequence[int]] | None = None,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.unannotated = {name: list(indices) for name, indices in (unannotated or {}).items()}
        self.num_classes = int(num_classes)
        if (label_only_sampler is not None or synthesis is not None) and (synthesis is None or augmenter is None):
            raise ValueError("label-only cases and synthesis need both a SynthesisSetup and an augmenter")
        if label_only_sampler is not None and tuple(label_only_sampler.patch_size) != tuple(sampler.patch_size):
            raise ValueError("the label-only sampler must have the same patch size as the sampler")
        self.label_only_sampler = label_only_sampler
        self.synthesis = synthesis
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = int(rank) if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        self.world_size = (
            int(world_size) if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        )
        if seed < 0 or start_step < 0 or block_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need seed >= 0, start_step >= 0, block_size >= 1 and 0 <= rank < world_size; got seed={seed}, "
                f"start_step={start_step}, block_size={block_size}, rank={self.rank}, world_size={self.world_size}"
            )
        if augmenter is not None and tuple(augmenter.patch_size) != tuple(sampler.patch_size):
            raise ValueError(f"augmenter patch {augmenter.patch_size} != sampler patch {sampler.patch_size}")
        self.sampler = sampler
        self.augmenter = augmenter
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.block_size = int(block_size)

    def global_index(self, index: int) -> int:
        """Position of this rank's sample ``index`` in the run's global stream.

        With per-rank batch B (``block_size``) and W ranks, optimiser step s takes global samples
        s*B*W .. s*B*W + B*W - 1, rank r the r-th block of B of them. So K processes with batch B/K see
        exactly the samples one process with batch B sees, which is what makes DDP runs comparable.
        """
        step, offset = divmod(int(index), self.block_size)
        return (step * self.world_size + self.rank) * self.block_size + offset

    def sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` of this rank's stream (a pure function of seed and its global index)."""
        rng = np.random.default_rng([self.seed, self.global_index(index)])
        size = self.augmenter.region_size if self.augmenter is not None else None
        if self.synthesis is not None:
            return self._sample_with_synthesis(rng, size)
        region = self.sampler.draw(rng, size=size)
        # Labels stay in the case's dtype (uint8) until the patch is cut: the region can be ~10x the patch.
        image_np, labels_np = self.sampler.crop(region, labels_dtype=None)
        if self.augmenter is not None:
            image, labels = self.augmenter(image_np, labels_np, rng)
        else:
            image, labels = torch.from_numpy(image_np), torch.from_numpy(labels_np.astype(np.int64))
        return self._sample_dict(image, labels, self.sampler.cases[region.case_index].name)

    def _sample_with_synthesis(self, rng: np.random.Generator, size) -> dict[str, Any]:
        setup = self.synthesis
        assert setup is not None and self.augmenter is not None
        # One draw decides real vs label-only cases, whether or not both kinds exist (a stable stream).
        from_label_only = rng.random() < setup.options.synthetic_ratio
        sampler = self.sampler
        if self.label_only_sampler is not None and (from_label_only or not len(self.sampler.cases)):
            sampler = self.label_only_sampler
        region = sampler.draw(rng, size=size)
        case = sampler.cases[region.case_index]
        labels_np, tissue_np = sampler.crop_labels(region)
        image_np = sampler.crop(region, labels_dtype=None)[0] if case.image is not None else None
        source = choose_source(setup.options, image_np is not None, tissue_np is not None, rng, setup.priors,
                               setup.intensity, setup.spacing_zyx)
        image, labels = self.augmenter(
            image_np, labels_np, rng, tissue=tissue_np if source is not None else None, intensity_source=source
        )
        return self._sample_dict(image, labels, case.name)

    def _sample_dict(self, image: torch.Tensor, labels: torch.Tensor, case: str) -> dict[str, Any]:
        sample: dict[str, Any] = {"image": image, "labels": labels, "case": case}
        if self.num_classes:
            unannotated = torch.zeros(self.num_classes, dtype=torch.bool)
            unannotated[self.unannotated.get(case, [])] = True
            sample["unannotated"] = unannotated
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for block in itertools.count(worker, workers):
            first = self.start_step + block * self.block_size
            for index in range(first, first + self.block_size):
                yield self.sample(index)


def worker_init_fn(worker_id: int) -> None:
    """One intra-op thread per worker (the workers already use the cores; more threads only contend) and
    global RNGs seeded from (seed, rank, worker) for any code that uses them (the stream itself does not)."""
    torch.set_num_threads(1)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    seed, rank = (dataset.seed, dataset.rank) if isinstance(dataset, PatchDataset) else (0, 0)
    state = np.random.SeedSequence([seed, rank, worker_id, 0x5EED]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def make_loader(
    dataset: PatchDataset, batch_size: int, num_workers: int, pin_memory: bool | None = None
) -> DataLoader:
    """DataLoader of ``batch_size`` patches: persistent workers, ``worker_init_fn``, pinned memory only when CUDA
    is available (default). Uses a copy of ``dataset`` whose ``block_size`` is the batch size."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    dataset = copy.copy(dataset)
    dataset.block_size = batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
    )

"""Data-loading throughput: augmented patches per second of `PatchDataset` with 0, 1 and 2 workers.

A synthetic CT-like case of (z, y, x) = (150, 200, 200) voxels with five organ-like ellipsoids (two of them a
left/right pair), patch (64, 96, 96), default augmentation, batch size 2. Also splits one process's time per
sample into drawing + cropping the (larger) region and augmenting it. Compare with the train step time: the
loader keeps up when samples/s >= batch size / step time.

    python3 -m benchmarks.data_loading
    python3 -m benchmarks.data_loading --samples 80 --workers 0 1 2 --augmentation strong
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from maskmed_core.training.augmentation import Augmenter, augmentation_preset
from maskmed_core.training.cache import PreprocessedCase
from maskmed_core.training.loader import PatchDataset, make_loader
from maskmed_core.training.sampling import PatchSampler


def synthetic_case(shape: tuple[int, int, int], seed: int = 0) -> PreprocessedCase:
    """Body-like image (air -1.5 outside an elliptic cylinder, tissue ~0 inside, noise) with ellipsoid organs."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.indices(shape, dtype=np.float32) / np.array(shape, np.float32)[:, None, None, None]) - 0.5
    body = (y / 0.45) ** 2 + (x / 0.48) ** 2 < 1
    labels = np.zeros(shape, np.uint8)
    # (class, centre z, y, x, radii z, y, x) in fractions of the volume; x increases toward the patient's left.
    organs = [(1, 0.1, 0.0, -0.12, 0.2, 0.15, 0.15), (2, 0.0, 0.15, -0.2, 0.1, 0.05, 0.05),
              (3, 0.0, 0.15, 0.2, 0.1, 0.05, 0.05), (4, 0.05, -0.05, 0.15, 0.12, 0.08, 0.1),
              (5, -0.2, 0.1, 0.0, 0.05, 0.02, 0.02)]
    for cls, cz, cy, cx, rz, ry, rx in organs:
        labels[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] = cls
    image = np.where(body, 0.0, -1.5).astype(np.float32) + labels.astype(np.float32) * 0.2
    image += rng.normal(0, 0.1, shape).astype(np.float32)
    foreground = {}
    for cls in range(1, 6):
        coords = np.argwhere(labels == cls).astype(np.int32)
        foreground[cls] = coords[rng.permutation(len(coords))[:10000]]
    return PreprocessedCase("synthetic", image, labels, foreground, (2.0, 1.5, 1.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(150, 200, 200), help="case size (z, y, x)")
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 96, 96), help="patch size (z, y, x)")
    parser.add_argument("--augmentation", default="default", choices=("default", "strong", "none"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--samples", type=int, default=60, help="samples timed per setting (after a warm-up batch)")
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    args = parser.parse_args()

    case = synthetic_case(tuple(args.shape))
    sampler = PatchSampler([case], args.patch, seed=0)
    augmenter = Augmenter(augmentation_preset(args.augmentation), args.patch, lateral_pairs=[(2, 3)], seed=0)
    dataset = PatchDataset(sampler, augmenter, seed=0, rank=0, world_size=1)
    print(f"case {tuple(args.shape)} (z, y, x), patch {tuple(args.patch)}, augmentation {args.augmentation!r}, "
          f"sampled region {augmenter.region_size}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads in the main process)")

    # Where one process spends its time (main-process thread count).
    crop_s = augment_s = 0.0
    count = max(10, args.samples // 2)
    for index in range(count):
        rng = np.random.default_rng([0, 0, index])
        start = time.perf_counter()
        image, labels = sampler.crop(sampler.draw(rng, size=augmenter.region_size), labels_dtype=None)
        middle = time.perf_counter()
        augmenter(image, labels, rng)
        crop_s += middle - start
        augment_s += time.perf_counter() - middle
    print(f"per sample, one process: draw + crop region {1000 * crop_s / count:.1f} ms, "
          f"augment {1000 * augment_s / count:.1f} ms")

    print(f"\n{'workers':>7} | {'samples/s':>9} | {'ms/sample':>9} | {'first batch s':>13}")
    print(f"{'-' * 7}-+-{'-' * 9}-+-{'-' * 9}-+-{'-' * 13}")
    batches = max(1, args.samples // args.batch_size)
    for workers in args.workers:
        loader = make_loader(dataset, args.batch_size, workers)
        start = time.perf_counter()
        iterator = iter(loader)
        next(iterator)  # worker start-up and first batch
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        elapsed = time.perf_counter() - start
        rate = batches * args.batch_size / elapsed
        print(f"{workers:>7} | {rate:>9.1f} | {1000 / rate:>9.1f} | {first:>13.2f}")
        del iterator, loader  # stops the persistent workers before the next setting


if __name__ == "__main__":
    main()

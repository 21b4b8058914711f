"""Draw docs/synthetic_examples.png: CTs synthesised from label maps beside the real CT of the same subject.

    python recipes/synthetic_examples.py [--data ../shared/data] [-o docs/synthetic_examples.png]

Rows: the training subjects that have a real CT (never the held-out s0009). Columns: the real CT, then three CTs
synthesised from its label map on the same 3 mm grid (one per contrast phase, drawn by
``maskmed_core.training.synthesis.synthesize_ct`` with the training's priors), each as an axial and a coronal
slice through the labelled region's centre, in a soft-tissue window (W 400, L 40).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SUBJECTS = [
    ("native abdomen-pelvis CT (ct/abdomen_ct_3mm)", "ct/abdomen_ct_3mm.nii.gz", "ct/abdomen_ct_3mm_totalseg.nii.gz"),
    ("spine CT (totalseg_subjects/s0003)", "totalseg_subjects/s0003_ct.nii.gz",
     "totalseg_subjects/s0003_totalseg.nii.gz"),
]


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    z, y, _ = centre
    return volume[z], volume[:, y, :][::-1]  # coronal with superior up


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk  # noqa: N813

    from maskmed_core.inference.preprocessing import model_grid_for
    from maskmed_core.io import read_image, to_canonical
    from maskmed_core.training.synthesis import SynthesisPriors, body_tissue_map, draw_phase, synthesize_ct

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs"
                        / "synthetic_examples.png")
    args = parser.parse_args()
    priors = SynthesisPriors.load()
    figure, axes = plt.subplots(2 * len(SUBJECTS), 4, figsize=(13, 6.2 * len(SUBJECTS)))
    for row, (title, image_file, label_file) in enumerate(SUBJECTS):
        canonical = to_canonical(read_image(args.data / image_file))
        grid = model_grid_for(canonical, (3.0, 3.0, 3.0))
        image = sitk.GetArrayFromImage(sitk.Resample(canonical, grid, sitk.Transform(), sitk.sitkLinear, -1024.0,
                                                     sitk.sitkFloat32))
        labels = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(args.data / label_file)), grid,
                                                      sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        tissue = body_tissue_map(labels, (3.0, 3.0, 3.0))
        centre = tuple(int(c) for c in np.argwhere(labels > 0).mean(0))
        columns = [("real CT", image)]
        seed = 0
        for wanted in ("native", "arterial", "portal"):
            while True:  # the first seed whose drawn phase is the wanted one: one column per phase
                generator = torch.Generator().manual_seed(seed)
                phase = draw_phase(torch.Generator().manual_seed(seed))
                seed += 1
                if phase == wanted:
                    break
            drawn = synthesize_ct(torch.from_numpy(tissue), priors, generator, (3.0, 3.0, 3.0),
                                  field_of_view_cut_prob=0.0)
            columns.append((f"synthesised, {drawn.phase} phase", drawn.image.numpy()))
        for column, (name, volume) in enumerate(columns):
            axial, coronal = _views(volume, centre)
            for offset, picture in enumerate((axial, coronal)):
                axis = axes[2 * row + offset, column]
                axis.imshow(np.clip(picture, -160, 240), cmap="gray", interpolation="nearest")
                axis.axis("off")
                if offset == 0:
                    axis.set_title(f"{name}" if column else f"{title}\n{name}", fontsize=9)
    figure.suptitle("CT synthesised from TotalSegmentator label maps (maskmed_core.training.synthesis) next to the "
                    "real CT of the same subject; 3 mm grid, W 400 L 40", fontsize=10)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=70)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

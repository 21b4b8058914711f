"""``Predictor``: a model file + a device -> re-thresholdable results for CT volumes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from maskmed_core.checkpoint import ModelFile, load_model_file
from maskmed_core.classes import SegmentClass, lateral_pairs
from maskmed_core.devices import DeviceError
from maskmed_core.inference.checks import check_memory, check_spacing, check_windows, thin_volume_warning
from maskmed_core.inference.laterality import body_mask, check_mirrored
from maskmed_core.inference.preprocessing import normalize_ct, prepare
from maskmed_core.inference.result import Grid, SegmentationResult
from maskmed_core.inference.sliding_window import ProgressCallback, sliding_window


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA if available, else Apple MPS if available, else CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is usable here; use --device cpu or auto")
    return torch.device(name)


class Predictor:
    """Runs a MaskMed model file on CT volumes.

    ``predict`` returns a ``SegmentationResult``; ``result.label_map(query_threshold, class_threshold)``
    gives the label image on the input grid without running the network again.
    """

    def __init__(self, model_file: ModelFile, device: str | torch.device = "auto", batch_size: int | None = None):
        self.model_file = model_file
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model_file.build_model(self.device)
        self.batch_size = batch_size or (2 if self.device.type == "cuda" else 1)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: str | torch.device = "auto") -> Predictor:
        return cls(load_model_file(path), device)

    @property
    def classes(self) -> list[SegmentClass]:
        return self.model_file.classes

    def predict(
        self,
        image_or_path,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        tta: bool = False,
        series_uid: str | None = None,
    ) -> SegmentationResult:
        """Segment one CT: a SimpleITK image or a path (file or DICOM folder).

        ``progress(fraction, stage)`` is called with stages "reading", "preparing", "inference",
        "finishing"; ``cancel()`` is polled between patches and raises ``InferenceCancelled``.
        With ``tta``, predictions are averaged over mirrors along the axes the model was trained mirrored along
        (``ModelFile.mirror_axes``; all three for most models; left-right mirrors swap lateral classes such as left
        and right kidney back).
        ``result.warnings`` say what the user should check (intensities that are not CT-like, a volume too thin for
        the model's context, an image that looks mirrored left-right: ``inference.laterality``); nothing is changed
        because of them.
        """
        from maskmed_core.io.reading import read_image
        from maskmed_core.io.volume_checks import check_ct_intensities, validate_volume

        def report(fraction: float, stage: str) -> None:
            if progress is not None:
                progress(fraction, stage)

        report(0.0, "reading")
        plans = self.model_file.plans
        num_queries = self.model.head.num_queries

        def check_before_reading(header, name: str) -> None:  # the same checks, on the header of a path
            check_spacing(header, plans)
            check_windows(header, plans)
            check_memory(header, plans, num_queries, len(self.classes))

        if isinstance(image_or_path, (str, os.PathLike, Path)):
            image = read_image(image_or_path, series_uid=series_uid, check_header=check_before_reading)
        else:
            image = image_or_path
            validate_volume(image)
        check_before_reading(image, "the image")
        warnings = [w for w in [check_ct_intensities(image), thin_volume_warning(image, plans)] if w]
        mirror_axes = self.model_file.mirror_axes if tta else ()
        if tta and not mirror_axes:
            warnings.append("this model was trained without mirrored images, so test-time augmentation has no mirror "
                            "to average: one pass was run")
        report(0.0, "preparing")
        prepared = prepare(image, plans)
        pad_value = float(normalize_ct(np.array([plans.intensity.clip_low]), plans.intensity)[0])
        stitched = sliding_window(
            self.model,
            prepared.array,
            plans.patch_size,
            overlap=plans.overlap,
            batch_size=self.batch_size,
            device=self.device,
            mirror_axes=mirror_axes,
            lateral_pairs=lateral_pairs(self.classes),
            pad_value=pad_value,
            progress=lambda f, stage: report(f, stage),
            cancel=cancel,
        )
        report(1.0, "finishing")
        masks = stitched.masks
        masks *= 255.0  # in place: the float maps are the largest buffer of a run
        np.rint(masks, out=masks)
        result = SegmentationResult(
            masks=masks.astype(np.uint8),
            class_given_object=stitched.class_given_object,
            objectness=stitched.objectness,
            classes=list(self.classes),
            model_grid=Grid.of(prepared.model_grid),
            canonical_grid=Grid.of(prepared.canonical),
            input_grid=Grid.of(image),
            warnings=warnings,
        )
        # The float stitched maps go first: the check builds the result's float copy of the masks (which the label
        # map reuses), and the two together would raise the run's peak memory.
        del stitched, masks
        # Never flipped here: a situs inversus looks the same, and only the user knows which it is.
        mirrored = check_mirrored(result, body_mask(prepared.array, plans.intensity))
        if mirrored:
            result.warnings.append(mirrored)
        return result

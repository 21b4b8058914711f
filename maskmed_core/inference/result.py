"""A re-thresholdable segmentation result: change the two confidence thresholds without the network.

It holds the stitched volume-level queries (see ``sliding_window``) on the model grid, quantised to
uint8 (Q x voxels bytes, e.g. 90 MB for 32 queries on a 512 x 512 x 300 CT resampled to 3 mm), their
class distributions, and the three grids needed to go back to the input: model grid -> canonical
input grid (nearest neighbour, separable because both share a direction) -> input grid (permute/flip).
It is saved to and loaded from a safetensors file (no pickle), so a child process can hand it over.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskmed_core.atomic import write_safetensors
from maskmed_core.classes import SegmentClass
from maskmed_core.inference.postprocessing import keep_largest_components
from maskmed_core.model.semantic import DEFAULT_CLASS_THRESHOLD, DEFAULT_QUERY_THRESHOLD

RESULT_FORMAT = "maskmed-result"
RESULT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Grid:
    """Geometry of a SimpleITK image: size and spacing in (x, y, z) index order, mm, LPS physical space."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image) -> Grid:
        return cls(
            tuple(int(v) for v in image.GetSize()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetDirection()),
        )

    def empty_image(self, pixel_type: int | None = None):
        import SimpleITK as sitk  # noqa: N813

        image = sitk.Image(list(self.size), sitk.sitkUInt8 if pixel_type is None else pixel_type)
        self.apply(image)
        return image

    def apply(self, image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class ClassStatistics:
    """Per class on the input grid: volume (mL) and mean winning probability over its voxels."""

    label: int
    name: str
    voxels: int
    volume_ml: float
    mean_confidence: float


def class_statistics(
    classes, input_counts: np.ndarray, confidence_sums: np.ndarray, model_counts: np.ndarray, voxel_ml: float
) -> list[ClassStatistics]:
    """ClassStatistics of every class from per-label bincounts: voxels on the input grid, and the sum of the
    winning probability and the voxel count on the model grid (the mean confidence is their ratio)."""
    return [
        ClassStatistics(
            label=c.label,
            name=c.name,
            voxels=int(input_counts[c.label]),
            volume_ml=float(input_counts[c.label] * voxel_ml),
            mean_confidence=float(confidence_sums[c.label] / model_counts[c.label]) if model_counts[c.label] else 0.0,
        )
        for c in classes
    ]


@dataclass
class SegmentationResult:
    """Volume-level queries on the model grid plus the geometry to return to the input grid.

    masks: (Q, z, y, x) uint8, objectness-weighted mask probability * 255; class_given_object: (Q, C);
    objectness: (Q,). Query q's confidence is ``objectness[q] * max_c class_given_object[q, c]``.
    """

    masks: np.ndarray
    class_given_object: np.ndarray
    objectness: np.ndarray
    classes: list[SegmentClass]
    model_grid: Grid
    canonical_grid: Grid
    input_grid: Grid
    warnings: list[str] = field(default_factory=list)
    _float_masks: torch.Tensor | None = field(default=None, repr=False)

    # ----- thresholds -----------------------------------------------------------------------------
    def query_confidence(self) -> np.ndarray:
        """(Q,) best real-class probability of each volume-level query."""
        return self.objectness * self.class_given_object.max(1)

    def query_classes(self) -> np.ndarray:
        """(Q,) index (0..C-1) of each query's best class."""
        return self.class_given_object.argmax(1)

    def _masks_float(self) -> torch.Tensor:
        # Cached float32 copy (Q x voxels x 4 bytes): the product below then runs as one BLAS call.
        if self._float_masks is None:
            self._float_masks = torch.from_numpy(self.masks).float().div_(255.0)
        return self._float_masks

    def class_probabilities(
        self, query_threshold: float = DEFAULT_QUERY_THRESHOLD, columns: list[int] | None = None
    ) -> torch.Tensor:
        """(C, z, y, x) float32 on the model grid: p_c(x) = sum over kept queries of r_q[c] * M_q(x); with
        ``columns`` (class indices 0..C-1) only those classes, in that order (len(columns), z, y, x)."""
        return stitched_class_probabilities(
            self._masks_float(), self.class_given_object, self.objectness, query_threshold, columns
        )

    def model_labels(
        self,
        query_threshold: float = DEFAULT_QUERY_THRESHOLD,
        class_threshold: float = DEFAULT_CLASS_THRESHOLD,
        largest_component: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels (z, y, x) with class label values (uint8, or uint16 past 255), winning probability) on the
        model grid. ``largest_component``: each class keeps only its largest connected piece (``postprocessing``)."""
        best, index = self.class_probabilities(query_threshold).max(0)
        lookup = torch.tensor([0] + [c.label for c in self.classes], dtype=torch.int32)
        labels = torch.where(best >= class_threshold, lookup[index + 1], torch.zeros_like(index, dtype=torch.int32))
        dtype = np.uint8 if max(c.label for c in self.classes) < 256 else np.uint16
        model_labels = labels.numpy().astype(dtype)
        if largest_component:
            model_labels = keep_largest_components(model_labels)
        # p_c is a sum over queries and can pass 1 where queries agree; report it as a probability.
        return model_labels, best.clamp_(max=1.0).numpy()

    def label_map(
        self,
        query_threshold: float = DEFAULT_QUERY_THRESHOLD,
        class_threshold: float = DEFAULT_CLASS_THRESHOLD,
        largest_component: bool = False,
    ):
        """SimpleITK label image on the input's exact grid (size, spacing, origin, direction)."""
        labels, _ = self.model_labels(query_threshold, class_threshold, largest_component)
        return self.to_input_grid(labels)

    def to_input_grid(self, model_array: np.ndarray):
        """A (z, y, x) array on the model grid -> SimpleITK image on the input grid (nearest neighbour).

        One separable gather straight onto the input grid (the reorientation folded into its index
        arrays), then the input grid's geometry copied exactly.
        """
        import SimpleITK as sitk  # noqa: N813

        image = sitk.GetImageFromArray(_nearest_resample(model_array, self.model_grid, self.input_grid))
        self.input_grid.apply(image)
        return image

    def statistics(
        self,
        query_threshold: float = DEFAULT_QUERY_THRESHOLD,
        class_threshold: float = DEFAULT_CLASS_THRESHOLD,
        largest_component: bool = False,
    ) -> list[ClassStatistics]:
        """Volume (mL, counted on the input grid) and mean winning probability of every class."""
        labels, best = self.model_labels(query_threshold, class_threshold, largest_component)
        on_input = _nearest_resample(labels, self.model_grid, self.input_grid)
        counts = np.bincount(on_input.ravel(), minlength=max(c.label for c in self.classes) + 1)
        sums = np.bincount(labels.ravel(), weights=best.ravel(), minlength=counts.size)
        model_counts = np.bincount(labels.ravel(), minlength=counts.size)
        return class_statistics(self.classes, counts, sums, model_counts, self.input_grid.voxel_volume_ml)

    # ----- file ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to a safetensors file atomically (a kill -9 mid-write leaves only a temporary that
        :func:`maskmed_core.atomic.remove_stale_temporaries` knows)."""
        path = Path(path)
        metadata = {
            "format": RESULT_FORMAT,
            "format_version": str(RESULT_FORMAT_VERSION),
            "classes": json.dumps([c.to_dict() for c in self.classes]),
            "grids": json.dumps(
                {name: getattr(self, name).__dict__ for name in ("model_grid", "canonical_grid", "input_grid")}
            ),
            "warnings": json.dumps(self.warnings),
        }
        tensors = {
            "masks": np.ascontiguousarray(self.masks),
            "class_given_object": np.ascontiguousarray(self.class_given_object, dtype=np.float32),
            "objectness": np.ascontiguousarray(self.objectness, dtype=np.float32),
        }
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> SegmentationResult:
        """Read a result file, trusting nothing in it: the metadata and the tensor shapes are checked from the
        header (classes as in model files, grids with sane geometry, shapes consistent, the memory that
        thresholding will take within the budget) before any tensor is read. Raises ResultFileError."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        from maskmed_core.untrusted import UntrustedValueError

        path = Path(path)
        try:
            with safe_open(str(path), framework="np") as handle:
                metadata: dict[str, Any] = dict(handle.metadata() or {})
                shapes = {
                    key: (str(handle.get_slice(key).get_dtype()), tuple(handle.get_slice(key).get_shape()))
                    for key in handle.keys()  # noqa: SIM118 (a safe_open handle is not iterable)
                }
        except Exception as error:
            raise ResultFileError(f"{path} is not a readable MaskMed result file ({str(error)[:200]})") from error
        if metadata.get("format") != RESULT_FORMAT:
            raise ResultFileError(f"{path} is not a MaskMed result file")
        try:
            if int(metadata.get("format_version", "0")) > RESULT_FORMAT_VERSION:
                raise ResultFileError(f"{path} was written by a newer maskmed_core; update it to read this result")
            classes, grids, warnings = _check_result_metadata(metadata, shapes)
        except (UntrustedValueError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, ResultFileError):
                raise
            raise ResultFileError(f"{path} has invalid result metadata ({error}); segment the image again") from error
        try:
            tensors = load_file(str(path))
        except Exception as error:
            raise ResultFileError(f"{path} is damaged: its data cannot be read ({str(error)[:200]})") from error
        for key in ("class_given_object", "objectness"):
            values = tensors[key]
            # Probabilities; 1e-3 of slack for float rounding in the stitching.
            in_range = values.min(initial=0.0) >= -1e-3 and values.max(initial=0.0) <= 1.001
            if not (np.isfinite(values).all() and in_range):
                raise ResultFileError(f"{path} has {key} values outside 0..1 or not finite; segment the image again")
        return cls(
            masks=tensors["masks"],
            class_given_object=tensors["class_given_object"],
            objectness=tensors["objectness"],
            classes=classes,
            model_grid=grids["model_grid"],
            canonical_grid=grids["canonical_grid"],
            input_grid=grids["input_grid"],
            warnings=warnings,
        )


class ResultFileError(ValueError):
    """A result file that cannot be used (foreign, damaged, hostile); the message says why. Like ModelFileError,
    a bad-model-file kind of error (exit 4)."""


# A result's grids: at most this many voxels each (2048^3 is far beyond any CT), geometry as image headers.
MAX_GRID_VOXELS = 2048**3


def _check_result_metadata(
    metadata: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...]]]
) -> tuple[list[SegmentClass], dict[str, Grid], list[str]]:
    """Classes, grids and warnings of a result file's metadata, checked against each other and the tensor shapes;
    raises UntrustedValueError (naming the field) or ResultFileError."""
    classes = _checked_classes(metadata)
    grids = _checked_grids(metadata)
    warnings = _checked_warnings(metadata)
    queries = _check_tensor_shapes(shapes, grids["model_grid"], len(classes))
    _check_grids_cover_one_box(grids)
    _check_threshold_memory(grids, queries, len(classes))
    return classes, grids, warnings


def _checked_classes(metadata: dict[str, Any]) -> list[SegmentClass]:
    """The "classes" field: 1 to 1000 valid, distinct classes."""
    from maskmed_core.classes import validate_classes
    from maskmed_core.untrusted import check_sequence, load_json

    class_list = check_sequence(load_json(metadata["classes"], "classes"), "classes", 1, 1000)
    classes = [SegmentClass.from_dict(c, f"classes[{i}]") for i, c in enumerate(class_list)]
    validate_classes(classes)
    return classes


def _checked_grids(metadata: dict[str, Any]) -> dict[str, Grid]:
    """The "grids" field: the model, canonical and input grids, each present and checked by :func:`_checked_grid`."""
    from maskmed_core.untrusted import UntrustedValueError, load_json

    grid_data = load_json(metadata["grids"], "grids")
    grids = {}
    for name in ("model_grid", "canonical_grid", "input_grid"):
        data = grid_data.get(name) if isinstance(grid_data, dict) else None
        if not isinstance(data, dict):
            raise UntrustedValueError(f"grids.{name}", "missing")
        grids[name] = _checked_grid(name, data)
    return grids


def _checked_grid(name: str, data: dict[str, Any]) -> Grid:
    """One grid: size 3 x 1..65536 voxels (MAX_GRID_VOXELS in all), spacing 1e-3..1e3 mm, origin within 1e7 mm, a
    rotation as direction."""
    from maskmed_core.untrusted import UntrustedValueError, check_int, check_number, check_sequence

    size = [check_int(v, f"grids.{name}.size[{i}]", 1, 1 << 16)
            for i, v in enumerate(check_sequence(data.get("size"), f"grids.{name}.size", 3, 3))]
    if math.prod(size) > MAX_GRID_VOXELS:
        raise UntrustedValueError(f"grids.{name}.size", f"{size}: more than {MAX_GRID_VOXELS:,} voxels")
    spacing = [check_number(v, f"grids.{name}.spacing[{i}]", 1e-3, 1e3)
               for i, v in enumerate(check_sequence(data.get("spacing"), f"grids.{name}.spacing", 3, 3))]
    origin = [check_number(v, f"grids.{name}.origin[{i}]", -1e7, 1e7)
              for i, v in enumerate(check_sequence(data.get("origin"), f"grids.{name}.origin", 3, 3))]
    direction = [check_number(v, f"grids.{name}.direction[{i}]", -1.0, 1.0)
                 for i, v in enumerate(check_sequence(data.get("direction"), f"grids.{name}.direction", 9, 9))]
    matrix = np.array(direction).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-3):
        raise UntrustedValueError(f"grids.{name}.direction", "not a rotation (sheared or scaled axes)")
    return Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction))  # type: ignore[arg-type]


def _checked_warnings(metadata: dict[str, Any]) -> list[str]:
    """The optional "warnings" field: at most 100 texts of at most 2000 characters."""
    from maskmed_core.untrusted import check_sequence, check_text, load_json

    return [check_text(w, f"warnings[{i}]", 2000)
            for i, w in enumerate(check_sequence(load_json(metadata.get("warnings", "[]"), "warnings"),
                                                 "warnings", 0, 100))]


def _check_tensor_shapes(
    shapes: dict[str, tuple[str, tuple[int, ...]]], model_grid: Grid, num_classes: int
) -> int:
    """The number of queries Q, after checking the tensors: masks (Q, z, y, x) uint8 on the model grid,
    class_given_object (Q, C) and objectness (Q,) float32."""
    from maskmed_core.untrusted import UntrustedValueError

    expected = {"masks": "U8", "class_given_object": "F32", "objectness": "F32"}
    if set(shapes) != set(expected) or any(shapes[k][0] != dtype for k, dtype in expected.items()):
        found = ", ".join(f"{k} {v[0]}" for k, v in sorted(shapes.items()))
        wanted = "masks U8, class_given_object F32, objectness F32"
        raise UntrustedValueError("tensors", f"expected {wanted}; found {found}")
    queries = len(shapes["objectness"][1]) == 1 and shapes["objectness"][1][0]
    model_size = tuple(model_grid.size[::-1])
    if not queries or shapes["masks"][1] != (queries, *model_size):
        raise UntrustedValueError("masks", f"shape {shapes['masks'][1]}, expected ({queries}, {model_size}) from the "
                                  "model grid and the number of queries")
    if shapes["class_given_object"][1] != (queries, num_classes):
        raise UntrustedValueError("class_given_object", f"shape {shapes['class_given_object'][1]}, expected "
                                  f"({queries}, {num_classes}): one column per class")
    return int(queries)


def _check_grids_cover_one_box(grids: dict[str, Grid]) -> None:
    """UntrustedValueError unless the three grids describe one volume, as ``Predictor.predict`` writes them: the
    canonical grid is the input reoriented (the same voxels, its box's sides in another order) and the model grid,
    whose masks the file holds, covers the canonical box within one model voxel per axis (``model_grid_for`` rounds
    the size). So the input grid the label map is put back on is bounded by what the file holds, not by its claim."""
    from maskmed_core.untrusted import UntrustedValueError

    def sides(grid: Grid) -> list[float]:  # the box's side lengths (mm), in (x, y, z) index order
        return [n * s for n, s in zip(grid.size, grid.spacing, strict=True)]

    model, canonical, given = grids["model_grid"], grids["canonical_grid"], grids["input_grid"]
    if math.prod(given.size) != math.prod(canonical.size) or not np.allclose(
        sorted(sides(given)), sorted(sides(canonical)), rtol=1e-4, atol=1e-3
    ):
        raise UntrustedValueError("grids.input_grid", f"size {list(given.size)} at {list(given.spacing)} mm is not the "
                                  f"canonical grid's {list(canonical.size)} at {list(canonical.spacing)} mm reoriented")
    for axis, (have, covered, step) in enumerate(zip(sides(canonical), sides(model), model.spacing, strict=True)):
        if abs(have - covered) > step * 1.001:
            raise UntrustedValueError(
                "grids.canonical_grid", f"{have:.1f} mm along axis {'xyz'[axis]}, but the masks this file holds cover "
                f"{covered:.1f} mm on the model grid ({model.size[axis]} voxels of {step:g} mm): the grids claim a "
                "volume the file does not hold")


def _check_threshold_memory(grids: dict[str, Grid], queries: int, num_classes: int) -> None:
    """UntrustedValueError when re-thresholding the result would need more than the memory budget."""
    from maskmed_core.untrusted import UntrustedValueError, memory_budget_bytes

    # Thresholding holds the uint8 masks, their float32 copy and the C class maps on the model grid, and an int32
    # label map with a copy on the input grid.
    model_voxels, input_voxels = math.prod(grids["model_grid"].size), math.prod(grids["input_grid"].size)
    needed = model_voxels * (queries * 5 + num_classes * 4) + input_voxels * 8
    budget = memory_budget_bytes()
    if needed > budget:
        raise UntrustedValueError("grids", f"thresholding this result needs {needed / 2**30:.1f} GiB, more than the "
                                  f"{budget / 2**30:.1f} GiB memory budget")


def stitched_class_probabilities(
    masks: torch.Tensor,
    class_given_object: np.ndarray,
    objectness: np.ndarray,
    query_threshold: float,
    columns: list[int] | None = None,
) -> torch.Tensor:
    """Semantic inference on volume-level queries: masks (Q, z, y, x) float in [0, 1] -> (C, z, y, x).

    p_c(x) = sum over queries q with confidence objectness[q] * max_c r_q[c] >= query_threshold of
    r_q[c] * M_q(x); one BLAS product over the kept queries. ``columns``: only those classes (indices into C), in
    that order; which queries are kept still depends on all classes.
    """
    kept = np.flatnonzero(objectness * class_given_object.max(1) >= query_threshold)
    if columns is not None:
        class_given_object = class_given_object[:, columns]
    spatial = masks.shape[1:]
    num_classes = class_given_object.shape[1]
    if kept.size == 0:
        return torch.zeros((num_classes, *spatial))
    if 2 * kept.size >= masks.shape[0]:
        # Most queries kept: zero the weights of the dropped ones rather than copy the kept masks.
        weights = np.zeros_like(class_given_object, dtype=np.float32)
        weights[kept] = class_given_object[kept]
        selected = masks
    else:
        weights = np.ascontiguousarray(class_given_object[kept], dtype=np.float32)
        selected = masks[torch.from_numpy(kept)]
    flat = selected.reshape(selected.shape[0], -1)
    return (torch.from_numpy(weights).T @ flat).reshape(num_classes, *spatial)


def _nearest_resample(array: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Nearest-neighbour resampling of a (z, y, x) array from ``source`` onto ``target``'s (z, y, x) array.

    The target's direction must be the source's up to an axis permutation and flips (true of the input
    grid and the canonical model grid, which ``to_canonical`` relates by exactly that). Then each source
    index depends on one target axis only, so the whole resampling is three ``np.take`` with 1-D index
    arrays and a transpose, with no 3-D coordinate arrays. Target voxels whose nearest source voxel is
    outside the source get 0.
    """
    source_direction = np.array(source.direction).reshape(3, 3)
    target_direction = np.array(target.direction).reshape(3, 3)
    relation = source_direction.T @ target_direction  # [a, b]: +-1 where source axis a runs along target axis b
    target_axis_of = np.abs(relation).argmax(1)
    if sorted(target_axis_of.tolist()) != [0, 1, 2] or not np.allclose(np.abs(relation).max(1), 1.0, atol=1e-3):
        raise ValueError("the two grids are not related by an axis permutation and flips")
    offset = source_direction.T @ (np.array(target.origin) - np.array(source.origin))  # mm along source axes
    result = np.pad(array, 1)  # index 0 and -1: the zero border for target voxels outside the source
    for axis in range(3):  # source index axis (x, y, z); numpy axis 2 - axis
        along = int(target_axis_of[axis])
        sign = relation[axis, along]
        steps = np.arange(target.size[along]) * target.spacing[along] * sign
        index = np.floor((offset[axis] + steps) / source.spacing[axis] + 0.5).astype(np.int64)
        inside = (index >= 0) & (index < source.size[axis])
        result = np.take(result, np.where(inside, index + 1, 0), axis=2 - axis)
    # numpy axis 2 - a of ``result`` runs along target axis target_axis_of[a]; reorder to target (z, y, x).
    source_axis_of = np.argsort(target_axis_of)
    return np.ascontiguousarray(result.transpose([2 - int(source_axis_of[2 - t]) for t in range(3)]))

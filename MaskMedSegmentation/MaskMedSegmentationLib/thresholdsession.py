# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Live re-thresholding of one MaskMed result: the two sliders, the class table, the query table.

A ThresholdSession holds the re-thresholdable result (``SegmentationResult``: the stitched object queries on
the model grid, loaded into memory, so the file may be deleted afterwards) and the label map currently shown.
Moving a slider recomputes the label map (no network), finds the classes whose voxels changed and rewrites
only those, in place, in the segmentation's MaskMed layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813

from .segmentationwriter import (
    QUERY_SEGMENT_ID_PREFIX,
    clearSegments,
    patchClassLayer,
    segmentIdForClass,
    setBinarySegment,
    updateSegmentationFromLabelImage,
)
from .volumeio import gridMatchesVolume, labelArrayOnVolumeGrid


@dataclass(frozen=True)
class TableRow:
    """One row of a table in the panel: ``key`` (what the row's check box stands for), the texts of the cells after
    the check box, and a colour swatch (RGB 0..255) between the two, or None."""

    key: int
    texts: tuple[str, ...]
    color: tuple[int, ...] | None = None


class ThresholdSession:
    """Re-threshold a saved MaskMed result into a segmentation node.

    resultPath: a ``<case>.maskmed-result`` file written by ``maskmed predict --save-result`` for this volume.
    segmentationNode: where the class segments go. volumeNode: the volume that was segmented (its grid is the
    result's input grid).

    Speed (a slider must feel live on a 512 x 512 x 300 CT): labels are compared on the model grid (e.g.
    137 x 137 x 150 voxels at 3 mm, 28x fewer than the input grid); only the box of the input grid that the
    changed model voxels reach is resampled, and only the voxels whose label changed are written, in place.
    The nearest-neighbour mapping model grid -> input grid is maskmed_core's (``SegmentationResult.to_input_grid``),
    factored per axis here (``InputGridMap``) and checked against it on the first update: if the two ever
    disagree, every update takes the full, exact path through ``result.label_map``.
    """

    def __init__(self, resultPath: str | Path, segmentationNode, volumeNode):
        from maskmed_core.inference.result import SegmentationResult

        self.resultPath = Path(resultPath)
        self.result = SegmentationResult.load(self.resultPath)
        self.segmentationNode = segmentationNode
        self.volumeNode = volumeNode
        self.classes = list(self.result.classes)
        self.queryThreshold: float | None = None
        self.classThreshold: float | None = None
        self.largestComponent = False
        self._modelLabels: np.ndarray | None = None  # (z, y, x) model-grid labels now shown in the node
        self._best: np.ndarray | None = None  # their winning class probability (for classTable)
        grid = self.result.input_grid
        self._map: InputGridMap | None = None
        # The fast path writes input-grid boxes straight into the volume's [k, j, i] voxels: only when they agree.
        if gridMatchesVolume(grid.size, grid.origin, grid.spacing, grid.direction, volumeNode):
            try:
                self._map = InputGridMap(self.result.model_grid, grid)
            except ValueError:
                self._map = None
        self._mapChecked = False
        self._statistics: dict[tuple[float, float, bool], list] = {}
        self._queryNodes: dict[int, object] = {}

    # ----- sliders ---------------------------------------------------------------------------------------
    def update(self, queryThreshold: float, classThreshold: float, largestComponent: bool = False) -> list[str]:
        """Show the label map for these thresholds; returns the IDs of the segments whose voxels changed.

        largestComponent: each class keeps only its largest connected piece (``maskmed predict
        --largest-component``). The first call writes every class segment. Later calls find the voxels whose label
        changed and rewrite only those (an empty list: nothing changed, nothing was written).
        """
        modelLabels, best = self.result.model_labels(queryThreshold, classThreshold, largestComponent)
        settings = (queryThreshold, classThreshold, largestComponent)
        previous = self._modelLabels
        if previous is not None and self._map is not None and self._mapChecked:
            written = self._patch(previous, modelLabels)
            if written is not None:
                self._remember(modelLabels, best, *settings)
                return written
        # Full path: the first update, a layer that cannot be patched (segments deleted or moved), no map.
        image = self.result.to_input_grid(modelLabels)
        changed = None
        if previous is not None:
            changed = _changedLabels(previous, modelLabels, None)
            existing = set(self.segmentationNode.GetSegmentation().GetSegmentIDs())
            changed |= {c.label for c in self.classes if segmentIdForClass(c.label) not in existing}
        written = updateSegmentationFromLabelImage(
            self.segmentationNode, image, self.classes, self.volumeNode, onlyClasses=changed
        )
        if self._map is not None and not self._mapChecked:
            same = np.array_equal(self._map.gather(modelLabels), sitk.GetArrayViewFromImage(image))
            self._map, self._mapChecked = (self._map, True) if same else (None, False)
        self._remember(modelLabels, best, *settings)
        return written

    def _patch(self, previous: np.ndarray, modelLabels: np.ndarray) -> list[str] | None:
        """Write only the changed voxels; the changed segment IDs, or None if the layer cannot be patched."""
        assert self._map is not None
        diff = (previous != modelLabels) & self._map.sampled()
        changed = _changedLabels(previous, modelLabels, diff)
        if not changed:
            return []
        box, modelBox = self._map.inputBox(diff, withModelBox=True)
        values = self._map.gather(modelLabels, box, buffer="values")
        mask = None
        if not (diff | ~self._map.sampled())[modelBox].all():  # else every voxel of the box changed: no mask
            mask = self._map.gather(diff.view(np.uint8), box, buffer="mask").view(bool)
        if not patchClassLayer(self.segmentationNode, self.classes, self.volumeNode, box, values, mask):
            return None
        return [segmentIdForClass(c.label) for c in self.classes if c.label in changed]

    def _remember(self, modelLabels, best, queryThreshold, classThreshold, largestComponent) -> None:
        self._modelLabels, self._best = modelLabels, best
        self.queryThreshold, self.classThreshold = float(queryThreshold), float(classThreshold)
        self.largestComponent = bool(largestComponent)

    # ----- tables ----------------------------------------------------------------------------------------
    def statistics(self, queryThreshold: float, classThreshold: float, largestComponent: bool = False) -> list:
        """maskmed_core ClassStatistics per class (volumes counted on the input grid).

        For the settings now shown this is computed from the model-grid labels already at hand, each model
        voxel weighted by how many input voxels sample it (exactly ``result.statistics``, ~100x less work);
        other settings go through ``result.statistics`` (cached).
        """
        key = (float(queryThreshold), float(classThreshold), bool(largestComponent))
        current = (self.queryThreshold, self.classThreshold, self.largestComponent)
        if key == current and self._modelLabels is not None and self._map is not None and self._mapChecked:
            return self._fastStatistics()
        if key not in self._statistics:
            if len(self._statistics) > 8:
                self._statistics.clear()
            self._statistics[key] = self.result.statistics(*key)
        return self._statistics[key]

    def _fastStatistics(self) -> list:
        from maskmed_core.inference.result import class_statistics

        assert self._map is not None and self._modelLabels is not None and self._best is not None
        labels = self._modelLabels.ravel()
        size = max(c.label for c in self.classes) + 1
        counts = np.rint(np.bincount(labels, weights=self._map.multiplicity().ravel(), minlength=size))
        sums = np.bincount(labels, weights=self._best.ravel(), minlength=size)
        modelCounts = np.bincount(labels, minlength=size)
        return class_statistics(self.classes, counts, sums, modelCounts, self.result.input_grid.voxel_volume_ml)

    def classTable(self, queryThreshold: float, classThreshold: float, largestComponent: bool = False) -> list[dict]:
        """One row per class: label, name, color (0..255 RGB), volumeMl (mL on the input grid), meanConfidence
        (mean winning class probability over the class's voxels, 0..1; 0 for an empty class)."""
        colors = {c.label: tuple(c.color) for c in self.classes}
        return [
            {
                "label": s.label,
                "name": s.name,
                "color": colors.get(s.label, (128, 128, 128)),
                "volumeMl": float(s.volume_ml),
                "meanConfidence": float(s.mean_confidence),
            }
            for s in self.statistics(queryThreshold, classThreshold, largestComponent)
        ]

    def queryTable(self, queryThreshold: float) -> list[dict]:
        """Every object query, most confident first: index, className, confidence (objectness x best class
        probability, 0..1), kept (confidence >= queryThreshold: the query "fired" and contributes to the
        label map)."""
        confidence = np.asarray(self.result.query_confidence(), dtype=float)
        best = np.asarray(self.result.query_classes())
        order = np.argsort(-confidence, kind="stable")
        return [
            {
                "index": int(q),
                "className": self.classes[int(best[q])].name,
                "confidence": float(confidence[q]),
                "kept": bool(confidence[q] >= queryThreshold),
            }
            for q in order
        ]

    def classRows(self, queryThreshold: float, classThreshold: float, largestComponent: bool = False) -> list[TableRow]:
        """The panel's class table: key = label value; texts: name, volume (mL, 1 decimal), mean confidence (2
        decimals; "-" for an empty class, whose mean is undefined)."""
        return [TableRow(int(row["label"]), (str(row["name"]), f"{row['volumeMl']:.1f}",
                                             f"{row['meanConfidence']:.2f}" if row["volumeMl"] > 0 else "-"),
                         tuple(int(v) for v in row["color"]))
                for row in self.classTable(queryThreshold, classThreshold, largestComponent)]

    def queryRows(self, queryThreshold: float) -> list[TableRow]:
        """The panel's query table, most confident first: key = query index; texts: index, class, confidence,
        kept ("yes"/"no")."""
        return [TableRow(row["index"], (str(row["index"]), row["className"], f"{row['confidence']:.2f}",
                                        "yes" if row["kept"] else "no"))
                for row in self.queryTable(queryThreshold)]

    # ----- single queries ----------------------------------------------------------------------------------
    def queryMaskImage(self, index: int):
        """SimpleITK 0/1 uint8 image on the input grid: query ``index``'s own mask, thresholded at 0.5.

        ``result.masks[index]`` is the stitched, objectness-weighted mask probability x 255 on the model grid
        (z, y, x); >= 128 is >= 0.5. It is brought to the input grid by nearest neighbour.
        """
        count = self.result.masks.shape[0]
        if not 0 <= index < count:
            raise IndexError(f"query {index} does not exist (this result has {count} queries)")
        mask = (self.result.masks[index] >= 128).astype(np.uint8)
        return self.result.to_input_grid(mask)

    def querySegmentId(self, index: int) -> str:
        return f"{QUERY_SEGMENT_ID_PREFIX}{int(index)}"

    def showQuery(self, index: int, segmentationNode=None) -> str:
        """Show query ``index`` as its own segment "query <i>: <class>" (in ``segmentationNode``, default the
        session's node), in a layer of its own because it overlaps the class segments; returns its ID."""
        node = segmentationNode or self.segmentationNode
        classIndex = int(np.asarray(self.result.query_classes())[index])
        segmentClass = self.classes[classIndex]
        image = self.queryMaskImage(index)  # kept alive while ``mask`` (possibly a view of it) is used
        mask = labelArrayOnVolumeGrid(image, self.volumeNode)
        red, green, blue = (min(1.0, c / 255.0 * 0.6 + 0.4) for c in segmentClass.color)  # lighter than the class
        color = (red, green, blue)
        segmentId = setBinarySegment(
            node, self.querySegmentId(index), mask, self.volumeNode, f"query {index}: {segmentClass.name}", color
        )
        self._queryNodes[index] = node
        return segmentId

    def hideQuery(self, index: int, segmentationNode=None) -> None:
        """Remove the segment that showQuery(index) added (nothing happens if it is not shown)."""
        node = segmentationNode or self._queryNodes.pop(index, None) or self.segmentationNode
        clearSegments(node, [self.querySegmentId(index)])

    def hideAllQueries(self) -> None:
        for index in list(self._queryNodes):
            self.hideQuery(index)


def _changedLabels(previous: np.ndarray, labels: np.ndarray, diff: np.ndarray | None) -> set[int]:
    """Label values (background excluded) that gained or lost voxels; ``diff``: where they differ (None: all)."""
    if diff is None:
        diff = previous != labels
    size = int(max(previous.max(initial=0), labels.max(initial=0))) + 1
    present = (np.bincount(previous[diff], minlength=size) > 0) | (np.bincount(labels[diff], minlength=size) > 0)
    present[0] = False
    return {int(v) for v in np.flatnonzero(present)}


class InputGridMap:
    """maskmed_core's nearest-neighbour mapping model grid -> input grid, factored per axis.

    The two grids share a direction up to an axis permutation and flips (maskmed_core reorients the input to
    its canonical order), so each input voxel index along one axis picks the model voxel index along one model
    axis: ``index[a][t]`` is the model index along model axis a (x=0, y=1, z=2) for input index t along input
    axis ``targetAxisOf[a]``, -1 outside the model grid (label 0). The formulas are those of
    ``maskmed_core.inference.result._nearest_resample`` (same float operations in the same order); the session
    checks the two against each other before trusting this class.
    """

    def __init__(self, source, target):
        sourceDirection = np.array(source.direction).reshape(3, 3)
        targetDirection = np.array(target.direction).reshape(3, 3)
        relation = sourceDirection.T @ targetDirection
        targetAxisOf = np.abs(relation).argmax(1)
        if sorted(targetAxisOf.tolist()) != [0, 1, 2] or not np.allclose(np.abs(relation).max(1), 1.0, atol=1e-3):
            raise ValueError("the two grids are not related by an axis permutation and flips")
        offset = sourceDirection.T @ (np.array(target.origin) - np.array(source.origin))
        self.sourceSize = tuple(int(v) for v in source.size)  # (x, y, z)
        self.targetSize = tuple(int(v) for v in target.size)
        self.targetAxisOf = [int(v) for v in targetAxisOf]
        self.index: list[np.ndarray] = []
        for axis in range(3):
            along = self.targetAxisOf[axis]
            sign = relation[axis, along]
            steps = np.arange(target.size[along]) * target.spacing[along] * sign
            index = np.floor((offset[axis] + steps) / source.spacing[axis] + 0.5).astype(np.int64)
            inside = (index >= 0) & (index < source.size[axis])
            self.index.append(np.where(inside, index, -1))
        self._sampled: np.ndarray | None = None
        self._multiplicity: np.ndarray | None = None
        self._buffers: dict[str, np.ndarray] = {}

    def _perAxisCounts(self) -> list[np.ndarray]:
        """For each model axis a (x, y, z): how many input indices pick each model index."""
        return [np.bincount(ix[ix >= 0], minlength=self.sourceSize[a]) for a, ix in enumerate(self.index)]

    def sampled(self) -> np.ndarray:
        """(z, y, x) bool on the model grid: model voxels that at least one input voxel takes its label from."""
        if self._sampled is None:
            cx, cy, cz = (c > 0 for c in self._perAxisCounts())
            self._sampled = cz[:, None, None] & cy[None, :, None] & cx[None, None, :]
        return self._sampled

    def multiplicity(self) -> np.ndarray:
        """(z, y, x) float64 on the model grid: how many input voxels take their label from each model voxel."""
        if self._multiplicity is None:
            cx, cy, cz = (c.astype(np.float64) for c in self._perAxisCounts())
            self._multiplicity = cz[:, None, None] * cy[None, :, None] * cx[None, None, :]
        return self._multiplicity

    def inputBox(self, modelMask: np.ndarray, withModelBox: bool = False):
        """The [k, j, i] box of the input grid whose voxels take their labels from ``modelMask`` (z, y, x);
        with ``withModelBox`` also the (z, y, x) box of ``modelMask``'s true voxels on the model grid."""
        ranges: dict[int, slice] = {}
        modelRanges: dict[int, slice] = {}
        for axis in range(3):  # model axis x, y, z = numpy axis 2, 1, 0
            other = tuple(a for a in range(3) if a != 2 - axis)
            hits = np.flatnonzero(modelMask.any(axis=other))
            along = self.targetAxisOf[axis]
            if hits.size == 0:
                ranges[along] = modelRanges[axis] = slice(0, 0)
                continue
            modelRanges[axis] = slice(int(hits[0]), int(hits[-1]) + 1)
            picked = np.flatnonzero((self.index[axis] >= hits[0]) & (self.index[axis] <= hits[-1]))
            ranges[along] = slice(int(picked[0]), int(picked[-1]) + 1) if picked.size else slice(0, 0)
        box = (ranges[2], ranges[1], ranges[0])
        return (box, (modelRanges[2], modelRanges[1], modelRanges[0])) if withModelBox else box

    def gather(self, modelArray: np.ndarray, box=None, buffer: str | None = None) -> np.ndarray:
        """A (z, y, x) model-grid array -> its [k, j, i] input-grid voxels (inside ``box``, default all).

        buffer: a name under which the output array is kept and reused by later calls of the same shape (the
        returned array is then overwritten by the next such call): a fresh 79 M-voxel array costs more in page
        faults than the gather itself.
        """
        if box is None:
            box = (slice(0, self.targetSize[2]), slice(0, self.targetSize[1]), slice(0, self.targetSize[0]))
        boxOfTargetAxis = {0: box[2], 1: box[1], 2: box[0]}
        sourceAxisOf = np.argsort(self.targetAxisOf)
        order = [2 - int(sourceAxisOf[2 - t]) for t in range(3)]
        result = np.pad(modelArray, 1)  # index 0 / -1: the zero border for input voxels outside the model grid
        for axis in range(3):  # model axis x, y, z (numpy axis 2, 1, 0): as maskmed_core, x first
            picked = self.index[axis][boxOfTargetAxis[self.targetAxisOf[axis]]]
            picked = np.where(picked >= 0, picked + 1, 0)
            out = None
            if axis == 2 and buffer is not None and order == [0, 1, 2]:
                shape = list(result.shape)
                shape[2 - axis] = picked.size
                out = self._buffer(buffer, tuple(shape), result.dtype)
            result = np.take(result, picked, axis=2 - axis, out=out, mode="clip" if out is not None else "raise")
        # numpy axis 2 - a of ``result`` runs along input axis targetAxisOf[a]; reorder to input (k, j, i).
        return result if order == [0, 1, 2] else np.ascontiguousarray(result.transpose(order))

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        current = self._buffers.get(name)
        if current is None or current.shape != shape or current.dtype != dtype:
            current = self._buffers[name] = np.empty(shape, dtype)
        return current

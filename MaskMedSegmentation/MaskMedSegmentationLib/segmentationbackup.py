# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""What a MaskMed import changes on an existing segmentation node, kept so that a failed import can undo all of it.

An import into an existing node changes three things: the segments (``vtkSegmentation``: MaskMed's segments, its
layer, the reference geometry conversion parameter), the node's reference geometry volume (a node reference that
``SetReferenceImageGeometryParameterFromVolumeNode`` switches to the segmented volume) and the node's place in the
subject hierarchy (moved beside that volume). ``SegmentationBackup.take`` records all three and checks that the copy of
the segments is complete, so that ``restore`` can never delete a segment the user had.
"""

from __future__ import annotations

import slicer


class SegmentationBackupError(RuntimeError):
    """The node's segments could not be copied, so an import must not start: nothing could be undone."""


def ensureConverterRules() -> None:
    """Register the binary labelmap <-> closed surface conversion rules where none is registered.

    Slicer registers them (and more) when it starts, so in Slicer this does nothing. The slicer-core library starts
    with none, and without them a vtkSegmentation cannot copy its binary labelmaps (``DeepCopy`` logs "Unable to
    construct representation type" and copies no segment), which the backup needs.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def _segmentIds(segmentation) -> list[str]:
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]


class SegmentationBackup:
    """The segments, the reference geometry volume and the subject-hierarchy parent of one segmentation node."""

    def __init__(self, node, segments, referenceVolumeId: str | None, hierarchyParent: int | None) -> None:
        self.node = node
        self.segments = segments
        self.referenceVolumeId = referenceVolumeId
        self.hierarchyParent = hierarchyParent

    @classmethod
    def take(cls, node) -> SegmentationBackup:
        """Copy what an import may change; SegmentationBackupError when the segments' copy is incomplete."""
        ensureConverterRules()
        segments = slicer.vtkSegmentation()
        segments.DeepCopy(node.GetSegmentation())
        if _segmentIds(segments) != _segmentIds(node.GetSegmentation()):
            raise SegmentationBackupError(
                f"the segments of '{node.GetName()}' could not be copied aside (copied "
                f"{segments.GetNumberOfSegments()} of {node.GetSegmentation().GetNumberOfSegments()}), so a failed "
                "import could not be undone; nothing was changed: segment into a new segmentation instead")
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        return cls(node, segments, node.GetNodeReferenceID(role), _hierarchyParent(node))

    def restore(self) -> None:
        """Put the segments, the reference geometry volume and the hierarchy parent back as they were."""
        self.node.GetSegmentation().DeepCopy(self.segments)
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        if self.node.GetNodeReferenceID(role) != self.referenceVolumeId:
            self.node.SetNodeReferenceID(role, self.referenceVolumeId)
        if self.hierarchyParent is not None:
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.node.GetScene())
            item = shNode.GetItemByDataNode(self.node)
            if item and shNode.GetItemParent(item) != self.hierarchyParent:
                shNode.SetItemParent(item, self.hierarchyParent)


def _hierarchyParent(node) -> int | None:
    """The node's subject-hierarchy parent item, or None where the scene has no hierarchy or the node no item."""
    scene = node.GetScene()
    if scene is None or scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
        return None
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(node) if shNode is not None else 0
    return shNode.GetItemParent(item) if item else None

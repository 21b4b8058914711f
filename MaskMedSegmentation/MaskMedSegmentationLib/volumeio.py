# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""Volume nodes <-> image files and SimpleITK images, with exact geometry.

Conventions (Slicer's):
- A volume node's voxel (i, j, k) lies at ``IJKToRAS @ (i, j, k, 1)`` in the node's own (parent-transform)
  frame, in RAS millimetres. Files and SimpleITK use LPS: the same matrix with the first two rows negated.
- A numpy view of a volume node's voxels is indexed ``[k, j, i]`` (slowest axis first), which is also
  SimpleITK's ``GetArrayFromImage`` order ``[z, y, x]`` when the SimpleITK index axes are (i, j, k).

Everything here uses MRML/VTK classes that exist both in the Slicer application and in the Qt-free
``slicer-core`` wheel; nothing here imports qt, ctk or slicer.util.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
import slicer
import vtk
from vtk.util import numpy_support

# RAS <-> LPS: flip the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Geometry tolerances: NIfTI stores geometry in float32, so a file round trip moves the origin by ~1e-5 mm.
GEOMETRY_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-5


def vtkMatrixToNumpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """4x4 float64 numpy copy of a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpyToVtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRasMatrix(volumeNode) -> np.ndarray:
    """The volume node's IJKToRAS as a 4x4 numpy array (mm, RAS, voxel index (i, j, k, 1))."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return vtkMatrixToNumpy(matrix)


def ijkToLpsMatrix(volumeNode) -> np.ndarray:
    """The volume node's IJK -> LPS matrix (what a file on disk and SimpleITK store)."""
    return _RAS_TO_LPS @ ijkToRasMatrix(volumeNode)


def _imageData(volumeNode):
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError("a scalar volume node is needed")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise ValueError(f"volume {volumeNode.GetName()!r} has no voxels")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume {volumeNode.GetName()!r} is a colour/vector volume; MaskMed needs a scalar CT")
    return imageData


def volumeShapeKji(volumeNode) -> tuple[int, int, int]:
    """(k, j, i) number of voxels: the numpy shape of the volume's voxel array."""
    dims = _imageData(volumeNode).GetDimensions()
    return int(dims[2]), int(dims[1]), int(dims[0])


def volumeArray(volumeNode) -> np.ndarray:
    """A numpy *view* (no copy) of the volume's voxels, indexed [k, j, i]."""
    imageData = _imageData(volumeNode)
    return numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(volumeShapeKji(volumeNode))


def _lpsGeometry(ijkToLps: np.ndarray, extentStart=(0, 0, 0)) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in SimpleITK's sense from an IJK -> LPS matrix.

    The columns of the 3x3 part are direction * spacing; extentStart shifts the origin when the image
    data's extent does not start at 0 (its first voxel is then IJK = extentStart).
    """
    linear = ijkToLps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing[None, :]
    origin = ijkToLps[:3, 3] + linear @ np.asarray(extentStart, dtype=float)
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def volumeToImage(volumeNode) -> sitk.Image:
    """A SimpleITK copy of the volume (voxel type kept), with its exact geometry in LPS.

    SimpleITK index (x, y, z) = the node's (i, j, k). The parent transform, if any, is not applied: the image
    lives in the volume's own frame, as the segmentation built from it will.
    """
    imageData = _imageData(volumeNode)
    image = sitk.GetImageFromArray(np.array(volumeArray(volumeNode), copy=True))
    extent = imageData.GetExtent()
    origin, spacing, direction = _lpsGeometry(ijkToLpsMatrix(volumeNode), (extent[0], extent[2], extent[4]))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def exportVolumeToFile(volumeNode, path: str | Path) -> Path:
    """Write the scalar volume to ``path`` (.nrrd, .nhdr, .nii, .nii.gz, .mha) with its exact geometry.

    First choice is Slicer's own writer (vtkMRMLVolumeArchetypeStorageNode, not added to the scene, so the
    scene is unchanged): it is what "Save" in Slicer does, IJKToRAS -> LPS included. If it fails (e.g. a
    reader/writer factory missing in a stripped build) the image is built with SimpleITK from the voxel
    array and the IJKToRAS matrix. NRRD is written uncompressed: it is a temporary hand-over file and
    compression would only cost time (~1 s per 100 MB).
    """
    path = Path(path)
    _imageData(volumeNode)  # the same clear errors for both writers
    path.parent.mkdir(parents=True, exist_ok=True)
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.SetUseCompression(0 if path.name.lower().endswith((".nrrd", ".nhdr", ".mha")) else 1)
    written = False
    try:
        written = bool(storageNode.WriteData(volumeNode)) and path.is_file()
    except Exception:  # a wrapped C++ failure: fall back to SimpleITK below
        written = False
    if written and _fileGeometryMatches(path, volumeNode):
        return path
    path.unlink(missing_ok=True)
    sitk.WriteImage(volumeToImage(volumeNode), str(path), useCompression=not path.name.lower().endswith(".nrrd"))
    return path


def _fileGeometryMatches(path: Path, volumeNode) -> bool:
    """Read the file's header only and compare its grid with the volume's (guards the storage-node path)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    shape = volumeShapeKji(volumeNode)
    if tuple(reader.GetSize()) != (shape[2], shape[1], shape[0]):
        return False
    return _geometryMatches(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), volumeNode)


def _geometryMatches(origin, spacing, direction, volumeNode) -> bool:
    imageData = _imageData(volumeNode)
    extent = imageData.GetExtent()
    wantOrigin, wantSpacing, wantDirection = _lpsGeometry(
        ijkToLpsMatrix(volumeNode), (extent[0], extent[2], extent[4])
    )
    return (
        np.allclose(origin, wantOrigin, atol=GEOMETRY_TOLERANCE_MM)
        and np.allclose(spacing, wantSpacing, rtol=1e-5, atol=1e-6)
        and np.allclose(direction, wantDirection, atol=DIRECTION_TOLERANCE)
    )


def gridMatchesVolume(size, origin, spacing, direction, volumeNode) -> bool:
    """True when a grid (size (x, y, z) voxels, LPS origin/spacing/direction as SimpleITK has them) is the
    volume's voxel grid: same size, index axes (i, j, k), geometry within GEOMETRY_TOLERANCE_MM."""
    shape = volumeShapeKji(volumeNode)
    if tuple(int(v) for v in size) != (shape[2], shape[1], shape[0]):
        return False
    return _geometryMatches(origin, spacing, direction, volumeNode)


def imageMatchesVolumeGrid(image: sitk.Image, volumeNode) -> bool:
    """True when the SimpleITK image has the volume's size and geometry (index axes (i, j, k), LPS)."""
    return gridMatchesVolume(image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection(), volumeNode)


def labelArrayOnVolumeGrid(labelImage: sitk.Image, volumeNode) -> np.ndarray:
    """The label image's voxels as a [k, j, i] array on the volume's voxel grid.

    A label image already on the volume's grid (the normal case: MaskMed writes labels on its input's exact
    grid) is returned as a read-only view, without copying: it is valid only while the caller keeps
    ``labelImage`` alive. Anything else (another axis order, a crop) is resampled onto the volume's grid with
    nearest neighbour, in physical (LPS) space (voxels outside it become 0), and returned as a new array.
    """
    if imageMatchesVolumeGrid(labelImage, volumeNode):
        return sitk.GetArrayViewFromImage(labelImage)
    reference = sitk.Image([int(v) for v in volumeShapeKji(volumeNode)[::-1]], labelImage.GetPixelID())
    extent = _imageData(volumeNode).GetExtent()
    origin, spacing, direction = _lpsGeometry(ijkToLpsMatrix(volumeNode), (extent[0], extent[2], extent[4]))
    reference.SetOrigin(origin)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction)
    resampled = sitk.Resample(labelImage, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled)  # a copy: ``resampled`` dies with this function


def emptyOrientedImageLike(volumeNode, vtkScalarType: int = vtk.VTK_UNSIGNED_CHAR) -> slicer.vtkOrientedImageData:
    """A zero-filled vtkOrientedImageData with the volume's extent and IJKToRAS (the segment layer geometry)."""
    imageData = _imageData(volumeNode)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(imageData.GetExtent())
    image.AllocateScalars(vtkScalarType, 1)
    image.GetPointData().GetScalars().Fill(0)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def orientedImageArray(image) -> np.ndarray:
    """A numpy view (no copy) of a vtkOrientedImageData's voxels, indexed [k, j, i]."""
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def importLabelImage(labelImage: sitk.Image, referenceVolumeNode) -> slicer.vtkOrientedImageData:
    """A SimpleITK label image -> vtkOrientedImageData on the reference volume's grid (a copy).

    Voxel type: unsigned char when every label fits, else unsigned short. Use it for a one-off import;
    ``segmentationwriter`` writes straight into the segmentation's own layer instead.
    """
    labels = labelArrayOnVolumeGrid(labelImage, referenceVolumeNode)  # labelImage outlives this view
    scalarType = vtk.VTK_UNSIGNED_CHAR if labels.size == 0 or int(labels.max()) < 256 else vtk.VTK_UNSIGNED_SHORT
    image = emptyOrientedImageLike(referenceVolumeNode, scalarType)
    orientedImageArray(image)[...] = labels
    image.Modified()
    return image


def imageToVolumeNode(image: sitk.Image, scene=None, name: str = "volume", volumeNode=None):
    """A SimpleITK scalar image -> a vtkMRMLScalarVolumeNode (new, or ``volumeNode`` filled in place).

    The voxels are copied; IJKToRAS is set from the image's LPS origin, spacing and direction. The new node
    is added to ``scene`` when given (with no display node: Slicer's application logic adds one when shown).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a 3D scalar image is needed")
    if volumeNode is None:
        volumeNode = slicer.vtkMRMLScalarVolumeNode()
        volumeNode.SetName(name)
    array = sitk.GetArrayFromImage(image)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(image.GetSize())
    vtkArray = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    imageData.GetPointData().SetScalars(vtkArray)
    spacing = np.array(image.GetSpacing())
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * spacing[None, :]
    ijkToLps[:3, 3] = image.GetOrigin()
    volumeNode.SetIJKToRASMatrix(numpyToVtkMatrix(_RAS_TO_LPS @ ijkToLps))
    volumeNode.SetAndObserveImageData(imageData)
    if scene is not None and volumeNode.GetScene() is None:
        scene.AddNode(volumeNode)
    return volumeNode


def readVolumeFile(path: str | Path, scene, name: str | None = None):
    """Load a volume file into a new scalar volume node with Slicer's own reader (its storage node is kept)."""
    path = Path(path)
    volumeNode = slicer.vtkMRMLScalarVolumeNode()
    volumeNode.SetName(name or path.name.split(".")[0])
    scene.AddNode(volumeNode)
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storageNode)
    storageNode.SetFileName(str(path))
    volumeNode.SetAndObserveStorageNodeID(storageNode.GetID())
    if not storageNode.ReadData(volumeNode):
        scene.RemoveNode(volumeNode)
        scene.RemoveNode(storageNode)
        raise ValueError(f"{path} could not be read as a volume")
    return volumeNode

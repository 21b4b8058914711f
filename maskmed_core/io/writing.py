"""Writing images atomically: a reader (or 3D Slicer) never sees a half-written file at the output path.

Each write goes to a temporary file in the target's folder (same file system, so the final ``os.replace`` is an
atomic rename) whose name keeps the real extension, because SimpleITK chooses the writer from the extension.
On any error the temporary file is removed, and a file that already existed at the target stays untouched.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk  # noqa: N813 (the conventional name)

from maskmed_core.atomic import atomic_path
from maskmed_core.io.errors import InputError, OutputLocationError

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def write_image(image: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` to ``path`` (.nii.gz, .nii, .nrrd or .mha), compressed where the format allows, atomically.

    The geometry (spacing and origin in mm, direction cosines) is written as SimpleITK holds it; .nii stores it
    in float32, the others in full precision. Returns the path written.

    Raises InputError for an unsupported extension or a folder that does not exist or is not writable, and
    OSError when SimpleITK fails to write (e.g. the disk is full); in both cases nothing is left at ``path``
    (and a file that was there before is unchanged).
    """
    target = Path(path)
    if not target.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(
            f"Cannot write {target}: unsupported file type; MaskMed writes {', '.join(WRITE_SUFFIXES)} files. "
            "Choose an output name with one of these extensions."
        )
    with atomic_output(target, verify=verify_image_file) as temporary:
        try:
            # useCompression: gzip for .nrrd/.mha; .nii.gz is compressed by its name, .nii stays uncompressed.
            sitk.WriteImage(image, str(temporary), useCompression=True)
        except RuntimeError as error:
            reason = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
            raise OSError(
                f"Could not write {target} (SimpleITK: {reason[:300]}). Check that the disk is not full and that "
                "the folder is writable."
            ) from error
    return target


def verify_image_file(path: Path) -> None:
    """Raise OSError unless the image file just written is complete.

    ITK's NIfTI writer ignores a failed write (a full disk leaves a truncated .nii.gz and no error), so a NIfTI
    file's length (or its gzip stream's decompressed length and end) is compared with what its header announces;
    other formats are read back, which fails for a truncated compressed stream.
    """
    from maskmed_core.io.formats import sitk_error_reason
    from maskmed_core.io.nifti_header import check_nifti_complete

    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            check_nifti_complete(path)
        else:
            sitk.ReadImage(str(path))
    except InputError as error:
        raise OSError(
            errno.EIO, f"the file written ({path.name}) is incomplete: fewer bytes reached the disk than its header "
            "announces (is the disk full, or a file size or quota limit reached?)"
        ) from error
    except RuntimeError as error:
        raise OSError(
            errno.EIO, f"the written file cannot be read back ({sitk_error_reason(error)}); is the disk full?"
        ) from error


@contextmanager
def atomic_output(path: str | os.PathLike[str], verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``, with the same extension, for any writer to write to.

    On a normal exit of the ``with`` block the temporary file is checked (non-empty, ``verify`` when given,
    fsync) and replaces ``path`` atomically; when the block or a check raises, the temporary file is deleted and
    ``path`` is left as it was. Raises OutputLocationError (an InputError) before yielding when the folder of
    ``path`` does not exist or is not writable, or ``path`` is a folder; FileNotFoundError at the end when the
    block wrote nothing, OSError when the written file fails a check.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise OutputLocationError(
            f"Cannot write {target}: the folder {folder} does not exist. Create it, or choose another output path."
        )
    if not os.access(folder, os.W_OK):
        raise OutputLocationError(
            f"Cannot write {target}: the folder {folder} is not writable. Choose another output folder."
        )
    if target.is_dir():
        raise OutputLocationError(
            f"Cannot write {target}: it is a folder. Give a file name, e.g. {target / 'result.nii.gz'}."
        )
    with atomic_path(target, verify=verify) as temporary:
        yield temporary

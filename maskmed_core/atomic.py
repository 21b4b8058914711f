"""Atomic file output: a reader never sees a half-written file, and a failed write leaves the old one.

Needs nothing beyond the standard library, so model files and training states use it on machines
without SimpleITK.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Multi-part extensions that must survive in the temporary name (".seg.nrrd": Slicer segmentation files).
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd")


@contextmanager
def atomic_path(path: str | os.PathLike[str], sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same folder and extension) for any writer to write to.

    When the block ends normally the temporary file replaces ``path`` with one ``os.replace`` (after an
    fsync if ``sync``); when it raises, the temporary file is deleted and ``path`` stays as it was.
    FileNotFoundError at the end when the block wrote nothing.
    """
    target = Path(path)
    temporary = temporary_sibling(target)
    try:
        yield temporary
        if not temporary.is_file():
            raise FileNotFoundError(f"Nothing was written to the temporary file {temporary} for {target}")
        if sync:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        # After a successful os.replace the temporary name no longer exists; after an error it goes here.
        temporary.unlink(missing_ok=True)


def temporary_sibling(target: Path) -> Path:
    """A unique hidden name in the target's folder, ending with the target's full extension.

    Not created here: the writer creates it with the usual permissions (a tempfile.mkstemp file would be
    0600 and keep that mode after the rename). A random 48-bit token makes a collision practically impossible.
    """
    name = target.name
    lower = name.lower()
    extension = next((s for s in _COMPOUND_SUFFIXES if lower.endswith(s)), None)
    if extension is None:
        extension = "".join(target.suffixes[-2:]) if lower.endswith(".gz") else target.suffix
    split = len(name) - len(extension)
    stem = name[:split].lstrip(".")  # one leading dot is added below (hidden file); avoid "..name"
    return target.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.tmp{name[split:]}")

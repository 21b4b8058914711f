"""Atomic file output: a reader never sees a half-written file, and a failed write leaves the old one.

Needs nothing beyond the standard library, so model files and training states use it on machines
without SimpleITK.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Multi-part extensions that must survive in the temporary name (".seg.nrrd": Slicer segmentation files).
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd")


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], sync: bool = True, verify: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same folder and extension) for any writer to write to.

    When the block ends normally the temporary file is checked, then replaces ``path`` with one ``os.replace``:
    it must exist and not be empty, ``verify(temporary)`` (when given) must not raise (e.g. a gzip stream must be
    complete: some writers ignore a failed write, so a full disk would otherwise leave a truncated file with no
    error), and with ``sync`` (the default) it is fsynced, so that a write error the kernel reports late (a full
    disk, a quota) fails here rather than after the rename, and the folder is fsynced after the rename. When the
    block or a check raises, the temporary file is deleted and ``path`` stays as it was.
    Raises FileNotFoundError when the block wrote nothing, OSError when a check fails.
    """
    target = Path(path)
    temporary = temporary_sibling(target)
    try:
        yield temporary
        if not temporary.is_file():
            raise FileNotFoundError(f"Nothing was written to the temporary file {temporary} for {target}")
        if temporary.stat().st_size == 0:
            raise OSError(errno.EIO, f"Writing {target} produced an empty file; check that the disk is not full")
        if verify is not None:
            verify(temporary)
        if sync:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        # Some writers (safetensors) create their file 0600; give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
        if sync:
            _fsync_folder(target.parent)
    finally:
        # After a successful os.replace the temporary name no longer exists; after an error it goes here.
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it; Linux shows it in /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as lines:
            for line in lines:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some systems cannot open a folder for fsync, where this is skipped."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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


def verify_safetensors(path: Path) -> None:
    """Raise OSError unless ``path`` is a complete safetensors file: its length must be exactly 8 + the header
    length + the end of the last tensor's data, as the header states (a write cut short by a full disk is not)."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise OSError(errno.EIO, f"{path} is truncated (no safetensors header)")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise OSError(errno.EIO, f"{path} is truncated inside its safetensors header")
        header = json.loads(handle.read(header_length))
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size != 8 + header_length + data_end:
        raise OSError(
            errno.EIO, f"{path} holds {size:,} bytes but its header announces {8 + header_length + data_end:,}; the "
            "write was cut short (is the disk full?)"
        )

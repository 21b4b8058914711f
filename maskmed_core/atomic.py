"""Atomic file output: a reader never sees a half-written file, and a failed write leaves the old one.

Needs nothing beyond the standard library (and maskmed_core.interrupts, which needs no more), so model files and
training states use it on machines without SimpleITK.
"""

from __future__ import annotations

import contextvars
import errno
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from maskmed_core.interrupts import signals_recorded

# Multi-part extensions that must survive in the temporary name (".seg.nrrd": Slicer segmentation files).
_COMPOUND_SUFFIXES = (".nii.gz", ".seg.nrrd")
_MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows file systems
_TOKEN_HEX_DIGITS = 12  # the random part of a temporary's name (48 bits), written and recognised alike


class OutputIsAFolderError(IsADirectoryError):
    """The path to write is a folder (not a link to one): the user's to move or rename, so a usage error of the
    command (exit_codes maps it by name), not a failure of the system like the other OSErrors."""


class OutputBatch:
    """Files written under temporary names that replace their targets together (see :func:`output_batch`).

    ``on_commit``: called right after the last replace, with SIGINT and SIGTERM still deferred, so a caller can record
    what is now in place before an interrupt can land.
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temporary, target), in write order
        self.on_commit: Callable[[], None] | None = None

    def stage(self, temporary: Path, target: Path) -> None:
        if any(staged_target == target for _, staged_target in self.staged):
            raise ValueError(f"{target} is written twice in one output batch")
        self.staged.append((temporary, target))

    def commit(self) -> None:
        with _signals_deferred():
            for temporary, target in self.staged:
                os.replace(temporary, target)
            for folder in dict.fromkeys(target.parent for _, target in self.staged):
                _fsync_folder(folder)
            self.staged = []
            if self.on_commit is not None:
                self.on_commit()

    def discard(self) -> None:
        for temporary, _ in self.staged:
            temporary.unlink(missing_ok=True)
        self.staged = []


_BATCH: contextvars.ContextVar[OutputBatch | None] = contextvars.ContextVar("maskmed_output_batch", default=None)


@contextmanager
def output_batch() -> Iterator[OutputBatch]:
    """All or nothing for several files: inside the block every :func:`atomic_path` write is completed, checked and
    fsynced under its temporary name but replaces nothing; when the block ends normally all of them replace their
    targets at once, with SIGINT and SIGTERM deferred until the last is in place. When the block raises (an error, a
    Ctrl+C, a full disk), the temporaries are removed and every target, e.g. a previous run's complete outputs, stays
    exactly as it was."""
    batch = OutputBatch()
    token = _BATCH.set(batch)
    try:
        yield batch
        batch.commit()
    finally:
        _BATCH.reset(token)
        batch.discard()


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are delivered (as KeyboardInterrupt) when it ends; only the
    main thread can set handlers, elsewhere the block runs as it is."""
    with signals_recorded() as request:
        yield
    if request.signal is not None:
        raise KeyboardInterrupt(request.signal)


def refuse_a_folder_in_the_way(path: Path) -> None:
    """Raise OutputIsAFolderError when ``path``, a file to write, is a folder (a link to one is replaced as a link):
    callers that write after slow work check their outputs first."""
    if path.is_dir() and not path.is_symlink():
        raise OutputIsAFolderError(f"Cannot write {path}: a folder has that name. Move or rename the folder, or "
                                   "choose another output folder")


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
    block or a check raises, the temporary file is deleted and ``path`` stays as it was. Inside
    :func:`output_batch` the checked temporary file is handed to the batch instead of replacing ``path``.
    Raises OutputIsAFolderError before yielding when ``path`` is a folder (a link to one is replaced as a link),
    FileNotFoundError when the block wrote nothing, OSError when a check fails.
    """
    target = Path(path)
    refuse_a_folder_in_the_way(target)  # a rename cannot replace a folder: found before any writing
    temporary = temporary_sibling(target)
    batch = _BATCH.get()
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
        if batch is not None:
            batch.stage(temporary, target)  # the batch replaces the target, or removes the temporary
        else:
            os.replace(temporary, target)
            if sync:
                _fsync_folder(target.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    else:
        if batch is None:  # after a successful os.replace the temporary name no longer exists
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
    stem, extension = _stem_and_extension(target)
    # A file name has at most 255 bytes: the stem is shortened so that a target that fits has a temporary that fits.
    token = uuid.uuid4().hex[:_TOKEN_HEX_DIGITS]
    room = _MAX_NAME_BYTES - len(f"..{token}.tmp{extension}".encode())
    stem = stem.encode()[: max(0, room)].decode(errors="ignore")
    return target.with_name(f".{stem}.{token}.tmp{extension}")


def _stem_and_extension(target: Path) -> tuple[str, str]:
    """The target's name without its leading dots and full extension (one leading dot is added to make a hidden
    temporary; avoid "..name"), and that extension (".nii.gz", ".seg.nrrd", ".tar.gz", ".maskmed", ...)."""
    name = target.name
    lower = name.lower()
    extension = next((s for s in _COMPOUND_SUFFIXES if lower.endswith(s)), None)
    if extension is None:
        extension = "".join(target.suffixes[-2:]) if lower.endswith(".gz") else target.suffix
    split = len(name) - len(extension)
    return name[:split].lstrip("."), name[split:]


def write_safetensors(path: str | os.PathLike[str], tensors: dict, metadata: dict[str, str]) -> Path:
    """Write tensors (all torch tensors, or all numpy arrays) and metadata as a safetensors file through
    :func:`atomic_path` (checked complete).

    Serialised in memory and written here, rather than by safetensors' ``save_file``, which writes a temporary file of
    its own (".tmp" and six random characters, outside this module's naming) that a kill -9 mid-write leaves behind:
    the only temporary is then this module's, which :func:`remove_stale_temporaries` knows. Costs one copy of the
    file in memory while it is written (a training state: ~110 MB)."""
    import numpy as np

    if all(isinstance(value, np.ndarray) for value in tensors.values()):
        from safetensors.numpy import save
    else:
        from safetensors.torch import save

    with atomic_path(path, verify=verify_safetensors) as temporary:
        temporary.write_bytes(save(tensors, metadata=metadata))
    return Path(path)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` made for ``target`` that a killed process left behind (kill -9,
    a power cut); call it where no other process writes ``target``, e.g. when a run starts. Returns what it removed."""
    stem, extension = _stem_and_extension(target)
    pattern = re.compile(rf"\.{re.escape(stem)}\.[0-9a-f]{{{_TOKEN_HEX_DIGITS}}}\.tmp{re.escape(extension)}")
    removed = []
    for candidate in target.parent.glob(".*.tmp*"):
        if pattern.fullmatch(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


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

"""Checking an output folder before any slow work. Needs no SimpleITK (training from a preprocessed cache runs on
machines without it)."""

from __future__ import annotations

import os
from pathlib import Path

from maskmed_core.io.errors import OutputLocationError


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Raise OutputLocationError unless ``folder`` is, or can be created as, a writable folder.

    Nothing is created: the nearest existing ancestor must be a writable folder (``os.access`` also reports a
    read-only file system). Returns the folder as a Path.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputLocationError(
            f"Cannot write into {folder}: {existing} is a file, not a folder. Give a folder as the output (-o)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f" (its nearest existing parent {existing} is not writable)"
        raise OutputLocationError(
            f"Cannot write into {folder}{what}: the folder or its file system is read-only or belongs to another "
            "user. Choose an output folder you can write to."
        )
    return folder

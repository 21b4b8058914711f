"""Checking an output folder before any slow work. Needs no SimpleITK (training from a preprocessed cache runs on
machines without it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from maskmed_core.atomic import refuse_a_folder_in_the_way
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


def check_output_files(folder: str | os.PathLike[str], names: Iterable[str]) -> Path:
    """:func:`check_output_folder`, then raise OutputIsAFolderError when a folder has the name of a file to write
    there (an ``os.replace`` cannot put a file in its place): what a command that writes after slow work checks
    first. Returns the folder as a Path."""
    folder = check_output_folder(folder)
    for name in names:
        refuse_a_folder_in_the_way(folder / name)
    return folder

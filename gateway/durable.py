"""Make file-system changes durable: fsync a directory after a rename, create directories so
that their entries survive a crash too ("safe on disk before we say yes")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

Fsync = Callable[[int], None]


def fsync_directory(directory: Path, fsync: Fsync = os.fsync) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directories(directory: Path, fsync: Fsync = os.fsync, mode: int = 0o700) -> None:
    """Create `directory` and missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new_directory in reversed(missing):
        try:
            new_directory.mkdir(mode=mode)
        except FileExistsError:
            continue  # a concurrent writer made it
        fsync_directory(new_directory.parent, fsync)

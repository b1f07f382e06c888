"""Output paths checked before any work: a results file or a cache folder that cannot be
written is found before the run, not after it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output file or folder cannot be written; raised before a run starts."""


def _probe_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be created in it."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{parent}: is a file, so the {what} {folder} cannot "
                                      "be created")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{folder}: the {what} is not writable "
                              f"({err.strerror or err})") from None


def check_output_file(path: Path, what: str = "output file") -> None:
    """``path`` can be written atomically (its folder takes a new file; it is not a folder)."""
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; the {what} must be a file path")
    _probe_folder(path.parent, f"folder of the {what}")


def check_output_folder(path: Path, what: str = "output folder") -> None:
    """``path`` is (or can be created as) a folder that takes new files."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path}: is a file; the {what} must be a folder")
    _probe_folder(path, what)

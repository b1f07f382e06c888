"""The errors for a file the package will not or cannot read, and for an output it cannot
write."""

from __future__ import annotations

__all__ = ["OutputPathError", "UnreadableFileError", "UnsafeFileError"]


class UnreadableFileError(ValueError):
    """A file that is empty, truncated, corrupt or of another format."""


class UnsafeFileError(UnreadableFileError):
    """A file that would run code when loaded: refused, never opened with a laxer loader."""


class OutputPathError(ValueError):
    """An output file or folder cannot be written; raised before a run starts."""

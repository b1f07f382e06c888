"""The errors every loader of the package raises for a file it will not or cannot read."""

from __future__ import annotations

__all__ = ["UnreadableFileError", "UnsafeFileError"]


class UnreadableFileError(ValueError):
    """A file that is empty, truncated, corrupt or of another format."""


class UnsafeFileError(UnreadableFileError):
    """A file that would run code when loaded: refused, never opened with a laxer loader."""

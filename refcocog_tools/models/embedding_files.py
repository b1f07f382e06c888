"""What the two embedding caches share: the encoder they call and the one checked load.

``prompt_cache`` keeps the embeddings of prompts, texts and rendered crops for the zero-shot
methods; ``split_embeddings`` keeps whole splits for training the regressors. Both write
``torch.save`` files of plain data whose header names the format and the checksum of the
backbone that computed the vectors, and both read them back through :func:`load_embedding_file`:
a file that cannot be read, holds code, or is of another format is recomputed (with a warning
saying why), and one written by another backbone raises :class:`EmbeddingCacheError`, because
its vectors live in another embedding space.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from refcocog_tools.core.files import UnreadableFileError, load_torch_file

# The "format" field of each cache's files (the values files written so far carry).
PROMPT_CACHE_FORMAT = 1
SPLIT_EMBEDDINGS_FORMAT = "refcocog-tools-embeddings/1"


class EmbeddingCacheError(RuntimeError):
    """An embedding cache file belongs to another backbone and must not be used."""


class Encoder(Protocol):
    """What the caches need of a backbone (``backbones.ClipBackbone`` satisfies it)."""

    name: str
    checksum: str
    # Inputs per forward pass of the prompt cache (ClipBackbone.fixed_batch).
    fixed_batch: int

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...,
                     normalize: bool = ..., *, pad_last: bool = ...) -> torch.Tensor: ...

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = ...,
                      normalize: bool = ..., *, pad_last: bool = ...) -> torch.Tensor: ...


def load_embedding_file(path: str | Path, expected_format: int | str, checksum: str, *,
                        checksum_field: str = "checksum",
                        backbone_name: str = "this backbone") -> dict[str, Any] | None:
    """The header-checked payload of an embedding cache file written by the backbone whose
    checksum is ``checksum`` (recorded under ``checksum_field``).

    None, with a warning naming the file and the reason, when it is unreadable, refers to code,
    is not a dict of ``expected_format`` or records no checksum: the caller recomputes. Raises
    :class:`EmbeddingCacheError` when it records another backbone's checksum.
    """
    try:
        payload = load_torch_file(path)  # data only: a cache file never runs code
        if not isinstance(payload, dict):
            raise UnreadableFileError("not a dict of embeddings")
        recorded = payload.get(checksum_field)
        if recorded is None:
            raise UnreadableFileError("no backbone checksum recorded")
    except (OSError, UnreadableFileError) as err:
        warnings.warn(f"{path}: unreadable embedding cache ({err}); recomputing", stacklevel=3)
        return None
    if recorded != checksum:
        raise EmbeddingCacheError(
            f"{path}: embedding cache written by backbone {payload.get('backbone_name')!r} "
            f"(checksum {str(recorded)[:12]}...), not by {backbone_name!r} "
            f"(checksum {checksum[:12]}...); its embeddings live in another space. "
            "Delete the file or point the cache elsewhere."
        )
    if payload.get("format") != expected_format:
        warnings.warn(f"{path}: unreadable embedding cache (not an embedding cache of format "
                      f"{expected_format!r}); recomputing", stacklevel=3)
        return None
    return payload

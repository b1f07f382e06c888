"""The prompt cache: embeddings of texts, prompts and rendered crops for the zero-shot methods.

Every method and run shares it (the regressors' whole-split embeddings live in
``split_embeddings``). Text and image embeddings are keyed by the backbone's checkpoint checksum,
so weights that change can never reuse stale vectors. Image keys name the pixels (a hash of the
decoded image), the visual-prompt parameters and the box. The on-disk form is one ``torch.save``
file per backbone and kind, written atomically and read through the checked load both caches
share (``embedding_files``); an unreadable file or an entry of the wrong shape, dtype or norm is
dropped and recomputed, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from refcocog_tools.core.files import atomic_torch_save, remove_stale_temporaries
from refcocog_tools.models.embedding_files import (
    PROMPT_CACHE_FORMAT,
    EmbeddingCacheError,
    Encoder,
    load_embedding_file,
)


def image_fingerprint(image: Image.Image) -> str:
    """A short hash of the decoded pixels: the same image file always gives the same key.

    Inside ``fingerprints_remembered`` each image object is hashed once; elsewhere every call
    hashes the pixels again, so an image changed in place gets a new key."""
    memo = _remembered
    if memo is None:
        return _pixel_digest(image)
    entry = memo.get(id(image))
    if entry is not None and entry[0]() is image:
        return entry[1]
    fingerprint = _pixel_digest(image)
    memo[id(image)] = (weakref.ref(image), fingerprint)
    return fingerprint


def _pixel_digest(image: Image.Image) -> str:
    digest = hashlib.blake2b(image.tobytes(), digest_size=12)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


# id(image) -> (a weak reference to it, its fingerprint), while fingerprints are remembered.
_remembered: dict[int, tuple[weakref.ref, str]] | None = None


@contextlib.contextmanager
def fingerprints_remembered() -> Iterator[None]:
    """Hash each image once in this block, however many keys name it: the engine does this
    while it evaluates, since it never changes an image (a method's requests, its
    predictions and the metric's crops each name the image again, and hashing a photograph
    costs about a millisecond and a half)."""
    global _remembered
    outer = _remembered
    if outer is None:
        _remembered = {}
    try:
        yield
    finally:
        _remembered = outer


def params_key(**params: Any) -> str:
    """A stable text form of visual-prompt parameters, for cache keys."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


class EmbeddingCache:
    """Memory cache of L2-normalised embeddings, optionally persisted under ``directory``."""

    def __init__(self, directory: str | Path | None = None, shard: str = "",
                 autosave_s: float = 60.0) -> None:
        """``shard``: a name for this process's files when several processes share the
        directory (e.g. ``"rank1"`` under torchrun). Each process writes only its own files,
        ``<kind>.pt`` for the unnamed shard and ``<kind>.<shard>.pt`` otherwise; every process
        reads all of them. Two processes that share a file (say, two splits evaluated at once)
        both keep their entries: a save merges what is on disk under a lock.

        ``autosave_s``: new entries are written at most this many seconds after they were
        computed, so a run killed near its end resumes from what it encoded.

        Everything is encoded in forward passes of the backbone's ``fixed_batch`` inputs (the
        last one padded), so an embedding is the same whatever else is encoded with it: a
        run's results do not depend on its batch size or worker count."""
        self.directory = Path(directory) if directory is not None else None
        self.autosave_s = autosave_s
        self._last_save = time.monotonic()
        self.shard = shard
        self._store: dict[tuple[str, str], dict[Hashable, torch.Tensor]] = {}
        self._dirty: set[tuple[str, str]] = set()
        # Per table, the keys this shard writes: read from its own file or computed here.
        self._own: dict[tuple[str, str], set[Hashable]] = {}
        self.hits = 0
        self.misses = 0

    # -- persistence ----------------------------------------------------------------------------
    def _path(self, checksum: str, kind: str) -> Path:
        assert self.directory is not None
        name = f"{kind}.{self.shard}.pt" if self.shard else f"{kind}.pt"
        return self.directory / checksum[:16] / name

    def _table(self, checksum: str, kind: str) -> dict[Hashable, Any]:
        key = (checksum, kind)
        if key not in self._store:
            self._store[key] = self._load(checksum, kind)
        return self._store[key]

    def _load(self, checksum: str, kind: str) -> dict[Hashable, torch.Tensor]:
        if self.directory is None:
            return {}
        table: dict[Hashable, torch.Tensor] = {}
        folder = self.directory / checksum[:16]
        if folder.is_dir():
            remove_stale_temporaries(folder)
        # This shard's own file last, so its entries win.
        own = self._path(checksum, kind)
        paths = [p for p in sorted(folder.glob(f"{kind}.*pt")) if p != own] + [own]
        for path in paths:
            if path.is_file():
                entries = self._load_file(path, checksum)
                table.update(entries)
                if path == own:
                    self._own.setdefault((checksum, kind), set()).update(entries)
        return table

    def _added(self, checksum: str, kind: str, keys: Sequence[Hashable]) -> None:
        self._own.setdefault((checksum, kind), set()).update(keys)
        self._dirty.add((checksum, kind))
        if self.directory is not None and time.monotonic() - self._last_save >= self.autosave_s:
            self.save()

    def paths(self, checksum: str) -> list[Path]:
        """The files this shard writes for a backbone (for checks before a run)."""
        if self.directory is None:
            return []
        return [self._path(checksum, kind) for kind in ("text", "image")]

    def _load_file(self, path: Path, checksum: str) -> dict[Hashable, torch.Tensor]:
        try:
            payload = load_embedding_file(path, PROMPT_CACHE_FORMAT, checksum)
            if payload is None:
                return {}
            keys, vectors = payload["keys"], payload["vectors"]
            if not isinstance(vectors, torch.Tensor) or len(keys) != vectors.shape[0]:
                raise ValueError("keys and vectors disagree")
        except EmbeddingCacheError:
            # Only a copied file or a checksum-prefix clash puts another backbone's file in
            # this backbone's folder; its own entries are rewritten on the next save.
            warnings.warn(f"{path}: unreadable embedding cache (written by another backbone); "
                          "recomputing", stacklevel=2)
            return {}
        except Exception as err:  # noqa: BLE001 - any unreadable cache is recomputed
            warnings.warn(f"{path}: unreadable embedding cache ({err}); recomputing", stacklevel=2)
            return {}
        table = {}
        for key, vector in zip(keys, vectors, strict=True):
            if _valid(vector):
                table[key] = vector
        return table

    def save(self) -> None:
        """Write every changed table to disk (no-op for a memory-only cache)."""
        if self.directory is None:
            return
        for checksum, kind in sorted(self._dirty):
            table = self._store[(checksum, kind)]
            own = self._own.setdefault((checksum, kind), set())
            if not own:
                continue
            path = self._path(checksum, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            with _folder_lock(path.parent):
                # Entries another process added to this file since it was read are kept.
                if path.is_file():
                    for key, vector in self._load_file(path, checksum).items():
                        table.setdefault(key, vector)
                        own.add(key)
                keys = [k for k in table if k in own]  # other shards' entries stay in theirs
                atomic_torch_save(path, {"format": PROMPT_CACHE_FORMAT, "checksum": checksum,
                                         "keys": keys,
                                         "vectors": torch.stack([table[k] for k in keys])})
        self._dirty.clear()
        self._last_save = time.monotonic()

    # -- lookups --------------------------------------------------------------------------------
    def texts(self, backbone: Encoder, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), D) embeddings; each distinct text is encoded at most once ever."""
        table = self._table(backbone.checksum, "text")
        missing = [t for t in dict.fromkeys(texts) if t not in table]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            vectors = backbone.encode_texts(missing, backbone.fixed_batch, pad_last=True)
            table.update(zip(missing, vectors.float(), strict=True))
            self._added(backbone.checksum, "text", missing)
        return torch.stack([table[t] for t in texts]) if texts else torch.zeros(0, 0)

    def images(
        self,
        backbone: Encoder,
        keys: Sequence[Hashable],
        render: Callable[[list[int]], Sequence[Image.Image]],
    ) -> torch.Tensor:
        """(len(keys), D) embeddings; ``render(indices)`` draws only the images not cached."""
        table = self._table(backbone.checksum, "image")
        wanted = list(dict.fromkeys(keys))
        missing = [k for k in wanted if k not in table]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            first_index = {k: i for i, k in reversed(list(enumerate(keys)))}
            images = render([first_index[k] for k in missing])
            vectors = backbone.encode_images(images, backbone.fixed_batch, pad_last=True)
            table.update(zip(missing, vectors.float(), strict=True))
            self._added(backbone.checksum, "image", missing)
        return torch.stack([table[k] for k in keys])

    def put_images(self, backbone: Encoder, keys: Sequence[Hashable],
                   vectors: torch.Tensor) -> None:
        """Store embeddings computed elsewhere (the batched engine encodes across images)."""
        table = self._table(backbone.checksum, "image")
        table.update(zip(keys, vectors.float(), strict=True))
        self._added(backbone.checksum, "image", keys)

    def has_text(self, backbone: Encoder, text: str) -> bool:
        """Whether the text embedding of ``text`` for ``backbone`` is cached."""
        return text in self._table(backbone.checksum, "text")

    def has_image(self, backbone: Encoder, key: Hashable) -> bool:
        """Whether the image embedding ``key`` of ``backbone`` is cached (from disk or this run)."""
        return key in self._table(backbone.checksum, "image")

    def image_keys(self, backbone: Encoder) -> frozenset[Hashable]:
        """Keys of the image embeddings cached for ``backbone`` (from disk or this run)."""
        return frozenset(self._table(backbone.checksum, "image"))

    def texts_only_copy(self) -> EmbeddingCache:
        """A memory-only cache holding a copy of this cache's text embeddings and nothing else
        (a benchmark starts every timed run from the same encoded texts)."""
        copy = EmbeddingCache(None)
        copy._store = {key: dict(table) for key, table in self._store.items()
                       if key[1] == "text"}
        return copy


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (POSIX ``flock``; none where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _valid(vector: Any) -> bool:
    """An entry is trusted only if it is a finite float vector of unit norm."""
    return (
        isinstance(vector, torch.Tensor)
        and vector.ndim == 1
        and vector.dtype == torch.float32
        and bool(torch.isfinite(vector).all())
        and abs(float(vector.norm()) - 1.0) < 1e-3
    )

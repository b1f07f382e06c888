"""CLIP embeddings of a split, computed once per backbone and split and kept on disk.

Training a regressor head only needs, per (image, expression) pair, the CLIP embedding of the
whole image and the CLIP embedding of the expression. Both are fixed for a given backbone, so they
are computed once and stored as tensors (``torch.save`` of a plain dict; the study used a 1.2 GB
CSV) under ``<cache>/regressor-embeddings/<checksum[:16]>/<layout>-<split>-<fingerprint[:16]>.pt``,
where ``<layout>`` is the dataset of the family and its split-by (``refcocog_umd``,
``refcoco_unc``): a split name alone (``val``) does not say which refs it holds.

Each file records the backbone's checksum and a fingerprint of the data it was computed from:

* a file whose checksum names another backbone is refused
  (:class:`~refcocog_tools.models.embedding_files.EmbeddingCacheError`): its vectors live in another
  embedding space, and silently training on them would be wrong;
* a file that cannot be read (truncated, corrupt, wrong layout) or that describes other data is
  recomputed and rewritten, never trusted.

The header check is the one both embedding caches share (``embedding_files``); the prompt cache
of the zero-shot methods is ``prompt_cache``.

Files are written atomically (temporary file + rename), so an interrupted run leaves no partial
cache behind.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from refcocog_tools.core.files import atomic_torch_save, cache_dir, remove_stale_temporaries
from refcocog_tools.data.dataset import RefCOCOg, load_rgb_image
from refcocog_tools.models.embedding_files import (
    SPLIT_EMBEDDINGS_FORMAT,
    Encoder,
    load_embedding_file,
)


@dataclass
class SplitEmbeddings:
    """One backbone's embeddings of one split: every image once, every distinct expression once."""

    backbone_name: str
    backbone_checksum: str
    split: str
    fingerprint: str
    image_ids: list[int]
    image_embeddings: torch.Tensor  # (I, D) float32, row i is image_ids[i]
    sentences: list[str]
    text_embeddings: torch.Tensor  # (S, D) float32, row j is sentences[j]

    @property
    def embed_dim(self) -> int:
        return int(self.image_embeddings.shape[1])

    def image_rows(self, image_ids: Sequence[int]) -> torch.Tensor:
        """Row indices of ``image_ids`` in ``image_embeddings``."""
        index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        return torch.tensor([index[i] for i in image_ids], dtype=torch.long)

    def text_rows(self, sentences: Sequence[str]) -> torch.Tensor:
        """Row indices of ``sentences`` in ``text_embeddings``."""
        index = {sentence: j for j, sentence in enumerate(self.sentences)}
        return torch.tensor([index[s] for s in sentences], dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLIT_EMBEDDINGS_FORMAT,
            "backbone_name": self.backbone_name,
            "backbone_checksum": self.backbone_checksum,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "image_ids": list(self.image_ids),
            "image_embeddings": self.image_embeddings.contiguous(),
            "sentences": list(self.sentences),
            "text_embeddings": self.text_embeddings.contiguous(),
        }


def data_fingerprint(dataset: RefCOCOg) -> str:
    """SHA-256 over what the embeddings depend on: each image file's name and size, each
    sentence, and which split of which dataset of the family they are (RefCOCO unc's ``val`` and
    RefCOCOg umd's ``val`` never share a cache file, even where their contents coincide).

    File sizes rather than file hashes: hashing the ~13 GB of COCO images on every run would cost
    more than the cache saves, and a re-encoded image almost always changes size.
    """
    images = []
    for record in {r.image_id: r for r in dataset.records}.values():
        try:
            size = record.image_path.stat().st_size
        except OSError:
            size = -1
        images.append([record.image_id, record.image_path.name, size])
    layout = dataset.layout
    payload = {"dataset": layout.dataset, "split_by": layout.split_by, "split": dataset.split,
               "images": sorted(images), "sentences": dataset.sentences()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def default_cache_root() -> Path:
    return cache_dir() / "regressor-embeddings"


def cache_path(backbone: Encoder, dataset: RefCOCOg, cache_root: str | Path | None = None,
               fingerprint: str | None = None, raw: bool = False) -> Path:
    """Where the embeddings of ``dataset`` by ``backbone`` are kept: one file per layout and
    split (``raw``: the unnormalised ones, in a file of their own)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    fingerprint = fingerprint or data_fingerprint(dataset)
    suffix = "-raw" if raw else ""
    name = f"{dataset.layout.name}-{dataset.split}-{fingerprint[:16]}{suffix}.pt"
    return root / backbone.checksum[:16] / name


def _from_dict(data: dict[str, Any]) -> SplitEmbeddings:
    """Rebuild from a header-checked dict, checking every field; ValueError when anything is off."""
    images, texts = data.get("image_embeddings"), data.get("text_embeddings")
    image_ids, sentences = data.get("image_ids"), data.get("sentences")
    if not (isinstance(images, torch.Tensor) and isinstance(texts, torch.Tensor)):
        raise ValueError("embeddings missing")
    if not (isinstance(image_ids, list) and isinstance(sentences, list)):
        raise ValueError("image ids or sentences missing")
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"bad embedding shapes {tuple(images.shape)} / {tuple(texts.shape)}")
    if images.shape[0] != len(image_ids) or texts.shape[0] != len(sentences):
        raise ValueError("row counts do not match the ids")
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise ValueError("non-finite embeddings")
    return SplitEmbeddings(
        backbone_name=str(data.get("backbone_name")),
        backbone_checksum=str(data.get("backbone_checksum")),
        split=str(data.get("split")),
        fingerprint=str(data.get("fingerprint")),
        image_ids=[int(i) for i in image_ids],
        image_embeddings=images.float(),
        sentences=[str(s) for s in sentences],
        text_embeddings=texts.float(),
    )


def load_cache(path: str | Path, backbone: Encoder,
               fingerprint: str | None = None) -> SplitEmbeddings | None:
    """Load a cache file, or None when it is missing, unreadable or describes other data.

    Raises :class:`EmbeddingCacheError` when the file was written by another backbone.
    """
    path = Path(path)
    if path.parent.is_dir():
        remove_stale_temporaries(path.parent)
    if not path.is_file():
        return None
    data = load_embedding_file(path, SPLIT_EMBEDDINGS_FORMAT, backbone.checksum,
                               checksum_field="backbone_checksum", backbone_name=backbone.name)
    if data is None:
        return None
    try:
        embeddings = _from_dict(data)
    except ValueError as err:
        warnings.warn(f"{path}: invalid embedding cache ({err}); recomputing", stacklevel=2)
        return None
    if fingerprint is not None and embeddings.fingerprint != fingerprint:
        warnings.warn(f"{path}: embedding cache computed from other data; recomputing",
                      stacklevel=2)
        return None
    return embeddings


def save_cache(path: str | Path, embeddings: SplitEmbeddings) -> Path:
    """Write atomically, so a crash never leaves a half-written cache."""
    return atomic_torch_save(path, embeddings.to_dict())


def compute_embeddings(dataset: RefCOCOg, backbone: Encoder, image_batch: int = 32,
                       fingerprint: str | None = None, progress: bool = False,
                       raw: bool = False) -> SplitEmbeddings:
    """Encode each image of the split (whole image) and each distinct expression once;
    L2-normalised, or as CLIP outputs them with ``raw`` (the encoder must then take
    ``normalize=False``, as ``backbones.ClipBackbone`` does)."""
    options = {"normalize": False} if raw else {}
    records = list({r.image_id: r for r in dataset.records}.values())
    if not records:
        raise ValueError(f"the {dataset.split} split of {dataset.root} has no refs to embed")
    chunks = []
    steps = range(0, len(records), image_batch)
    if progress:
        steps = tqdm(steps, desc=f"{backbone.name} {dataset.split} images", unit="batch")
    for start in steps:
        # Decode a batch at a time: the whole train split does not fit in memory as PIL images.
        batch = [load_rgb_image(r.image_path) for r in records[start:start + image_batch]]
        chunks.append(backbone.encode_images(batch, **options).float().cpu())
    sentences = list(dict.fromkeys(dataset.sentences()))
    return SplitEmbeddings(
        backbone_name=backbone.name,
        backbone_checksum=backbone.checksum,
        split=dataset.split,
        fingerprint=fingerprint or data_fingerprint(dataset),
        image_ids=[r.image_id for r in records],
        image_embeddings=torch.cat(chunks),
        sentences=sentences,
        text_embeddings=backbone.encode_texts(sentences, **options).float().cpu(),
    )


def split_embeddings(dataset: RefCOCOg, backbone: Encoder, cache_root: str | Path | None = None,
                     path: str | Path | None = None, progress: bool = False,
                     raw: bool = False) -> SplitEmbeddings:
    """The embeddings of ``dataset`` by ``backbone``: from the cache when valid, else computed
    and cached. ``path`` overrides the default file location inside ``cache_root``; ``raw``
    gives the unnormalised embeddings (the study's regressor inputs)."""
    fingerprint = data_fingerprint(dataset)
    path = Path(path) if path is not None else cache_path(backbone, dataset, cache_root,
                                                          fingerprint, raw=raw)
    embeddings = load_cache(path, backbone, fingerprint)
    if embeddings is None:
        embeddings = compute_embeddings(dataset, backbone, fingerprint=fingerprint,
                                        progress=progress, raw=raw)
        save_cache(path, embeddings)
    return embeddings

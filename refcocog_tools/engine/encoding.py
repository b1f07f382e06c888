"""The engine's "encode" stage: the inputs of many images encoded in shared batches.

An ``Encoding`` is one set of backbones sharing a cache: the method's (a ``BatchedMethod``)
or the crop-cosine metric's. Each image's inputs are prepared (``prepare``: only those not
cached), queued across images in batches (``queue``: one batch in flight while the host works)
and stored into the cache when they land (``store``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

import torch

from refcocog_tools.core.devices import concatenate_for
from refcocog_tools.methods.interface import BatchedMethod, EncodeRequest, GroundingMethod
from refcocog_tools.models.backbones import ClipBackbone, QueuedEmbeddings
from refcocog_tools.models.prompt_cache import EmbeddingCache

Queued = list[tuple[ClipBackbone, list[str], QueuedEmbeddings]]


class Encoding:
    """One set of backbones sharing a cache: what the engine encodes for them, in batches.
    ``role``: whose inputs they are, the method's or the crop-cosine metric's."""

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache,
                 role: Literal["method", "metric"]) -> None:
        self.backbones = list(backbones)
        self.cache = cache
        self.role = role
        self.resolutions = list(dict.fromkeys(b.input_resolution for b in self.backbones))

    def prepare(self, request: EncodeRequest, skip: Collection[str] = ()) -> dict[str, Any]:
        """The request's inputs not cached yet (nor in ``skip``: keys another encoding of the
        same cache draws already): keys, and model inputs per resolution, drawn on the
        backbones' device in the main process and on the CPU in a DataLoader worker (whose
        copy of the cache is the one the run started with)."""
        in_worker = torch.utils.data.get_worker_info() is not None
        device = "cpu" if in_worker else self.backbones[0].device
        first = {k: i for i, k in reversed(list(enumerate(request.keys)))}
        missing = [k for k in first if k not in skip
                   and not all(self.cache.has_image(b, k) for b in self.backbones)]
        indices = [first[k] for k in missing]
        return {"keys": missing, "texts": request.texts,
                "pixels": [request.draw(r, indices, device) if indices else None
                           for r in self.resolutions]}

    def shares(self, other: Encoding) -> bool:
        """Whether ``other`` fills the same cache tables (the same cache and backbones)."""
        return (self.cache is other.cache
                and [b.checksum for b in self.backbones] == [b.checksum for b in other.backbones])

    @property
    def on_gpu(self) -> bool:
        """Whether the models run on an accelerator rather than the CPU."""
        return any(b.device.type != "cpu" for b in self.backbones)

    def drawn_on_device(self, request: EncodeRequest) -> bool:
        """Whether ``request``'s inputs are drawn by the main process on the models' device
        (tensor drawing, models on a GPU: drawing and resizing there keeps the CPU from
        bounding the GPU) rather than in host memory (in the DataLoader workers, if any)."""
        return request.on_device and self.on_gpu

    def queue(self, prepared: Sequence[dict[str, Any]]) -> Queued:
        """Encode the prepared inputs of many images in shared batches, without waiting for
        the images' embeddings (``store`` puts them into the cache). The texts are encoded
        first, at once: waiting for them then waits only for work queued before. Every
        forward pass has the backbone's ``fixed_batch`` inputs (the last one padded): which
        inputs share a batch depends on ``--batch-size`` and ``--workers``, and a kernel's
        float sums on the batch's shape, so an embedding would otherwise too."""
        texts = list(dict.fromkeys(t for p in prepared for t in p["texts"]))
        for backbone in self.backbones if texts else ():
            self.cache.texts(backbone, texts)  # every distinct prompt in one text batch
        keys = [k for p in prepared for k in p["keys"]]
        queued = []
        for backbone in self.backbones:
            which = self.resolutions.index(backbone.input_resolution)
            pixels = [p["pixels"][which] for p in prepared if p["pixels"][which] is not None]
            if pixels:
                inputs = concatenate_for(pixels, backbone.device)
                queued.append((backbone, keys, backbone.queue_images(
                    inputs, backbone.fixed_batch, pad_last=True)))
        for p in prepared:
            p["pixels"] = None  # the queued batch holds its own copy: free these meanwhile
        return queued

    def store(self, queued: Queued) -> None:
        """Wait for the queued embeddings and put them into the cache."""
        for backbone, keys, embeddings in queued:
            self.cache.put_images(backbone, keys, embeddings.result())


def encodings_of(method: GroundingMethod, metric_backbones: Sequence[ClipBackbone],
                 metric_cache: EmbeddingCache) -> list[Encoding]:
    """What the engine batches: the method's declared inputs, then the metric's crops."""
    found = []
    if isinstance(method, BatchedMethod):
        found.append(Encoding(method.backbones, method.cache, "method"))
    if metric_backbones:
        found.append(Encoding(metric_backbones, metric_cache, "metric"))
    return found

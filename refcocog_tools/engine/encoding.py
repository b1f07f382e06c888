"""The engine's "encode" stage: the inputs of many images encoded in shared batches.

An ``Encoding`` is one set of backbones sharing a cache: the method's (a ``BatchedMethod``)
or the crop-cosine metric's. Each image's inputs are prepared (``prepare``: only those not
cached), queued across images in batches (``queue``: one batch in flight while the host works)
and stored into the cache when they land (``store``).

Texts are encoded in whole forward passes of ``fixed_batch`` texts: a batch's texts that do
not fill a pass wait for the next batch's, and only the texts a landing batch needs are ever
encoded in a padded pass (at the end of a run). A batch of 17 texts then costs one pass and
a sixteenth of the next, not two passes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from refcocog_tools.core.devices import concatenate_for
from refcocog_tools.methods.interface import BatchedMethod, EncodeRequest, GroundingMethod
from refcocog_tools.models.backbones import ClipBackbone, QueuedEmbeddings
from refcocog_tools.models.prompt_cache import EmbeddingCache


@dataclass
class Queued:
    """One batch on its way: each backbone's image keys and embeddings, and the texts its
    images' predictions read."""

    images: list[tuple[ClipBackbone, list[str], QueuedEmbeddings]] = field(default_factory=list)
    texts: tuple[str, ...] = ()


class Encoding:
    """One set of backbones sharing a cache: what the engine encodes for them, in batches.
    ``role``: whose inputs they are, the method's or the crop-cosine metric's."""

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache,
                 role: Literal["method", "metric"]) -> None:
        self.backbones = list(backbones)
        self.cache = cache
        self.role = role
        self.resolutions = list(dict.fromkeys(b.input_resolution for b in self.backbones))
        self._waiting_texts: list[str] = []  # texts a queued batch needs, not encoded yet
        self._in_flight_texts: tuple[str, ...] = ()  # the texts of the batch queued last

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
        the images' embeddings (``store`` puts them into the cache). Texts first: those of
        the batch queued before (it lands next) and as many whole passes of the waiting ones
        as they fill; waiting for them then waits only for work queued before. Every forward
        pass has the backbone's ``fixed_batch`` inputs (the last one padded): which inputs
        share a batch depends on ``--batch-size`` and ``--workers``, and a kernel's float sums
        on the batch's shape, so an embedding would otherwise too."""
        texts = tuple(dict.fromkeys(t for p in prepared for t in p["texts"]))
        self._waiting_texts = list(dict.fromkeys([*self._waiting_texts, *texts]))
        self._encode_texts(self._in_flight_texts)
        self._in_flight_texts = texts
        keys = [k for p in prepared for k in p["keys"]]
        queued = Queued(texts=texts)
        for backbone in self.backbones:
            which = self.resolutions.index(backbone.input_resolution)
            pixels = [p["pixels"][which] for p in prepared if p["pixels"][which] is not None]
            if pixels:
                inputs = concatenate_for(pixels, backbone.device)
                queued.images.append((backbone, keys, backbone.queue_images(
                    inputs, backbone.fixed_batch, pad_last=True)))
        for p in prepared:
            p["pixels"] = None  # the queued batch holds its own copy: free these meanwhile
        return queued

    def store(self, queued: Queued) -> None:
        """Encode the texts the batch needs that still wait, then wait for its image
        embeddings and put them into the cache."""
        self._encode_texts(queued.texts)
        for backbone, keys, embeddings in queued.images:
            self.cache.put_images(backbone, keys, embeddings.result())

    def _encode_texts(self, needed: Collection[str]) -> None:
        """Encode the waiting texts in whole passes: all of ``needed`` (the last of their
        passes padded where the waiting texts do not fill it), and any further passes the
        waiting texts fill; the rest waits for the next batch's texts."""
        needed = set(needed)
        for backbone in self.backbones:
            waiting = [t for t in self._waiting_texts if not self.cache.has_text(backbone, t)]
            rows = backbone.fixed_batch
            through = max((i + 1 for i, t in enumerate(waiting) if t in needed), default=0)
            count = max(-(-through // rows) * rows, len(waiting) // rows * rows)
            if waiting[:count]:
                self.cache.texts(backbone, waiting[:count])  # whole passes (one padded)
        self._waiting_texts = [t for t in self._waiting_texts
                               if not all(self.cache.has_text(b, t) for b in self.backbones)]


def encodings_of(method: GroundingMethod, metric_backbones: Sequence[ClipBackbone],
                 metric_cache: EmbeddingCache) -> list[Encoding]:
    """What the engine batches: the method's declared inputs, then the metric's crops."""
    found = []
    if isinstance(method, BatchedMethod):
        found.append(Encoding(method.backbones, method.cache, "method"))
    if metric_backbones:
        found.append(Encoding(metric_backbones, metric_cache, "metric"))
    return found

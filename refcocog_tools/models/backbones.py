"""A loaded CLIP backbone: its model, preprocessing and provenance, and how it encodes images
and texts (fixed-size forward passes, one batch in flight on a GPU). Loading by name or path is
``clip_loading``'s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from refcocog_tools.core.devices import host_to_device
from refcocog_tools.models.openai_clip import clip

__all__ = ["BackboneError", "ClipBackbone", "QueuedEmbeddings", "prepare_for_device"]


class BackboneError(RuntimeError):
    """A model cannot be loaded; the message says which file to put where."""


def prepare_for_device(model: clip.model.CLIP, device: torch.device) -> clip.model.CLIP:
    """``model`` on ``device``: on CUDA in fp16 weights with the image tower in
    ``channels_last`` (the tensor-core layout; about a fifth faster for RN50x16 than fp32
    weights under autocast); on CPU unchanged, float32."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.half()
        model.visual.to(memory_format=torch.channels_last)
    return model


def _to_device(batch: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch of model inputs on ``device``: from pinned host memory without blocking, in
    ``channels_last`` on CUDA. On a CPU the batch stays contiguous: ``channels_last`` would
    encode about a fifth faster there, but changes toy-rn's image embeddings by up to 4e-6
    (other convolution kernels), and so the last digits of results already published."""
    if device.type != "cuda":
        return batch.to(device, dtype)
    if batch.device.type == "cpu":
        batch = host_to_device(batch, device)
    return batch.to(dtype).contiguous(memory_format=torch.channels_last)


# Rows of every forward pass whose embeddings must not depend on a run's settings (the prompt
# cache's and the evaluation engine's: ``ClipBackbone.fixed_batch``). CPU and GPU kernels
# choose their blocking, and so the order of their float sums, by the batch's shape: an input
# encoded beside 1 other and beside 15 others gets embeddings that differ in the last bits
# (one row's result does not depend on which inputs share its batch, only on how many).
# A constant per device type, never a setting: a CPU encodes as fast in batches of 16 as of
# 64, and 64 fills a GPU with RN50x16.
FIXED_BATCH_CPU = 16
FIXED_BATCH_ACCELERATOR = 64


def _filled(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` with copies of its last input appended up to ``rows`` inputs."""
    if len(batch) >= rows:
        return batch
    return torch.cat([batch, batch[-1:].expand(rows - len(batch), *batch.shape[1:])])


class QueuedEmbeddings:
    """Embeddings queued on a device, on their way back to host memory.

    On CUDA the copy goes into pinned memory without blocking, and an event marks its end, so
    ``result`` waits for these embeddings only, not for work queued after them (a plain
    ``.cpu()`` would wait for everything queued so far). Elsewhere they are copied at once.
    """

    def __init__(self, vectors: torch.Tensor) -> None:
        self._done: torch.cuda.Event | None = None
        if vectors.device.type == "cuda":
            self._host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
            self._host.copy_(vectors, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._host = vectors.cpu()

    def result(self) -> torch.Tensor:
        """(N, D) float32 embeddings in host memory, once the device has written them."""
        if self._done is not None:
            self._done.synchronize()
        return self._host


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------
@dataclass
class ClipBackbone:
    """A loaded CLIP model with its preprocessing and provenance."""

    name: str
    model: clip.model.CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]
    device: torch.device
    checksum: str
    checkpoint: Path
    untrained: bool
    # Trained here on the synthetic world (train-toy-clip): real learning, but no RefCOCOg.
    toy: bool = False

    @property
    def input_resolution(self) -> int:
        """Side of the square image the vision tower takes."""
        return int(self.model.visual.input_resolution)

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image/text embedding space."""
        return int(self.model.text_projection.shape[1])

    @property
    def fixed_batch(self) -> int:
        """Rows of every forward pass the prompt cache and the evaluation engine run (with
        ``pad_last``), so an embedding never depends on ``--batch-size`` or ``--workers``."""
        return FIXED_BATCH_CPU if self.device.type == "cpu" else FIXED_BATCH_ACCELERATOR

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context every forward pass of this model runs in.

        On GPU the weights are fp16 (``prepare_for_device``) and autocast keeps any float32
        input or layer in fp16 too, while LayerNorm runs in float32 (CLIP's LayerNorm hands
        it float32 inputs, which fp16 weights would refuse outside autocast). On CPU
        everything is float32 and this does nothing."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _image_batches(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int
    ) -> Iterator[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3:
                raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(images.shape)}")
            for start in range(0, len(batch), batch_size):
                yield batch[start:start + batch_size]
            return
        images = list(images)
        for start in range(0, len(images), batch_size):
            # Preprocess per batch so a long list never holds every tensor at once.
            yield torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])

    def encode_images(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 64,
        normalize: bool = True, *, pad_last: bool = False,
    ) -> torch.Tensor:
        """(N, D) float32 CPU embeddings, L2-normalised (raw with ``normalize=False``).

        ``images`` are PIL images (preprocessed here) or an already-preprocessed batch.
        ``pad_last``: the last batch is filled to ``batch_size`` inputs (copies of its last
        one, whose embeddings are dropped), so every forward pass has the same shape and an
        input's embedding is the same however many inputs share the call.
        """
        return self.queue_images(images, batch_size, normalize, pad_last=pad_last).result()

    @torch.no_grad()
    def queue_images(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 64,
        normalize: bool = True, *, pad_last: bool = False,
    ) -> QueuedEmbeddings:
        """``encode_images`` without waiting for the device: the batches are queued, and so is
        the copy of their embeddings back to host memory; ``.result()`` waits for them. The
        host meanwhile prepares the next inputs while a GPU encodes these (on a CPU the work
        is done before this returns)."""
        dtype = self.model.visual.conv1.weight.dtype
        out = []
        with self.autocast():
            for batch in self._image_batches(images, batch_size):
                inputs = _to_device(batch, self.device, dtype)
                if pad_last and len(batch) < batch_size:  # filled on the device: no more copied
                    inputs = _to_device(_filled(inputs, batch_size), self.device, dtype)
                feats = self.model.encode_image(inputs)[:len(batch)].float()
                out.append(F.normalize(feats, dim=-1) if normalize else feats)
        if not out:
            return QueuedEmbeddings(torch.empty(0, self.embed_dim))
        return QueuedEmbeddings(torch.cat(out))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256,
                     normalize: bool = True, *, pad_last: bool = False) -> torch.Tensor:
        """(N, D) float32 CPU embeddings, L2-normalised (raw with ``normalize=False``).

        Texts longer than the context (77 tokens) are truncated, never an error. ``pad_last``:
        as for ``encode_images``, every forward pass gets ``batch_size`` texts.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        with self.autocast():
            for start in range(0, len(texts), batch_size):
                tokens = clip.tokenize(
                    texts[start:start + batch_size],
                    context_length=self.model.context_length,
                    truncate=True,
                )
                count = len(tokens)
                if pad_last:
                    tokens = _filled(tokens, batch_size)
                feats = self.model.encode_text(tokens.to(self.device))[:count].float()
                out.append((F.normalize(feats, dim=-1) if normalize else feats).cpu())
        if not out:
            return torch.empty(0, self.embed_dim)
        return torch.cat(out)



"""The interface every grounding method offers the engine (the methods by name: ``registry``).

All methods share ``predict(image, expressions, proposals) -> Prediction`` and ``config()``.
A method never loads a model: it receives backbones (and, for red-circle, debias sentences).
CLIP methods also declare, per image, what they need encoded (``encode_request``): the engine
encodes it for many images at once and ``predict`` then finds every embedding cached. A method
that can predict from that request (``PredictsFromRequest``) is handed it, so the request of an
image is built once however many referred objects the image has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.structures import Proposals


class GroundingMethod(Protocol):
    """What the engine calls. ``expressions`` are those of ONE referred object: the engine
    never mixes the refs of an image in one call, so an answer cannot depend on the other
    objects' expressions (methods that normalise over the expressions of a call, such as
    red-circle's debiasing, rely on it)."""

    name: str

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction: ...

    def config(self) -> dict[str, Any]: ...


@dataclass
class EncodeRequest:
    """What a method will look up in its embedding cache for one image, declared before it
    predicts, so that the engine can encode the inputs of many images in shared batches.

    ``keys[i]`` names image input ``i``; ``draw(resolution, indices, device)`` returns the
    model inputs ``(len(indices), 3, R, R)`` of those inputs (it may run in a DataLoader
    worker); ``texts`` are the prompts the method will encode. ``on_device``: ``draw`` does
    its work with tensor operations on the device it is given, so for models on a GPU the
    engine draws these inputs there, in the main process; otherwise (Pillow drawing) it
    draws them in host memory, in its DataLoader workers when it has any.
    ``proposal_indices``: which proposals the inputs are of, for a method that keeps only
    some (red-circle's area filter); None: every proposal.
    """

    keys: list[str]
    draw: Callable[[int, Sequence[int], str | torch.device], torch.Tensor]
    texts: list[str] = field(default_factory=list)
    on_device: bool = False
    proposal_indices: torch.Tensor | None = None

    def without_drawing(self) -> EncodeRequest:
        """This request without its ``draw`` (a closure over the image, which cannot leave a
        DataLoader worker): what a method reads once the inputs are encoded (keys, texts,
        proposal indices), sent back to the main process with the drawn inputs."""
        return EncodeRequest(self.keys, drawn_elsewhere, self.texts, self.on_device,
                             self.proposal_indices)

    @property
    def can_draw(self) -> bool:
        """Whether ``draw`` can draw (False for a request sent back by a worker)."""
        return self.draw is not drawn_elsewhere


def drawn_elsewhere(resolution: int, indices: Sequence[int],
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``draw`` of a request whose inputs a DataLoader worker drew (and the engine has
    encoded): asking it to draw again is the engine's mistake."""
    raise RuntimeError("this request's inputs were drawn in a DataLoader worker; the engine "
                       "rebuilds a request it has to draw from")


@runtime_checkable
class BatchedMethod(Protocol):
    """A method whose CLIP inputs the engine may encode across images (optional)."""

    backbones: list[ClipBackbone]
    cache: EmbeddingCache

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest: ...


@runtime_checkable
class PredictsFromRequest(BatchedMethod, Protocol):
    """A batched method that predicts from a request already built for the image (optional).

    ``request`` is ``encode_request(image, E, proposals)`` for any expressions ``E`` of the
    image (the engine passes all of them, once per image); the method reads its image inputs
    (keys, ``draw``, ``proposal_indices``) and makes its text prompts from ``expressions``, so
    the answer is the one ``predict(image, expressions, proposals)`` gives.
    """

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals
                             ) -> Prediction: ...

"""Every grounding method behind one name, and the constructor the engine and CLI use.

All methods share ``predict(image, expressions, proposals) -> Prediction`` and ``config()``.
A method never loads a model: it receives backbones (and, for red-circle, debias sentences).
CLIP methods also declare, per image, what they need encoded (``encode_request``): the engine
encodes it for many images at once and ``predict`` then finds every embedding cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from .backbones import ClipBackbone
from .prediction import Prediction
from .prompt_cache import EmbeddingCache
from .proposals import Proposals

METHOD_NAMES = (
    "baseline", "color-background", "color-overlay", "red-circle", "gradcam",
    "regressor", "relations", "random", "largest", "center",
)
# The book writes "colour", the method names say "color": both spellings name the same method.
SPELLINGS = {"colour-background": "color-background", "colour-overlay": "color-overlay"}
NEEDS_CLIP = frozenset({"baseline", "color-background", "color-overlay", "red-circle", "gradcam",
                        "regressor", "relations"})
# The visual-prompt methods the relations method can score its noun phrases with: red-circle,
# the crop of the baseline, ReCLIP's blur isolation (the proposal sharp on a blurred image, no
# marker), or none (labels and geometry alone).
ENTITY_SCORERS = ("red-circle", "crop", "blur", "none")


def canonical_method(name: str) -> str:
    """The method's name with either spelling: ``colour-overlay`` is ``color-overlay``."""
    return SPELLINGS.get(name, name)


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
    worker); ``texts`` are the prompts the method will encode.
    """

    keys: list[str]
    draw: Callable[[int, Sequence[int], str | torch.device], torch.Tensor]
    texts: list[str] = field(default_factory=list)


@runtime_checkable
class BatchedMethod(Protocol):
    """A method whose CLIP inputs the engine may encode across images (optional)."""

    backbones: list[ClipBackbone]
    cache: EmbeddingCache

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest: ...


def make_method(
    name: str,
    backbones: Sequence[ClipBackbone] = (),
    *,
    cache: EmbeddingCache | None = None,
    debias_pool: Sequence[str] = (),
    checkpoint: str | Path | None = None,
    seed: int = 0,
    **options: Any,
) -> GroundingMethod:
    """Build method ``name``; ``options`` go to its constructor (e.g. red-circle's n_debias)."""
    name = canonical_method(name)
    if name == "baseline":
        from .baseline import CropMatching

        return CropMatching(backbones, cache=cache, **options)
    if name == "color-background":
        from .overlay import ColourBackground

        return ColourBackground(backbones, cache=cache, **options)
    if name == "color-overlay":
        from .overlay import ColourOverlay

        return ColourOverlay(backbones, cache=cache, **options)
    if name == "red-circle":
        from .red_circle import RedCircle

        return RedCircle(backbones, debias_pool, cache=cache, debias_seed=seed, **options)
    if name == "gradcam":
        from .gradcam import GradCam

        return GradCam(backbones, **options)
    if name == "regressor":
        if checkpoint is None:
            raise ValueError("method 'regressor' needs --checkpoint (a train-regressor best.pt)")
        from .regressors import RegressorMethod

        return RegressorMethod(backbones, checkpoint, **options)
    if name == "relations":
        from .relations import RelationsMethod

        scorer_name = options.pop("entity_scorer", "red-circle")
        scorer_options = dict(options.pop("scorer_options", None) or {})
        scorer = make_entity_scorer(scorer_name, backbones, cache=cache, debias_pool=debias_pool,
                                    seed=seed, **scorer_options)
        return RelationsMethod(scorer, scorer_name=scorer_name, **options)
    if name in ("random", "largest", "center"):
        from .floors import CenterProposal, LargestProposal, RandomProposal

        if name == "random":
            return RandomProposal(seed=seed)
        return LargestProposal() if name == "largest" else CenterProposal()
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")


def make_entity_scorer(
    name: str,
    backbones: Sequence[ClipBackbone] = (),
    *,
    cache: EmbeddingCache | None = None,
    debias_pool: Sequence[str] = (),
    seed: int = 0,
    **options: Any,
) -> GroundingMethod | None:
    """The method that scores noun phrases for ``relations`` (see ``ENTITY_SCORERS``)."""
    if name == "none":
        return None
    if name == "red-circle":
        return make_method("red-circle", backbones, cache=cache, debias_pool=debias_pool,
                           seed=seed, **options)
    if name == "crop":
        return make_method("baseline", backbones, cache=cache, **options)
    if name == "blur":
        blur = {"variants": ("blur",), "marker": "none", "n_debias": 0, "prefix": "",
                **options}
        return make_method("red-circle", backbones, cache=cache, seed=seed, **blur)
    raise ValueError(f"unknown entity scorer {name!r}; choose from {', '.join(ENTITY_SCORERS)}")

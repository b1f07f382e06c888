"""The study's baseline: crop every proposal, match crops and expressions with CLIP, argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .backbones import ClipBackbone
from .cache import EmbeddingCache, image_fingerprint
from .prediction import Prediction
from .proposals import Proposals
from .visual_prompts import crop


def box_key(box: torch.Tensor | Sequence[float]) -> str:
    """Boxes in cache keys, rounded to 1/100 px so float noise does not split entries."""
    return ",".join(f"{float(v):.2f}" for v in box)


def ensemble_similarity(
    backbones: Sequence[ClipBackbone],
    cache: EmbeddingCache,
    texts: Sequence[str],
    image_keys: Sequence[str],
    render: Any,
) -> torch.Tensor:
    """(len(texts), len(image_keys)) cosine similarities averaged over the backbones.

    Averaging the similarity matrices is the study's ensemble of several CLIP backbones.
    """
    total = None
    for backbone in backbones:
        text = cache.texts(backbone, texts)
        visual = cache.images(backbone, image_keys, render)
        sim = text @ visual.T
        total = sim if total is None else total + sim
    assert total is not None, "at least one backbone is needed"
    return total / len(backbones)


class CropMatching:
    """Baseline: CLIP similarity of each expression with each proposal's crop."""

    name = "baseline"

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache | None = None,
                 prefix: str = "") -> None:
        if not backbones:
            raise ValueError("the baseline needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.prefix = prefix

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "prefix": self.prefix}

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        fingerprint = image_fingerprint(image)
        boxes = proposals.boxes
        keys = [f"crop:{fingerprint}:{box_key(b)}" for b in boxes]
        scores = ensemble_similarity(
            self.backbones, self.cache, [self.prefix + e for e in expressions], keys,
            lambda idx: [crop(image, boxes[i]) for i in idx],
        )
        return Prediction.from_scores(scores, proposals)

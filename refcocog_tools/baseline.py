"""The study's baseline: crop every proposal, match crops and expressions with CLIP, argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .backbones import ClipBackbone
from .methods import EncodeRequest
from .prediction import Prediction
from .prompt_cache import EmbeddingCache, image_fingerprint
from .proposals import Proposals
from .render import pil_preprocess
from .visual_prompts import crop


def box_key(box: torch.Tensor | Sequence[float]) -> str:
    """Boxes in cache keys, rounded to 1/100 px so float noise does not split entries."""
    return ",".join(f"{float(v):.2f}" for v in box)


def crop_request(image: Image.Image, boxes: torch.Tensor, texts: Sequence[str] = ()
                 ) -> EncodeRequest:
    """The crops of ``boxes`` as CLIP inputs (CLIP's own preprocessing): the baseline's inputs
    and the crop-cosine metric's, under the same keys so neither encodes a crop twice."""
    fingerprint = image_fingerprint(image)

    def draw(resolution: int, indices: Sequence[int], device: str | torch.device = "cpu"
             ) -> torch.Tensor:
        transform = pil_preprocess(resolution)
        return torch.stack([transform(crop(image, boxes[i])) for i in indices]).to(device)

    return EncodeRequest([f"crop:{fingerprint}:{box_key(b)}" for b in boxes], draw, list(texts))


def request_embeddings(cache: EmbeddingCache, backbone: ClipBackbone, request: EncodeRequest
                       ) -> torch.Tensor:
    """``(len(request.keys), D)`` embeddings of a request's inputs, drawing only those not
    cached (the engine has usually encoded them all already)."""
    return cache.images(backbone, request.keys,
                        lambda idx: request.draw(backbone.input_resolution, idx, backbone.device))


def ensemble_similarity(
    backbones: Sequence[ClipBackbone],
    cache: EmbeddingCache,
    texts: Sequence[str],
    request: EncodeRequest,
) -> torch.Tensor:
    """(len(texts), len(request.keys)) cosine similarities averaged over the backbones.

    Averaging the similarity matrices is the study's ensemble of several CLIP backbones.
    """
    total = None
    for backbone in backbones:
        text = cache.texts(backbone, texts)
        sim = text @ request_embeddings(cache, backbone, request).T
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

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        return crop_request(image, proposals.boxes, [self.prefix + e for e in expressions])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        request = self.encode_request(image, expressions, proposals)
        scores = ensemble_similarity(self.backbones, self.cache, request.texts, request)
        return Prediction.from_scores(scores, proposals)

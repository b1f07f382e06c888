"""The study's baseline: crop every proposal, match crops and expressions with CLIP, argmax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from refcocog_tools.methods.interface import EncodeRequest
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.scoring import crop_request, ensemble_similarity
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.structures import Proposals


@dataclass(frozen=True)
class CropMatchingOptions:
    """The baseline's settings; ``prefix`` goes before every expression (the study: none)."""

    prefix: str = ""


class CropMatching:
    """Baseline: CLIP similarity of each expression with each proposal's crop."""

    name = "baseline"

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache | None = None,
                 options: CropMatchingOptions = CropMatchingOptions()) -> None:
        if not backbones:
            raise ValueError("the baseline needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.prefix = options.prefix

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "prefix": self.prefix}

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        return crop_request(image, proposals.boxes, [self.prefix + e for e in expressions])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        return self.predict_from_request(self.encode_request(image, expressions, proposals),
                                         image, expressions, proposals)

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals) -> Prediction:
        """``predict`` from this image's crop request, already built (the engine builds it
        once per image)."""
        texts = [self.prefix + e for e in expressions]
        scores = ensemble_similarity(self.backbones, self.cache, texts, request)
        return Prediction.from_scores(scores, proposals)

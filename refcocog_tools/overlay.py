"""The study's colour encodings of position (its section 6.1).

* ``colour-background`` (6.1.1): the full image with everything outside the proposal painted in
  the colour of a 3x3 look-up table cell that holds the proposal's centroid; expressions that
  name a side are augmented with the colours of that side.
* ``colour-overlay`` (6.1.2): the proposal's crop tinted red (left half) or green (right half);
  expressions that say "left" or "right" get the matching " with a ... overlay" suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .backbones import ClipBackbone
from .baseline import box_key, ensemble_similarity
from .methods import EncodeRequest
from .prediction import Prediction
from .prompt_cache import EmbeddingCache, image_fingerprint, params_key
from .proposals import Proposals
from .render import DEFAULT_PREPROCESS, check_preprocess, pil_preprocess
from .visual_prompts import colour_prompts, lut_colour, overlay_prompt, paint_background, tint_crop


class ColourBackground:
    """Position painted on the background; each expression scores by its best colour prompt.

    ``preprocess``: how the painted whole image becomes CLIP's input ("center-crop", CLIP's
    own, or "square", the whole image resized without a crop).
    """

    name = "color-background"

    def __init__(self, backbones: Sequence[ClipBackbone],
                 cache: EmbeddingCache | None = None,
                 preprocess: str = DEFAULT_PREPROCESS) -> None:
        if not backbones:
            raise ValueError("colour-background needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.preprocess = check_preprocess(preprocess)

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "lut": "study 3x3 (x cuts 0.35/0.65, y cuts 0.33/0.67)",
                "preprocess": self.preprocess}

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        fingerprint = image_fingerprint(image)
        boxes = proposals.boxes
        mode = "" if self.preprocess == DEFAULT_PREPROCESS else params_key(
            preprocess=self.preprocess)
        keys = [f"lutbg:{fingerprint}:{mode}{box_key(b)}" for b in boxes]

        def draw(resolution: int, indices: Sequence[int], device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
            transform = pil_preprocess(resolution, self.preprocess)
            return torch.stack([
                transform(paint_background(image, boxes[i], lut_colour(boxes[i], image.size)[1]))
                for i in indices]).to(device)

        return EncodeRequest(keys, draw, [p for e in expressions for p in colour_prompts(e)])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        request = self.encode_request(image, expressions, proposals)
        sim = ensemble_similarity(self.backbones, self.cache, request.texts, request)
        # An expression's score for a proposal is its best-matching augmented prompt.
        rows, start = [], 0
        for expression in expressions:
            count = len(colour_prompts(expression))
            rows.append(sim[start:start + count].max(dim=0).values)
            start += count
        return Prediction.from_scores(torch.stack(rows), proposals)


class ColourOverlay:
    """Crops tinted by side (red left, green right) and prompts with the matching suffix."""

    name = "color-overlay"

    def __init__(self, backbones: Sequence[ClipBackbone],
                 cache: EmbeddingCache | None = None) -> None:
        if not backbones:
            raise ValueError("colour-overlay needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "tints": {"left": "red, alpha 0.5",
                                               "right": "green, alpha 0.5"}}

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        fingerprint = image_fingerprint(image)
        boxes = proposals.boxes

        def draw(resolution: int, indices: Sequence[int], device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
            transform = pil_preprocess(resolution)
            return torch.stack([transform(tint_crop(image, boxes[i])) for i in indices]
                               ).to(device)

        return EncodeRequest([f"tint:{fingerprint}:{box_key(b)}" for b in boxes], draw,
                             [overlay_prompt(e) for e in expressions])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        request = self.encode_request(image, expressions, proposals)
        scores = ensemble_similarity(self.backbones, self.cache, request.texts, request)
        return Prediction.from_scores(scores, proposals)

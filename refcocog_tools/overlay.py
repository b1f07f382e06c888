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
from .cache import EmbeddingCache, image_fingerprint
from .prediction import Prediction
from .proposals import Proposals
from .visual_prompts import colour_prompts, lut_colour, overlay_prompt, paint_background, tint_crop


class ColourBackground:
    """Position painted on the background; each expression scores by its best colour prompt."""

    name = "color-background"

    def __init__(self, backbones: Sequence[ClipBackbone],
                 cache: EmbeddingCache | None = None) -> None:
        if not backbones:
            raise ValueError("colour-background needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "lut": "study 3x3 (x cuts 0.35/0.65, y cuts 0.33/0.67)"}

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        fingerprint = image_fingerprint(image)
        boxes = proposals.boxes
        keys = [f"lutbg:{fingerprint}:{box_key(b)}" for b in boxes]

        def render(indices: list[int]) -> list[Image.Image]:
            return [paint_background(image, boxes[i], lut_colour(boxes[i], image.size)[1])
                    for i in indices]

        prompt_lists = [colour_prompts(e) for e in expressions]
        flat = [p for prompts in prompt_lists for p in prompts]
        sim = ensemble_similarity(self.backbones, self.cache, flat, keys, render)
        # An expression's score for a proposal is its best-matching augmented prompt.
        rows, start = [], 0
        for prompts in prompt_lists:
            rows.append(sim[start:start + len(prompts)].max(dim=0).values)
            start += len(prompts)
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

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        fingerprint = image_fingerprint(image)
        boxes = proposals.boxes
        keys = [f"tint:{fingerprint}:{box_key(b)}" for b in boxes]
        scores = ensemble_similarity(
            self.backbones, self.cache, [overlay_prompt(e) for e in expressions], keys,
            lambda idx: [tint_crop(image, boxes[i]) for i in idx],
        )
        return Prediction.from_scores(scores, proposals)

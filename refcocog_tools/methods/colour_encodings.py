"""The study's colour encodings of position (its section 6.1, the book's chapter 08): the
pictures, the prompts and the two methods that score them.

* ``color-background`` (6.1.1): the full image with everything outside the proposal painted in
  the colour of the 3x3 look-up table cell that holds the proposal's centroid; expressions that
  name a side (left / right / above / below) are augmented with the colours of that side.
* ``color-overlay`` (6.1.2): the proposal's crop tinted red (left half) or green (right half);
  expressions that say "left" or "right" get the matching " with a ... overlay" suffix.

Boxes are ``(x1, y1, x2, y2)`` pixel coordinates (floats allowed), as everywhere in the package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from refcocog_tools.data.language import tokenize
from refcocog_tools.methods.interface import EncodeRequest
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.scoring import box_key, ensemble_similarity
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache, image_fingerprint, params_key
from refcocog_tools.prompts.render import (
    DEFAULT_PREPROCESS,
    check_preprocess,
    pil_inputs,
    pil_preprocess,
)
from refcocog_tools.prompts.visual_prompts import BoxLike, as_box, as_rgb, crop, window_mask
from refcocog_tools.proposals.structures import Proposals

# ----------------------------------------------------------------------------------------------
# 6.1.1: position coded as a background colour
# ----------------------------------------------------------------------------------------------
LUT_RGB: dict[str, tuple[int, int, int]] = {
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "magenta": (255, 0, 255),
    "black": (0, 0, 0),
    "brown": (139, 69, 19),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
# Rows top/middle/bottom, columns left/centre/right (the study's table).
LUT_GRID: tuple[tuple[str, str, str], ...] = (
    ("blue", "yellow", "red"),
    ("green", "magenta", "black"),
    ("brown", "cyan", "white"),
)
# Normalised centroid cuts; a centroid exactly on a cut belongs to the lower cell (<=).
LUT_X_CUTS = (0.35, 0.65)
LUT_Y_CUTS = (0.33, 0.67)


def _cell(value: float, cuts: tuple[float, float]) -> int:
    return 0 if value <= cuts[0] else 1 if value <= cuts[1] else 2


def lut_colour(box: BoxLike, size: tuple[int, int]) -> tuple[str, tuple[int, int, int]]:
    """The study's colour for a proposal: 3x3 grid cell of its normalised centroid."""
    x1, y1, x2, y2 = as_box(box)
    width, height = size
    cx = (x1 + x2) / 2 / width
    cy = (y1 + y2) / 2 / height
    name = LUT_GRID[_cell(cy, LUT_Y_CUTS)][_cell(cx, LUT_X_CUTS)]
    return name, LUT_RGB[name]


def paint_background(image: Image.Image, box: BoxLike, rgb: tuple[int, int, int] | None = None
                     ) -> Image.Image:
    """Everything outside ``box``'s rectangle set to ``rgb`` (default: the LUT colour)."""
    image = as_rgb(image)
    box = as_box(box)
    if rgb is None:
        rgb = lut_colour(box, image.size)[1]
    result = Image.new("RGB", image.size, tuple(rgb))
    result.paste(image, mask=window_mask(image.size, box, "rectangle"))
    return result


# Colours of a grid column (left/right) or row (above = top, below = bottom).
KEYWORD_COLOURS: dict[str, tuple[str, str, str]] = {
    "left": tuple(row[0] for row in LUT_GRID),
    "right": tuple(row[2] for row in LUT_GRID),
    "above": LUT_GRID[0],
    "below": LUT_GRID[2],
}


def colour_prompts(sentence: str) -> list[str]:
    """The study's colour-augmented expressions (6.1.1); the plain sentence comes first.

    For each of the keywords left / right / above / below present as a word, three colours
    (the grid column or row the keyword points at) each give two prompts,
    ``"{text}. The image has a {colour} background"`` and ``"{colour}. {text}"``. For above /
    below, ``text`` is the sentence cut before the keyword (the part naming the object);
    for left / right it is the whole sentence.
    """
    prompts = [sentence]
    tokens = set(tokenize(sentence, split_apostrophes=True))
    for keyword, colours in KEYWORD_COLOURS.items():
        if keyword not in tokens:
            continue
        text = sentence
        if keyword in ("above", "below"):
            match = re.search(rf"\b{keyword}\b", sentence, flags=re.IGNORECASE)
            text = sentence[: match.start()].strip() if match else sentence
        for colour in colours:
            prompts.append(f"{text}. The image has a {colour} background")
            prompts.append(f"{colour}. {text}")
    return prompts


# ----------------------------------------------------------------------------------------------
# 6.1.2: red / green tint by horizontal position
# ----------------------------------------------------------------------------------------------
OVERLAY_RGBA: dict[str, tuple[int, int, int, int]] = {
    "left": (255, 0, 0, 128),  # red, alpha 0.5
    "right": (0, 255, 0, 128),  # green, alpha 0.5
    "centre": (0, 0, 0, 0),  # no tint
}


def overlay_side(box: BoxLike, size: tuple[int, int]) -> str:
    """``"left"``/``"right"``/``"centre"``: where the box centroid lies w.r.t. the middle."""
    x1, _, x2, _ = as_box(box)
    cx = (x1 + x2) / 2 / size[0]
    return "left" if cx < 0.5 else "right" if cx > 0.5 else "centre"


def tint_crop(image: Image.Image, box: BoxLike, side: str | None = None) -> Image.Image:
    """The crop of ``box`` alpha-composited with the tint of its side (RGB result).

    ``side`` overrides the side computed from the box centroid (``overlay_side``).
    """
    side = overlay_side(box, image.size) if side is None else side
    if side not in OVERLAY_RGBA:
        raise ValueError(f"side must be one of {tuple(OVERLAY_RGBA)}, got {side!r}")
    region = crop(image, box).convert("RGBA")
    tint = Image.new("RGBA", region.size, OVERLAY_RGBA[side])
    # The crop is opaque, so the composite is opaque too and RGB loses nothing.
    return Image.alpha_composite(region, tint).convert("RGB")


def overlay_prompt(sentence: str) -> str:
    """The study's prompt for tinted crops: mention the tint a 'left'/'right' object has.

    Like the study, this tests for the substring (so e.g. "leftmost" counts) and 'left' wins
    when both occur.
    """
    lowered = sentence.lower()
    if "left" in lowered:
        return sentence + " with a red overlay"
    if "right" in lowered:
        return sentence + " with a green overlay"
    return sentence


# ----------------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColourBackgroundOptions:
    """colour-background's settings. ``preprocess``: how the painted whole image becomes
    CLIP's input ("center-crop", CLIP's own, or "square", the whole image resized without a
    crop)."""

    preprocess: str = DEFAULT_PREPROCESS

    def __post_init__(self) -> None:
        check_preprocess(self.preprocess)


class ColourBackground:
    """Position painted on the background; each expression scores by its best colour prompt."""

    name = "color-background"

    def __init__(self, backbones: Sequence[ClipBackbone],
                 cache: EmbeddingCache | None = None,
                 options: ColourBackgroundOptions = ColourBackgroundOptions()) -> None:
        if not backbones:
            raise ValueError("colour-background needs at least one CLIP backbone")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.preprocess = options.preprocess

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
            return pil_inputs((paint_background(image, boxes[i],
                                                lut_colour(boxes[i], image.size)[1])
                               for i in indices), pil_preprocess(resolution, self.preprocess),
                              device)

        return EncodeRequest(keys, draw, [p for e in expressions for p in colour_prompts(e)])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        return self.predict_from_request(self.encode_request(image, expressions, proposals),
                                         image, expressions, proposals)

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals) -> Prediction:
        """``predict`` from this image's painted-background request, already built (the
        engine builds it once per image, for all its expressions)."""
        texts = [p for e in expressions for p in colour_prompts(e)]
        sim = ensemble_similarity(self.backbones, self.cache, texts, request)
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
        """colour-overlay has no options (``registry.NoOptions``): its tints and prompts are
        the study's."""
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
            return pil_inputs((tint_crop(image, boxes[i]) for i in indices),
                              pil_preprocess(resolution), device)

        return EncodeRequest([f"tint:{fingerprint}:{box_key(b)}" for b in boxes], draw,
                             [overlay_prompt(e) for e in expressions])

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        return self.predict_from_request(self.encode_request(image, expressions, proposals),
                                         image, expressions, proposals)

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals) -> Prediction:
        """``predict`` from this image's tinted-crop request, already built (the engine builds
        it once per image, for all its expressions)."""
        scores = ensemble_similarity(self.backbones, self.cache,
                                     [overlay_prompt(e) for e in expressions], request)
        return Prediction.from_scores(scores, proposals)

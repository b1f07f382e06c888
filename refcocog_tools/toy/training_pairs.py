"""The toy CLIP's training pairs: captions of the synthetic world's train images, drawn from the
objects the generator placed."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from refcocog_tools.data.minidata import BACKGROUNDS, CATEGORIES, COLOURS, generate
from refcocog_tools.methods.colour_encodings import LUT_RGB, paint_background
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.prompts.visual_prompts import crop, render_variant
from refcocog_tools.toy.config import ToyClipConfig


# ----------------------------------------------------------------------------------------------
# The training pairs
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainingPairs:
    """Preprocessed images (N, 3, R, R), the captions of each, and what kind each is."""

    pixels: torch.Tensor
    captions: list[list[str]]
    kinds: list[str]  # "image", "crop", "marked" or "painted"
    image_ids: list[int]

    def counts(self) -> dict[str, int]:
        return {kind: self.kinds.count(kind) for kind in ("image", "crop", "marked", "painted")}


def _object_colour(image: Image.Image, box: Sequence[float]) -> str:
    """The palette colour most pixels inside ``box`` are closest to (background excluded).

    The generator does not store colours in the annotations; the drawn pixels carry them.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    region = image.crop((x1, y1, x2, y2)).convert("RGB").resize((16, 16), Image.NEAREST)
    palette = list(COLOURS.items())
    votes: dict[str, int] = {}
    raw = region.tobytes()
    for pixel in zip(raw[0::3], raw[1::3], raw[2::3], strict=True):
        if min(sum((a - b) ** 2 for a, b in zip(pixel, bg, strict=True))
               for bg in BACKGROUNDS) < 300:
            continue
        name, _ = min(palette, key=lambda kv: sum((a - b) ** 2
                                                  for a, b in zip(pixel, kv[1], strict=True)))
        votes[name] = votes.get(name, 0) + 1
    return max(sorted(votes), key=votes.get) if votes else "gray"


def _where(box: Sequence[float], size: tuple[int, int]) -> tuple[str, str]:
    cx = (box[0] + box[2]) / 2 / size[0]
    cy = (box[1] + box[3]) / 2 / size[1]
    horizontal = "on the left" if cx < 0.4 else "on the right" if cx > 0.6 else "in the middle"
    vertical = "at the top" if cy < 0.45 else "at the bottom" if cy > 0.55 else ""
    return horizontal, vertical


def _scene_captions(objects: list[tuple[str, str, list[float]]], size: tuple[int, int],
                    rng: random.Random, n: int) -> list[str]:
    """Whole-image captions with position and relation words, e.g. "a red car on the left and
    a blue dog at the top" or "a red car to the left of a blue dog"."""
    captions: list[str] = []
    for _ in range(n * 3):
        if len(captions) >= n:
            break
        if len(objects) > 1 and rng.random() < 0.4:
            a, b = rng.sample(objects, 2)
            ax = (a[2][0] + a[2][2]) / 2
            bx = (b[2][0] + b[2][2]) / 2
            relation = "to the left of" if ax < bx else "to the right of"
            text = f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}"
        else:
            chosen = rng.sample(objects, min(len(objects), rng.randint(1, 3)))
            parts = []
            for colour, name, box in chosen:
                horizontal, vertical = _where(box, size)
                where = rng.choice([w for w in (horizontal, vertical) if w])
                parts.append(f"a {colour} {name} {where}")
            text = " and ".join(parts)
        if text not in captions:
            captions.append(text)
    return captions


def build_pairs(config: ToyClipConfig, images: int = 0) -> TrainingPairs:
    """Render and preprocess every training pair of ``config``'s world (train split only);
    ``images``: those of the first N train images only (0: all), the same as a full build's."""
    refs, instances, files = generate(config.data_images, config.data_seed)
    train_images = {r["image_id"] for r in refs if r["split"] == "train"}
    other = {r["image_id"] for r in refs if r["split"] != "train"}
    assert not train_images & other, "an image belongs to one split only"
    names = {i["id"]: i["file_name"] for i in instances["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sentences: dict[int, list[str]] = {}
    for ref in refs:
        if ref["split"] == "train":
            sentences.setdefault(ref["ann_id"], []).extend(s["sent"] for s in ref["sentences"])
    preprocess = clip.clip._transform(config.model["image_resolution"])
    rng = random.Random(config.seed)
    # Its own stream, so the other pairs are the same whatever painted_share is.
    paint_rng = random.Random(config.seed + 1_000_003)
    paint_colours = sorted(LUT_RGB)
    pixels: list[torch.Tensor] = []
    captions: list[list[str]] = []
    kinds: list[str] = []
    image_ids: list[int] = []

    def add(image: Image.Image, texts: list[str], kind: str, image_id: int) -> None:
        pixels.append(preprocess(image))
        captions.append(texts)
        kinds.append(kind)
        image_ids.append(image_id)

    for image_id in sorted(train_images)[:images or None]:
        image = Image.open(io.BytesIO(files[names[image_id]])).convert("RGB")
        anns = sorted(by_image[image_id], key=lambda a: a["id"])
        objects = []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            box = [x, y, x + w, y + h]
            objects.append((_object_colour(image, box), CATEGORIES[ann["category_id"]][0], box))
        add(image, _scene_captions(objects, image.size, rng, config.captions_per_image),
            "image", image_id)
        for ann, (_, _, box) in zip(anns, objects, strict=True):
            texts = sentences.get(ann["id"])
            if not texts:
                continue
            add(crop(image, box), list(texts), "crop", image_id)
            if rng.random() < config.marked_share:
                variant = rng.choice(config.marked_variants)
                add(render_variant(image, box, variant), [f"This is {t}" for t in texts],
                    "marked", image_id)
            if paint_rng.random() < config.painted_share:
                colour = paint_rng.choice(paint_colours)
                add(paint_background(image, box, LUT_RGB[colour]),
                    [c for t in texts for c in (t, f"{t} on a {colour} background")],
                    "painted", image_id)
    return TrainingPairs(torch.stack(pixels), captions, kinds, image_ids)

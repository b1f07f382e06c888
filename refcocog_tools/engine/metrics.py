"""The study's three metrics: IoU, accuracy at IoU >= 0.5, and CLIP crop cosine similarity.

``summarize`` aggregates per-expression rows into the numbers the report shows, with
breakdowns for spatial / non-spatial expressions and per category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from refcocog_tools.core.boxes import BoxesLike, as_boxes
from refcocog_tools.data.language import is_spatial
from refcocog_tools.prompts.visual_prompts import crop

if TYPE_CHECKING:
    from refcocog_tools.models.backbones import ClipBackbone

ACCURACY_THRESHOLD = 0.5


def accuracy_at(ious: torch.Tensor | Sequence[float], threshold: float = ACCURACY_THRESHOLD
                ) -> float:
    """Fraction of IoUs ``>= threshold`` (the boundary counts as correct); NaN when empty."""
    values = torch.as_tensor(ious, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        return math.nan
    return float((values >= threshold).double().mean())


@torch.no_grad()
def crop_cosine(
    images: Sequence[Image.Image],
    pred_boxes: BoxesLike,
    gt_boxes: BoxesLike,
    backbones: Sequence[ClipBackbone],
) -> torch.Tensor:
    """Cosine similarity between CLIP embeddings of the predicted and ground-truth crops.

    ``images[i]`` is the image of pair ``i`` (the same image object may repeat). Each
    backbone embeds every distinct crop once; the per-pair cosines are averaged over the
    backbones (the study's ensemble). Degenerate boxes are cropped as at least 1x1 pixel.
    Returns an (N,) float32 tensor.
    """
    pred, gt = as_boxes(pred_boxes), as_boxes(gt_boxes)
    if not (len(images) == pred.shape[0] == gt.shape[0]):
        raise ValueError(f"{len(images)} images, {pred.shape[0]} predicted and "
                         f"{gt.shape[0]} ground-truth boxes: need one of each per pair")
    if not backbones:
        raise ValueError("crop_cosine needs at least one backbone")
    n = len(images)
    if n == 0:
        return torch.zeros(0)

    # PIL crops at rounded coordinates, so crops with the same rounded box are identical:
    # embed each only once (ground-truth crops repeat for every expression of an object).
    keys: dict[tuple[int, tuple[int, ...]], int] = {}
    crops: list[Image.Image] = []

    def index_of(image: Image.Image, box: torch.Tensor) -> int:
        key = (id(image), tuple(round(v) for v in box.tolist()))
        if key not in keys:
            keys[key] = len(crops)
            crops.append(crop(image, box))
        return keys[key]

    pred_index = torch.tensor([index_of(im, b) for im, b in zip(images, pred, strict=True)])
    gt_index = torch.tensor([index_of(im, b) for im, b in zip(images, gt, strict=True)])

    total = torch.zeros(n, dtype=torch.float32)
    for backbone in backbones:
        embeddings = backbone.encode_images(crops).float().cpu()
        # encode_images L2-normalises already; normalising again is cheap insurance.
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        total += (embeddings[pred_index] * embeddings[gt_index]).sum(dim=-1)
    return total / len(backbones)


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else None


def _group(rows: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    ious = [float(r["iou"]) for r in rows]
    return {
        "n": len(rows),
        "miou": _mean(ious),
        "accuracy": None if not rows else accuracy_at(ious, threshold),
        "cosine": _mean(r.get("cosine") for r in rows),
    }


def summarize(rows: Sequence[Mapping[str, Any]], threshold: float = ACCURACY_THRESHOLD
              ) -> dict[str, Any]:
    """Aggregate per-expression rows (keys ``iou``, ``sentence``, ``category``, optional
    ``cosine``) into JSON-able metrics.

    Returns ``{"n", "miou", "accuracy", "cosine", "by_spatial": {"spatial": {...},
    "non_spatial": {...}}, "by_category": {name: {...}}}``; each inner dict has the same four
    keys. ``miou`` and ``cosine`` ignore missing (None) and NaN values; a group without any
    value reports None. Spatial means ``language.is_spatial(sentence)``; categories are sorted.
    """
    spatial = [r for r in rows if is_spatial(str(r["sentence"]))]
    non_spatial = [r for r in rows if not is_spatial(str(r["sentence"]))]
    categories: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        categories.setdefault(str(row.get("category")), []).append(row)
    return {
        **_group(rows, threshold),
        "by_spatial": {
            "spatial": _group(spatial, threshold),
            "non_spatial": _group(non_spatial, threshold),
        },
        "by_category": {name: _group(categories[name], threshold) for name in sorted(categories)},
    }

"""The engine's "score" and "write" stages: one image's metrics and its result rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from refcocog_tools.core.boxes import box_iou_pairs
from refcocog_tools.core.masks import MASKS_FROM_BOXES
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.engine.metric_crops import ImageCrops, crop_cosines
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.structures import Proposals


def score_image(items: Sequence[RefItem], prediction: Prediction, crops: ImageCrops | None,
                metric_backbones: Sequence[ClipBackbone], metric_cache: EmbeddingCache
                ) -> tuple[torch.Tensor, list[float | None]]:
    """Each expression's IoU with its ground-truth box and crop cosine (None without metric
    backbones)."""
    boxes = prediction.boxes.float()
    gt = torch.tensor([it.box for it in items], dtype=torch.float32)
    ious = box_iou_pairs(boxes, gt)
    if not metric_backbones:
        return ious, [None] * len(items)
    assert crops is not None, "the crop-cosine metric needs the image's crops"
    return ious, crop_cosines(crops, metric_cache, metric_backbones, boxes, gt).tolist()


def result_rows(items: Sequence[RefItem], proposals: Proposals, prediction: Prediction,
                ious: torch.Tensor, cosines: Sequence[float | None]) -> list[dict[str, Any]]:
    """The result rows of one image's expressions (with masks: also how many of the image's
    proposals fell back to their box, which ``evaluate`` sums per run and removes)."""
    boxes = prediction.boxes.float()
    return [{
        "ref_id": item.ref_id,
        "sent_id": item.sent_id,
        "image_id": item.image_id,
        "ann_id": item.ann_id,
        "category": item.category,
        "sentence": item.sentence,
        "box": [round(float(v), 3) for v in boxes[k]],
        "gt_box": [round(float(v), 3) for v in item.box],
        "iou": round(float(ious[k]), 6),
        "cosine": None if cosines[k] is None else round(float(cosines[k]), 6),
        "chosen": int(prediction.chosen[k]),
        "n_proposals": len(proposals),
        **({} if proposals.masks is None else {MASKS_FROM_BOXES: proposals.masks_from_boxes}),
    } for k, item in enumerate(items)]

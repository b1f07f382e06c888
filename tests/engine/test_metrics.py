"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from refcocog_tools.core.boxes import box_iou_pairs
from refcocog_tools.engine.metrics import accuracy_at, crop_cosine, summarize


def test_iou_hand_computed() -> None:
    pred = [(0, 0, 2, 2), (0, 0, 1, 1), (5, 5, 9, 8), (0, 0, 4, 2), (0.5, 0, 1.5, 1)]
    gt = [(1, 1, 3, 3), (2, 2, 3, 3), (5, 5, 9, 8), (0, 0, 2, 2), (0, 0, 1, 1)]
    iou = box_iou_pairs(pred, gt)
    expected = torch.tensor([1 / 7, 0.0, 1.0, 0.5, 0.5 / 1.5])
    assert iou.shape == (5,)
    assert torch.allclose(iou, expected, atol=1e-7)
    assert iou[3].item() == 0.5  # exactly representable: must be exact


def test_iou_matches_torchvision_diagonal_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 500
    wh = torch.rand(200, 2, generator=g) * 200 + 1
    pred = torch.cat([xy, xy + wh], dim=1)
    gt = pred + torch.randn(200, 4, generator=g) * 20
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    assert torch.equal(box_iou_pairs(pred, gt), box_iou(pred, gt).diagonal())


def test_iou_degenerate_and_shape_errors() -> None:
    # Both boxes empty: union 0 -> IoU 0 rather than NaN.
    assert box_iou_pairs([(1, 1, 1, 1)], [(1, 1, 1, 1)]).tolist() == [0.0]
    assert box_iou_pairs([(1, 1, 1, 1)], [(0, 0, 2, 2)]).tolist() == [0.0]
    with pytest.raises(ValueError):
        box_iou_pairs([(0, 0, 1, 1)], [(0, 0, 1, 1), (0, 0, 2, 2)])


def test_accuracy_threshold_boundary() -> None:
    assert accuracy_at([0.5, 0.49999, 0.7, 0.0]) == 0.5
    assert accuracy_at(torch.tensor([0.5])) == 1.0
    assert accuracy_at([0.6, 0.8], threshold=0.75) == 0.5
    assert math.isnan(accuracy_at([]))


class _MeanColourBackbone:
    """Stand-in backbone: the embedding is the crop's normalised mean RGB colour."""

    def __init__(self, permute: bool = False) -> None:
        self.permute = permute
        self.calls: list[int] = []

    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        self.calls.append(len(images))
        rows = []
        for image in images:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1, 3))
            mean = pixels.mean(dim=0)
            if self.permute:  # a second "backbone" that sees red and blue as the same
                mean = torch.stack([mean[0] + mean[2], mean[1], torch.zeros(())])
            rows.append(mean)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def _two_colour_image() -> Image.Image:
    image = Image.new("RGB", (40, 20), (255, 0, 0))  # left half red
    image.paste((0, 255, 0), (20, 0, 40, 10))  # top right green
    image.paste((0, 0, 255), (20, 10, 40, 20))  # bottom right blue
    return image


def test_crop_cosine_hand_computed() -> None:
    image = _two_colour_image()
    backbone = _MeanColourBackbone()
    gt = [(0, 0, 10, 10)] * 4
    pred = [(2, 2, 8, 8), (25, 2, 35, 8), (25, 12, 35, 18), (3.2, 3.2, 3.2, 3.2)]
    cos = crop_cosine([image] * 4, pred, gt, [backbone])
    # red vs red, red vs green, red vs blue, degenerate (1x1 red) vs red
    assert torch.allclose(cos, torch.tensor([1.0, 0.0, 0.0, 1.0]), atol=1e-6)
    # The shared ground-truth crop is embedded once: 4 predicted + 1 gt crops.
    assert backbone.calls == [5]


def test_crop_cosine_averages_backbones() -> None:
    image = _two_colour_image()
    pred, gt = [(25, 12, 35, 18)], [(0, 0, 10, 10)]  # blue vs red
    cos = crop_cosine([image], pred, gt, [_MeanColourBackbone(), _MeanColourBackbone(True)])
    assert cos.tolist() == pytest.approx([0.5])  # 0 for the first, 1 for the second
    with pytest.raises(ValueError):
        crop_cosine([image, image], pred, gt, [_MeanColourBackbone()])


def _row(iou: float, sentence: str, category: str, cosine: float | None = None) -> dict:
    return {"iou": iou, "sentence": sentence, "category": category, "cosine": cosine}


def test_summarize() -> None:
    rows = [
        _row(1.0, "the dog on the left", "dog", 0.9),
        _row(0.5, "a brown dog", "dog", 0.7),
        _row(0.2, "the cat behind the sofa", "cat", None),
        _row(0.0, "a white cat", "cat", 0.1),
    ]
    out = summarize(rows)
    assert out["n"] == 4
    assert out["miou"] == pytest.approx(1.7 / 4)
    assert out["accuracy"] == 0.5
    assert out["cosine"] == pytest.approx((0.9 + 0.7 + 0.1) / 3)  # None is skipped
    spatial, non_spatial = out["by_spatial"]["spatial"], out["by_spatial"]["non_spatial"]
    assert spatial["n"] == 2 and spatial["miou"] == pytest.approx(0.6)
    assert spatial["accuracy"] == 0.5 and spatial["cosine"] == pytest.approx(0.9)
    assert non_spatial["n"] == 2 and non_spatial["accuracy"] == 0.5
    assert list(out["by_category"]) == ["cat", "dog"]
    assert out["by_category"]["dog"] == {"n": 2, "miou": 0.75, "accuracy": 1.0,
                                         "cosine": pytest.approx(0.8)}
    assert out["by_category"]["cat"]["cosine"] == pytest.approx(0.1)


def test_summarize_empty_and_without_cosine() -> None:
    out = summarize([_row(0.7, "a cup", "cup")])
    assert out["cosine"] is None and out["accuracy"] == 1.0
    assert out["by_spatial"]["spatial"] == {"n": 0, "miou": None, "accuracy": None,
                                            "cosine": None}
    assert summarize([])["n"] == 0

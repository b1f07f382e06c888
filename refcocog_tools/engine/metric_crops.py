"""The crop-cosine metric's crops of one image, each distinct box's built once.

The metric compares the crop of each predicted box with the crop of its ground-truth box. The
ground-truth crops are requested before the method predicts (they ride in the image's own
encoder batch), the predicted boxes' crops after it, only for boxes not requested yet, and the
cosines read the keys already made: no crop request is built twice for one box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from refcocog_tools.data.dataset import RefItem
from refcocog_tools.methods.interface import EncodeRequest
from refcocog_tools.methods.scoring import box_key, crop_inputs, crop_request
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache


def ground_truth_boxes(items: Sequence[RefItem]) -> torch.Tensor:
    """The distinct ground-truth boxes of an image's expressions, sorted, as ``(G, 4)``."""
    return torch.tensor(sorted({tuple(it.box) for it in items}),
                        dtype=torch.float32).reshape(-1, 4)


def _nothing(resolution: int, indices: Sequence[int], device: str | torch.device = "cpu"
             ) -> torch.Tensor:
    raise AssertionError("an empty crop request has nothing to draw")


class ImageCrops:
    """The crops the metric has requested for one image: box key -> cache key.

    Picklable (the image and strings): a DataLoader worker requests the ground-truth crops and
    sends the table back with the image."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.keys: dict[str, str] = {}

    def request(self, boxes: torch.Tensor) -> EncodeRequest:
        """The crops of those ``boxes`` not requested before, in order of first appearance
        (an empty request when every one was)."""
        fresh: dict[str, torch.Tensor] = {}
        for box in boxes:
            shape = box_key(box)
            if shape not in self.keys and shape not in fresh:
                fresh[shape] = box
        if not fresh:
            return EncodeRequest([], _nothing)
        request = crop_request(self.image, torch.stack(list(fresh.values())))
        self.keys.update(zip(fresh, request.keys, strict=True))
        return request

    def embeddings(self, cache: EmbeddingCache, backbone: ClipBackbone, boxes: torch.Tensor
                   ) -> torch.Tensor:
        """``(len(boxes), D)`` crop embeddings; a crop no batch has encoded (the plain loop's)
        is drawn and encoded here, with the others missing."""
        self.request(boxes)  # boxes never requested: the plain loop requests none before
        keys = [self.keys[box_key(box)] for box in boxes]
        return cache.images(backbone, keys, lambda indices: crop_inputs(
            self.image, boxes, indices, backbone.input_resolution, backbone.device))


def crop_cosines(crops: ImageCrops, cache: EmbeddingCache, backbones: Sequence[ClipBackbone],
                 predicted: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """Crop cosine of each (predicted, ground-truth) pair, averaged over ``backbones``."""
    boxes = torch.cat([predicted, ground_truth])
    total = torch.zeros(len(predicted))
    for backbone in backbones:
        embeddings = crops.embeddings(cache, backbone, boxes)
        total += (embeddings[:len(predicted)] * embeddings[len(predicted):]).sum(dim=-1)
    return total / len(backbones)

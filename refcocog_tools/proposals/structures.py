"""What every proposer gives and is: ``Proposals`` (the candidate boxes of one image, with
optional masks) and the ``Proposer`` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from refcocog_tools.core.boxes import as_boxes
from refcocog_tools.data.dataset import RefItem


@dataclass
class Proposals:
    """Candidate boxes of one image, and their masks when the proposer was asked for them."""

    boxes: torch.Tensor  # (P, 4) float32 xyxy pixels, P >= 1
    labels: list[str | None]  # class name per box when the proposer has one
    scores: torch.Tensor | None = None  # (P,) detector confidence
    masks: torch.Tensor | None = None  # (P, H, W) bool, image pixels; None: boxes only
    masks_from_boxes: int = 0  # how many of ``masks`` are boxes rasterised (no mask known)

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes, torch.float32)
        if len(self.boxes) == 0:
            raise ValueError("Proposals must hold at least one box (use Proposals.whole_image)")
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{len(self.labels)} labels for {len(self.boxes)} boxes")
        if self.scores is not None:
            self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
            if len(self.scores) != len(self.boxes):
                raise ValueError(f"{len(self.scores)} scores for {len(self.boxes)} boxes")
        if self.masks is None:
            if self.masks_from_boxes:
                raise ValueError(f"masks_from_boxes {self.masks_from_boxes} without masks")
            return
        masks = torch.as_tensor(self.masks)
        if masks.dtype != torch.bool:
            raise TypeError(f"masks must be torch.bool, got {masks.dtype}")
        if masks.dim() != 3 or len(masks) != len(self.boxes):
            raise ValueError(f"masks of shape {tuple(masks.shape)} for {len(self.boxes)} "
                             "boxes: expected (P, H, W)")
        if not 0 <= self.masks_from_boxes <= len(masks):
            raise ValueError(f"masks_from_boxes {self.masks_from_boxes} outside 0..{len(masks)}")
        self.masks = masks

    @classmethod
    def whole_image(cls, size: tuple[int, int], masks: bool = False) -> Proposals:
        """One box covering the image ``(width, height)``, without a label; ``masks``: with
        the whole image as its mask (counted as from its box)."""
        width, height = size
        if not masks:
            return cls(torch.tensor([[0.0, 0.0, float(width), float(height)]]), [None])
        return cls(torch.tensor([[0.0, 0.0, float(width), float(height)]]), [None],
                   masks=torch.ones(1, height, width, dtype=torch.bool), masks_from_boxes=1)

    @property
    def mask_size(self) -> tuple[int, int] | None:
        """``(width, height)`` of the masks, None without masks."""
        return None if self.masks is None else (self.masks.shape[2], self.masks.shape[1])

    def __len__(self) -> int:
        return len(self.boxes)


@runtime_checkable
class Proposer(Protocol):
    """Anything that turns a dataset item into proposals."""

    name: str
    untrained: bool

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals: ...

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]: ...

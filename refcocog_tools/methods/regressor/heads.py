"""Heads and losses of the box regressors (sections 1 and 2 of the study).

A head reads the concatenation of the CLIP embedding of the whole image and the CLIP embedding of
one expression, and outputs one box. Heads (``d`` = the backbone's embedding size, summed over
backbones when several are given):

* ``bottleneck``: ``2d -> d -> d/2 -> 128 -> 4`` with ReLU (the study's ``RegressorModel``);
* ``large``: ``2d -> 4d -> 2d -> d -> d/2 -> d/8 -> 4`` with ReLU and dropout 0.5 after every hidden
  layer (the study's ``LargeRegressorModel``).

Box parameterisation. The study read the four outputs directly as ``(x1, y1, x2, y2)``, so nothing
kept ``x2 >= x1``; an IoU loss on such boxes is undefined. Here the four outputs are read as
``(cx, cy, w, h)`` with ``w = softplus(.)`` and ``h = softplus(.)``, then turned into corners
(:func:`decode_boxes`), so every predicted box is valid and every loss is differentiable
everywhere. MSE is still computed on the ``(x1, y1, x2, y2)`` corners, as in the study
(:class:`BoxLoss`); the IoU-family losses are torchvision's, and the plain IoU is
``core.boxes.box_iou_pairs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from refcocog_tools.core.boxes import box_iou_pairs

HEADS = ("bottleneck", "large")
LOSSES = ("mse", "iou", "mix")
IOU_VARIANTS = ("iou", "giou", "diou", "ciou")


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------
def head_widths(kind: str, embed_dim: int) -> list[int]:
    """Layer widths from input to output for a head on embeddings of size ``embed_dim``."""
    d = embed_dim
    if kind == "bottleneck":
        return [2 * d, d, d // 2, 128, 4]
    if kind == "large":
        return [2 * d, 4 * d, 2 * d, d, d // 2, d // 8, 4]
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


def make_head(kind: str, embed_dim: int, dropout: float = 0.5) -> nn.Sequential:
    """The ``bottleneck`` or ``large`` head as an ``nn.Sequential`` (dropout only in ``large``)."""
    if embed_dim < 8:
        raise ValueError(f"embedding size {embed_dim} is too small for the heads (need >= 8)")
    widths = head_widths(kind, embed_dim)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:  # no activation after the output layer
            layers.append(nn.ReLU())
            if kind == "large" and dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def decode_boxes(raw: torch.Tensor) -> torch.Tensor:
    """Head outputs ``(cx, cy, w, h)`` (w, h through softplus) to valid ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = raw.unbind(-1)
    w, h = F.softplus(w), F.softplus(h)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)



# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def plain_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-box ``1 - IoU`` for valid xyxy boxes (no reduction).

    What changed vs the study's ``iou_loss``: the study took the intersection's far corner as
    ``max(x2_pred, x2_gt), max(y2_pred, y2_gt)``. That corner must be the *minimum*: with ``max``
    the "intersection" grows to reach the farther of the two boxes, so two boxes that merely share
    a near corner count as overlapping and a box that contains the target is not penalised for
    being too large (the study noticed its regressor "usually produces much larger bounding boxes
    than the ground truth ones"). It also clamped the loss to [0, 1] and replaced a NaN mean by a
    constant 1, which hides invalid boxes and stops their gradient. Here the far corner is the
    minimum, boxes are valid by construction (:func:`decode_boxes`), and no clamping is needed:
    the result is ``1 - box_iou_pairs`` with ``eps`` added to the union, which equals
    ``1 - torchvision.ops.box_iou`` (the tests check it).
    """
    return 1 - box_iou_pairs(pred, target, eps=eps)


def study_iou_loss_with_corner_bug(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The study's ``iou_loss``, per box and *with its bug*, kept only to show what it computed.

    Never train with it. It takes ``max`` for the intersection's far corner (the correct corner
    is the minimum, see :func:`plain_iou_loss`) and clamps the loss into [0, 1]. The study's
    NaN fallback (a constant 1 for a NaN mean) belongs to the reduction and is left out here.
    """
    x1 = torch.max(pred[:, 0], target[:, 0])
    y1 = torch.max(pred[:, 1], target[:, 1])
    x2 = torch.max(pred[:, 2], target[:, 2])  # the bug: should be torch.min
    y2 = torch.max(pred[:, 3], target[:, 3])  # the bug: should be torch.min
    intersection = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_target = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = area_pred + area_target - intersection
    return (1.0 - intersection / (union + 1e-6)).clamp(min=0.0, max=1.0)


_IOU_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "iou": lambda p, t: plain_iou_loss(p, t),
    "giou": lambda p, t: generalized_box_iou_loss(p, t, reduction="none"),
    "diou": lambda p, t: distance_box_iou_loss(p, t, reduction="none"),
    "ciou": lambda p, t: complete_box_iou_loss(p, t, reduction="none"),
}


def iou_loss(pred: torch.Tensor, target: torch.Tensor, variant: str = "giou") -> torch.Tensor:
    """Mean IoU-family loss of valid xyxy boxes.

    ``giou`` (default) keeps a gradient when the boxes do not overlap at all, which plain ``iou``
    does not (its gradient is zero there) - the usual case at the start of training.
    """
    if variant not in _IOU_LOSSES:
        raise ValueError(f"iou variant must be one of {IOU_VARIANTS}, got {variant!r}")
    return _IOU_LOSSES[variant](pred, target).mean()


@dataclass(frozen=True)
class BoxLoss:
    """``mse``, ``iou`` or ``mix`` = ``mse_weight * MSE + iou_weight * IoU`` (study: 0.7, 1.0)."""

    kind: str = "mse"
    iou_variant: str = "giou"
    mse_weight: float = 0.7
    iou_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.kind!r}")
        if self.iou_variant not in IOU_VARIANTS:
            raise ValueError(f"iou variant must be one of {IOU_VARIANTS}, "
                             f"got {self.iou_variant!r}")

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return F.mse_loss(pred, target)
        if self.kind == "iou":
            return iou_loss(pred, target, self.iou_variant)
        return (self.mse_weight * F.mse_loss(pred, target)
                + self.iou_weight * iou_loss(pred, target, self.iou_variant))

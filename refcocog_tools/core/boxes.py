"""Boxes: the single coercion every module applies to box-like input, and pairwise IoU.

Boxes are ``(x1, y1, x2, y2)`` pixels everywhere in the project. Callers pass tensors, nested
lists or tuples, one box or many; :func:`as_boxes` turns each into an ``(N, 4)`` floating tensor
and names the shape when it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BoxesLike = torch.Tensor | Sequence[Sequence[float]] | Sequence[float]


def as_boxes(boxes: BoxesLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``boxes`` as an ``(N, 4)`` xyxy tensor: one box of four numbers becomes ``(1, 4)``, an
    empty input ``(0, 4)``. ``dtype`` converts; without it a floating tensor keeps its dtype and
    anything else becomes float32. ValueError, naming the shape, for anything else."""
    tensor = torch.as_tensor(boxes, dtype=dtype)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.numel() == 0:
        return tensor.reshape(0, 4)
    if tensor.shape[-1] != 4 or tensor.ndim > 2:
        raise ValueError(f"boxes must have shape (N, 4) in xyxy, got {tuple(tensor.shape)}")
    return tensor.reshape(-1, 4)


def box_iou_pairs(pred: BoxesLike, gt: BoxesLike, eps: float = 0.0) -> torch.Tensor:
    """IoU of each pair ``(pred[i], gt[i])``: the diagonal of ``torchvision.ops.box_iou``.

    Computed element-wise (O(N), no N x N matrix) with the same operations in the same order
    as torchvision, so the values are identical to ``box_iou(pred, gt).diagonal()``. A pair
    whose union is empty (both boxes degenerate) gets IoU 0 instead of torchvision's NaN, and so
    does a pair with a NaN coordinate.

    ``eps > 0`` (the regressors' plain IoU loss, 1e-7 as in torchvision's IoU losses) is added
    to the union and nothing is masked: a loss must show a NaN box, not score it 0.
    """
    pred, gt = as_boxes(pred), as_boxes(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"need as many predicted as ground-truth boxes: "
                         f"{tuple(pred.shape)} vs {tuple(gt.shape)}")
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    pred, gt = pred.to(dtype), gt.to(dtype)
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_gt = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    lt = torch.max(pred[:, :2], gt[:, :2])
    rb = torch.min(pred[:, 2:], gt[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_pred + area_gt - inter
    if eps:
        return inter / (union + eps)
    iou = inter / union
    return torch.where(union > 0, iou, torch.zeros_like(iou))

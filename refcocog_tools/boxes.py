"""Box-like input as one tensor: the single coercion every module applies to boxes.

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

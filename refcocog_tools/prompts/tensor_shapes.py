"""Marker and window shapes as boolean masks drawn in host memory (rectangles, ellipses with
Pillow's own rasteriser), moved to the device in one queued copy per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from refcocog_tools.core.devices import host_to_device


# ----------------------------------------------------------------------------------------------
# Masks of P boxes on an H x W grid
# ----------------------------------------------------------------------------------------------
def _grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    return ys, xs


def _corners(boxes: torch.Tensor) -> list[torch.Tensor]:
    # Pillow's drawing converts coordinates with a C cast: truncation toward zero.
    corners = boxes.to(torch.float64).trunc().to(torch.int64)
    return [corners[:, i].view(-1, 1, 1) for i in range(4)]


def rectangle_masks(boxes: torch.Tensor, height: int, width: int,
                    stroke: int | None = None) -> torch.Tensor:
    """``(P, H, W)`` bool: the filled rectangles (``stroke=None``) or their outlines of
    ``stroke`` pixels, rasterised as Pillow's ``rectangle``.

    Pillow draws an outline as ``stroke`` horizontal lines down from the top edge and up from
    the bottom edge, and vertical lines in from the sides from row ``y0 + stroke`` towards
    ``y1 - stroke + 1``; on a box thinner than two strokes these lines leave the box, and so
    do they here.
    """
    ys, xs = _grid(height, width, boxes.device)
    x0, y0, x1, y1 = _corners(boxes)
    if stroke is None:
        return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    rows = ((ys >= y0) & (ys < y0 + stroke)) | ((ys > y1 - stroke) & (ys <= y1))
    columns = ((xs >= x0) & (xs < x0 + stroke)) | ((xs > x1 - stroke) & (xs <= x1))
    # Pillow's vertical lines run from y0 + stroke towards y1 - stroke + 1, that end excluded.
    start, end = y0 + stroke, y1 - stroke + 1
    top, bottom = torch.where(start <= end, start, end + 1), torch.maximum(start, end)
    return (rows & (xs >= x0) & (xs <= x1)) | (columns & (ys >= top) & (ys <= bottom))


def ellipse_mask(box: Sequence[int], height: int, width: int, stroke: int | None = None
                 ) -> torch.Tensor:
    """``(H, W)`` bool in host memory: the ellipse inscribed in the integer ``box``, filled or
    as an outline ``stroke`` pixels wide, drawn by Pillow's own rasteriser into a mask of this
    (small, region-sized) grid. Pillow's scan conversion of ellipses has no simple closed
    form; drawing only the mask keeps every pixel identical to the reference while the
    image-sized work stays on the device."""
    # An "L" grid: the same scan conversion as a "1" one, and read out without unpacking bits.
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if stroke is None:
        draw.ellipse(tuple(box), fill=1)
    else:
        draw.ellipse(tuple(box), outline=1, width=stroke)
    return torch.from_numpy(np.asarray(mask) != 0)


def masks_to_device(masks: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Host masks on ``device`` in one copy (one transfer per image, not one per proposal)."""
    if device.type == "cpu" or not masks:
        return masks
    flat = host_to_device(torch.cat([m.reshape(-1) for m in masks]), device)
    return [part.view(m.shape) for part, m in zip(flat.split([m.numel() for m in masks]), masks,
                                                  strict=True)]

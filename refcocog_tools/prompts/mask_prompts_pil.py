"""Mask prompts with Pillow: the reference form of ``mask_prompts`` (see there for the idea).

A proposal's mask becomes an "L" image (255 inside, 0 outside); the window ``"mask"`` pastes
the sharp image through it, the marker ``"mask-contour"`` paints the ring that
``ImageFilter.MaxFilter`` (a square dilation) adds around it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageChops, ImageFilter

from refcocog_tools.prompts.mask_prompts import nearest_indices


def mask_image(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """An ``(H, W)`` bool mask as a Pillow "L" image, 255 inside the mask."""
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return Image.fromarray(array.astype(np.uint8) * 255, "L")


def resize_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask at ``size`` (width, height), nearest neighbour at the pixel centres with the
    integer indices the tensor renderer uses (``mask_prompts.nearest_indices``)."""
    if mask.size == size:
        return mask
    rows = nearest_indices(mask.height, size[1]).numpy()
    columns = nearest_indices(mask.width, size[0]).numpy()
    return Image.fromarray(np.asarray(mask)[rows[:, None], columns], "L")


def contour_image(mask: Image.Image, width: int) -> Image.Image | None:
    """The "L" ring of ``width`` pixels just outside ``mask`` (its ``MaxFilter`` dilation
    minus the mask), or None when there is nothing to draw.

    Only the mask's bounding box grown by ``width`` is filtered: beyond it the mask is 0 and
    the dilation too, so the ring is the same as filtering the whole image, for less work.
    """
    bbox = mask.getbbox()
    if bbox is None or width <= 0:
        return None
    left, top = max(bbox[0] - width, 0), max(bbox[1] - width, 0)
    right, bottom = min(bbox[2] + width, mask.width), min(bbox[3] + width, mask.height)
    region = mask.crop((left, top, right, bottom))
    ring = ImageChops.subtract(region.filter(ImageFilter.MaxFilter(2 * width + 1)), region)
    whole = Image.new("L", mask.size, 0)
    whole.paste(ring, (left, top))
    return whole


def draw_contour(image: Image.Image, mask: Image.Image, colour: str | tuple[int, int, int],
                 width: int) -> None:
    """In place: ``mask``'s contour (``contour_image``) painted on ``image`` in ``colour``."""
    ring = contour_image(mask, width)
    if ring is not None:
        image.paste(colour, (0, 0, *image.size), ring)

"""Visual prompts drawn from proposals' segmentation masks, as tensor operations.

Fine-Grained Visual Prompting (Yang et al., NeurIPS 2023) marks a proposal by its segmentation
mask instead of its box: the background outside the mask is blurred or turned grey ("blur /
grey reverse mask") or the mask's contour is drawn. Here these are two option values beside
the box forms of ``visual_prompts``: the window ``"mask"`` (the sharp region is the mask) and
the marker ``"mask-contour"`` (a ``width``-pixel ring just outside the mask: its dilation by a
square of side ``2 * width + 1`` minus the mask itself, so the object's own pixels are kept).

Masks are ``(P, H, W)`` bool tensors in image pixels, one per proposal. Only their shapes and
dtype are checked, never their values, so nothing here reads a value back from the device
(``render``'s rule). ``mask_prompts_pil`` is the Pillow form of the same operations, the
reference; the tests check the two agree pixel for pixel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from refcocog_tools.core.devices import host_to_device

MASK_WINDOW = "mask"  # the window value: sharp inside the mask
MASK_MARKER = "mask-contour"  # the marker value: the ring just outside the mask
MaskInput = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


def uses_masks(marker: str, window: str) -> bool:
    """Whether a prompt with this marker and window is drawn from the proposals' masks."""
    return marker == MASK_MARKER or window == MASK_WINDOW


def mask_options(marker: str, window: str) -> str:
    """The options that ask for masks, as a command line names them (for error messages)."""
    asked = [f"--window {window}"] if window == MASK_WINDOW else []
    return " ".join(asked + ([f"--marker {marker}"] if marker == MASK_MARKER else []))


def as_masks(masks: MaskInput | None, count: int, height: int, width: int,
             what: str = "masks") -> torch.Tensor:
    """``masks`` as a ``(count, height, width)`` bool tensor (a sequence of ``(H, W)`` masks is
    stacked; one ``(H, W)`` mask is taken for a single proposal). Checks shape and dtype only,
    on the tensor's own device; ``what`` names the input in the one-line error."""
    if masks is None:
        raise ValueError(f"{what}: a mask prompt needs one mask per proposal, got none")
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    elif not isinstance(masks, torch.Tensor):
        masks = torch.stack([torch.as_tensor(m) for m in masks]) if len(masks) else None
        if masks is None:
            raise ValueError(f"{what}: a mask prompt needs one mask per proposal, got none")
    if masks.dim() == 2 and count == 1:
        masks = masks.unsqueeze(0)
    if masks.dtype != torch.bool or tuple(masks.shape) != (count, height, width):
        raise ValueError(f"{what}: expected {count} proposal masks as a bool tensor of shape "
                         f"({count}, {height}, {width}), got {masks.dtype} "
                         f"{tuple(masks.shape)}")
    return masks


def mask_keys(masks: torch.Tensor) -> list[str]:
    """A short hash of each ``(H, W)`` mask, for cache keys: two proposals with the same box
    but different masks give different prompts. Hashes the bits in host memory."""
    bits = np.packbits(masks.reshape(len(masks), -1).cpu().numpy(), axis=1)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in bits]


def contour_masks(masks: torch.Tensor, stroke: int) -> torch.Tensor:
    """``(P, H, W)`` bool: the ring of ``stroke`` pixels just outside each mask (its dilation
    by a ``(2 * stroke + 1)`` square minus the mask); empty for ``stroke`` 0.

    The square is a line of rows then a line of columns, each an OR of the mask shifted by
    1 .. ``stroke`` pixels both ways (nothing shifts in from beyond the image, as Pillow's
    ``MaxFilter``, which repeats the edge pixels, gives for a maximum). On a CPU this is about
    30 times faster than ``max_pool2d``, which takes floating point only.
    """
    rows = masks.clone()
    for k in range(1, stroke + 1):
        rows[..., k:] |= masks[..., :-k]
        rows[..., :-k] |= masks[..., k:]
    dilated = rows.clone()
    for k in range(1, stroke + 1):
        dilated[..., k:, :] |= rows[..., :-k, :]
        dilated[..., :-k, :] |= rows[..., k:, :]
    return dilated & ~masks


def paste_inside(prompts: torch.Tensor, image: torch.Tensor, masks: torch.Tensor,
                 runs: Sequence[slice]) -> None:
    """In place: the ``image`` pixels inside each proposal's mask pasted onto the ``runs`` of
    variants of ``prompts`` ``(P, V, 3, H, W)`` (``image``: ``(3, H, W)``; ``masks``:
    ``(P, H, W)`` on the same device)."""
    # prompts * (1 - m) + image * m with m in {0, 1}: exact in uint8, and on a CPU several
    # times faster than a broadcast ``torch.where``.
    inside = masks[:, None, None].to(torch.uint8)  # (P, 1, 1, H, W)
    sharp = image * inside
    outside = 1 - inside
    for run in runs:
        prompts[:, run].mul_(outside).add_(sharp)


def paint_contours(prompts: torch.Tensor, masks: torch.Tensor, stroke: int,
                   colour: tuple[int, int, int]) -> None:
    """In place: each proposal's mask contour (``contour_masks``) painted in ``colour`` on
    every variant of ``prompts`` ``(P, V, 3, H, W)``."""

    ring = contour_masks(masks, stroke)[:, None, None].to(torch.uint8)  # (P, 1, 1, H, W)
    paint = host_to_device(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1), masks.device)
    prompts.mul_(1 - ring).add_(ring * paint)  # the same exact arithmetic as paste_inside


def nearest_indices(old: int, new: int) -> torch.Tensor:
    """The source row (or column) of each of ``new`` rows when ``old`` rows are resized
    nearest-neighbour, sampling at the pixel centres: ``floor((i + 0.5) * old / new)``, in
    integers. Both renderers resize masks with these indices, so they agree exactly (float
    forms of the same rule, Pillow's and torch's "nearest-exact", round a few centres that
    fall on a pixel edge differently)."""
    return (2 * torch.arange(new, dtype=torch.int64) + 1) * old // (2 * new)


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(P, H, W)`` bool masks at ``height`` x ``width``, nearest neighbour
    (``nearest_indices``), on the masks' device; the indices are moved there, never read."""
    if tuple(masks.shape[-2:]) == (height, width):
        return masks

    rows = host_to_device(nearest_indices(masks.shape[-2], height), masks.device)
    columns = host_to_device(nearest_indices(masks.shape[-1], width), masks.device)
    return masks.index_select(-2, rows).index_select(-1, columns)

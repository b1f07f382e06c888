"""Pillow's Gaussian blur and grayscale as tensor operations on any device, equal to Pillow's
pixels (three box-blur passes, ITU-R 601-2 luma)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter

BLUR_PASSES = 3  # Pillow's GaussianBlur: three box-blur passes


# ----------------------------------------------------------------------------------------------
# Pillow's blur and grayscale, exactly
# ----------------------------------------------------------------------------------------------
def pillow_box_radius(radius: float, passes: int = BLUR_PASSES) -> float:
    """The fractional box radius Pillow uses for a Gaussian of ``radius`` in ``passes`` passes
    (Pillow's ``_gaussian_blur_radius``, in its single precision)."""
    f32 = np.float32
    sigma2 = f32(radius) * f32(radius) / f32(passes)
    big_l = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
    a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2)
    a = a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1))))
    return float(small_l + a)


def _box_blur_pass(x: torch.Tensor, box_radius: float) -> torch.Tensor:
    """One pass of Pillow's extended box blur of int32 pixels along the first dimension.

    Output ``i`` is ``round((sum_{|k|<=r} x[i+k] * ww + (x[i-r-1] + x[i+r+1]) * fw) / 2**24)``
    with indices clamped to the line, ``r = int(radius)``, ``ww`` the weight of the whole
    window pixels and ``fw`` the weight of the two fractional ends (Pillow's BoxBlur.c).
    Lines along the first dimension keep every slice below contiguous (fast on a CPU).
    """
    r = int(box_radius)
    ww = int(np.float32(1 << 24) / (np.float32(box_radius) * np.float32(2) + np.float32(1)))
    fw = ((1 << 24) - (2 * r + 1) * ww) // 2
    n = x.shape[0]
    # Replicated edges, r + 1 pixels each side, and a leading zero for the running sum.
    edge = (r + 1, *x.shape[1:])
    padded = torch.cat([x[:1].expand(edge), x, x[-1:].expand(edge)])
    cumulative = torch.cat([torch.zeros_like(x[:1]), padded.cumsum(0)])
    window = (cumulative[2 * r + 2:2 * r + 2 + n] - cumulative[1:1 + n]).to(torch.int64)
    window.mul_(ww).add_((padded[:n] + padded[2 * r + 2:]).to(torch.int64).mul_(fw))
    return window.add_(1 << 23).bitwise_right_shift_(24).to(torch.int32)


def pillow_gaussian_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """``ImageFilter.GaussianBlur(radius)`` of uint8 ``(..., H, W)`` images, bit-identical,
    on the images' device: Pillow itself on the CPU (its C loop is the fastest form of these
    integers there), ``box_blur_ops`` elsewhere."""
    if radius <= 0:
        return images.clone()
    if images.device.type != "cpu":
        return box_blur_ops(images, radius)
    planes = images.reshape(-1, *images.shape[-2:])
    blur = ImageFilter.GaussianBlur(radius)
    out = torch.empty_like(planes)
    written = out.numpy()  # a view: Pillow's bytes are copied straight into ``out``
    for k, plane in enumerate(planes.numpy()):
        # Pillow blurs every band alike, so one "L" image per plane gives the RGB result.
        written[k] = np.asarray(Image.fromarray(plane, "L").filter(blur))
    return out.reshape(images.shape)


def box_blur_ops(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Pillow's ``GaussianBlur(radius)`` of uint8 ``(..., H, W)`` images as integer tensor
    operations (any device), bit-identical.

    Three horizontal passes, then three vertical ones, each rounded to integers, as Pillow
    does. A true Gaussian of the same radius differs from it by a few grey levels.
    """
    if radius <= 0:
        return images.clone()
    box_radius = pillow_box_radius(radius)
    for dim in (-1, -2):
        # The blurred dimension first: every pass then works on contiguous rows.
        # int32 running sums are exact (at most 255 x (H + 2r + 2)); the weighting is int64.
        x = images.movedim(dim, 0).to(torch.int32).contiguous()
        for _ in range(BLUR_PASSES):
            x = _box_blur_pass(x, box_radius)
        images = x.to(torch.uint8).movedim(0, dim)
    return images.contiguous()


def pillow_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert("L").convert("RGB")`` of uint8 ``(..., 3, H, W)`` images."""
    # In place on one int32 plane: each full-image temporary costs as much as the arithmetic.
    luma = images[..., 0, :, :].to(torch.int32).mul_(19595)
    luma.add_(images[..., 1, :, :].to(torch.int32).mul_(38470))
    luma.add_(images[..., 2, :, :].to(torch.int32).mul_(7471))
    luma = luma.add_(0x8000).bitwise_right_shift_(16).to(torch.uint8)
    return luma.unsqueeze(-3).expand_as(images).contiguous()

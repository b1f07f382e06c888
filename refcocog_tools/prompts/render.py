"""Visual prompts as batched tensor operations, on whatever device the image is on.

The Pillow functions of ``visual_prompts`` are the reference; this module draws the same
prompts for every proposal and variant of an image at once, on the CPU or a GPU, and turns
them into model inputs in the same pass:

* ``image_tensor``: a decoded image as a ``(3, H, W)`` uint8 tensor on a device (moved once,
  by ``host_to_device``: through pinned memory, without making the host wait for a GPU; no
  step from here to the model inputs reads a value back from the device either).
* ``pillow_gaussian_blur``: Pillow's ``GaussianBlur`` is not a true Gaussian but three passes
  of an extended box blur (fractional radius, 24-bit fixed-point weights, replicated edges,
  rounding to uint8 after every pass). ``box_blur_ops`` reproduces that arithmetic in integer
  tensor operations, so the blurred background is bit-identical to Pillow's on any device (the
  tests check it). On the CPU, Pillow's own C loop computes the same integers several times
  faster than a chain of whole-tensor operations, so there ``pillow_gaussian_blur`` hands each
  plane to Pillow; on a GPU it runs ``box_blur_ops``.
* ``pillow_grayscale``: Pillow's ``convert("L")`` (ITU-R 601-2 luma, its fixed-point
  rounding), bit-identical too.
* ``render_prompts``: background per variant, sharp window, marker stroke, for P proposals x V
  variants: ``(P, V, 3, H, W)`` uint8. Rectangles (window and marker) follow Pillow's
  rasterisation exactly as tensor masks (truncated corners, inclusive); an ellipse's mask is
  drawn by Pillow into a grid the size of the proposal's box (its scan conversion has no
  closed form) and applied on the device. The prompts are pixel-identical to Pillow's. The
  mask forms (window "mask", marker "mask-contour") are ``mask_prompts``' operations on the
  proposals' masks, moved to the device with the image.
* ``model_inputs``: the one place where a whole image becomes CLIP's input: resize (bicubic,
  antialiased) then centre crop, or (``preprocess="square"``) resize the whole image to the
  square input without cropping; then scale to [0, 1] and normalise with CLIP's statistics.
  ``pil_preprocess`` is the same step for Pillow images (the reference path).

Boxes are ``(x1, y1, x2, y2)`` pixel coordinates, as everywhere in the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageColor
from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    Resize,
    ToTensor,
)

from refcocog_tools.core.boxes import as_boxes
from refcocog_tools.core.devices import host_to_device
from refcocog_tools.prompts import mask_prompts
from refcocog_tools.prompts.tensor_filters import (
    pillow_gaussian_blur,
    pillow_grayscale,
)
from refcocog_tools.prompts.tensor_shapes import ellipse_mask, masks_to_device, rectangle_masks
from refcocog_tools.prompts.visual_prompts import (
    DEFAULT_BLUR_RADIUS,
    DEFAULT_COLOUR,
    DEFAULT_MARKER,
    DEFAULT_WIDTH,
    DEFAULT_WINDOW,
    MARKER_SHAPES,
    STUDY_VARIANTS,
    VARIANTS,
    WINDOW_SHAPES,
    Colour,
    render_variants,
)

Preprocess = Literal["center-crop", "square"]
PREPROCESS_MODES: tuple[str, ...] = ("center-crop", "square")
DEFAULT_PREPROCESS = "center-crop"  # CLIP's own preprocessing
RENDER_BACKENDS: tuple[str, ...] = ("torch", "pil")
DEFAULT_RENDER_BACKEND = "torch"
# CLIP's normalisation (openai/CLIP clip.py).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_preprocess(mode: str) -> str:
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
    return mode


# ----------------------------------------------------------------------------------------------
# Images as tensors
# ----------------------------------------------------------------------------------------------
def image_tensor(image: Image.Image | torch.Tensor, device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 tensor of an RGB image on ``device`` (a tensor passes through)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) uint8 image, got {image.dtype} "
                             f"{tuple(image.shape)}")
        return host_to_device(image, device) if image.device.type == "cpu" else image.to(device)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(rgb)  # (H, W, 3), read-only view of Pillow's bytes
    return host_to_device(torch.from_numpy(array.copy()).permute(2, 0, 1), device)


def pil_inputs(images: Iterable[Image.Image], transform: Callable[[Image.Image], torch.Tensor],
               device: str | torch.device) -> torch.Tensor:
    """Prompts drawn by Pillow as a batch of model inputs on ``device``: preprocessed by
    ``transform`` in host memory, then moved by ``host_to_device``."""
    return host_to_device(torch.stack([transform(image) for image in images]), device)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` uint8 tensor as a Pillow image (for figures and comparisons)."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB")


# ----------------------------------------------------------------------------------------------
# Visual prompts
# ----------------------------------------------------------------------------------------------
def _colour(colour: Colour) -> tuple[int, int, int]:
    rgb = ImageColor.getrgb(colour) if isinstance(colour, str) else tuple(colour)
    return tuple(int(v) for v in rgb[:3])  # type: ignore[return-value]


def backgrounds(image: torch.Tensor, variants: Sequence[str],
                blur_radius: float = DEFAULT_BLUR_RADIUS) -> torch.Tensor:
    """``(V, 3, H, W)`` uint8: the background of each variant (blurred and/or grayscale;
    the image itself for "marker"), the blur computed once."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")
    blurred = (pillow_gaussian_blur(image, blur_radius)
               if any(v in ("blur", "blur_gray") for v in variants) else None)
    made = {"marker": lambda: image, "gray": lambda: pillow_grayscale(image),
            "blur": lambda: blurred, "blur_gray": lambda: pillow_grayscale(blurred)}
    return torch.stack([made[v]() for v in variants])


def render_prompts(
    image: torch.Tensor,
    boxes: torch.Tensor,
    variants: Sequence[str] = STUDY_VARIANTS,
    *,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
    marker: str = DEFAULT_MARKER,
    window: str = DEFAULT_WINDOW,
    masks: mask_prompts.MaskInput | None = None,
) -> torch.Tensor:
    """``(P, V, 3, H, W)`` uint8: every proposal in every variant, as ``render_variants``
    draws them (same arguments), computed as tensor operations on ``image``'s device."""
    if marker not in MARKER_SHAPES:
        raise ValueError(f"marker shape must be one of {MARKER_SHAPES}, got {marker!r}")
    if window not in WINDOW_SHAPES:
        raise ValueError(f"window shape must be one of {WINDOW_SHAPES}, got {window!r}")
    # The geometry stays in host memory: reading a value back from a GPU would make the host
    # wait for every queued kernel (the encoder's included), so nothing here does.
    geometry = as_boxes(boxes, torch.float32).cpu()
    if bool(((geometry[:, 2] < geometry[:, 0]) | (geometry[:, 3] < geometry[:, 1])).any()):
        raise ValueError("boxes must be xyxy (x2 >= x1 and y2 >= y1)")
    _, height, width_px = image.shape
    proposal_masks = None
    if mask_prompts.uses_masks(marker, window):  # shapes only, checked before any drawing
        proposal_masks = mask_prompts.as_masks(masks, len(geometry), height, width_px)
        proposal_masks = (host_to_device(proposal_masks, image.device)
                          if proposal_masks.device.type == "cpu"
                          else proposal_masks.to(image.device))
    back = backgrounds(image, variants, blur_radius)  # (V, 3, H, W)
    out = back.unsqueeze(0).repeat(len(geometry), 1, 1, 1, 1)
    # The variants with a sharp window, as runs of neighbours (the study's blur, blur_gray:
    # one run): a slice is a view, written in place without advanced indexing.
    windowed = [slice(k, k + 1) for k, v in enumerate(variants) if v != "marker"]
    for k in range(len(windowed) - 1, 0, -1):
        if windowed[k - 1].stop == windowed[k].start:
            windowed[k - 1:k + 1] = [slice(windowed[k - 1].start, windowed[k].stop)]
    stroke = width if marker != "none" and colour is not None and width > 0 else 0
    paint = _colour(colour) if stroke else None
    if window == mask_prompts.MASK_WINDOW:  # before any marker, as Pillow pastes then draws
        mask_prompts.paste_inside(out, image, proposal_masks, windowed)  # type: ignore[arg-type]
        windowed = []
    contour, stroke = (stroke, 0) if marker == mask_prompts.MASK_MARKER else (0, stroke)
    # Everything a proposal changes lies within ``stroke`` pixels of its (truncated, inclusive)
    # box: each proposal works on that region of its prompts only (the region slices are
    # views; P is small). First every region and its masks, drawn in host memory...
    plans, masks = [], []
    corners = geometry.to(torch.float64).trunc().to(torch.int64)
    for p, (x0, y0, x1, y1) in enumerate(corners.tolist()):
        left, top = max(x0 - stroke, 0), max(y0 - stroke, 0)
        right = min(x1 + stroke, width_px - 1) + 1
        bottom = min(y1 + stroke, height - 1) + 1
        if right <= left or bottom <= top:
            continue  # nothing of it in the image: the prompts are the backgrounds
        w_left, w_top = max(x0, 0), max(y0, 0)
        w_right, w_bottom = min(x1, width_px - 1) + 1, min(y1, height - 1) + 1
        window_box = ((w_top, w_bottom, w_left, w_right)
                      if windowed and w_right > w_left and w_bottom > w_top else None)
        keep = draw = None
        if window_box is not None and window == "ellipse":
            keep = len(masks)
            masks.append(ellipse_mask((x0 - w_left, y0 - w_top, x1 - w_left, y1 - w_top),
                                      w_bottom - w_top, w_right - w_left))
        if stroke:
            local = (x0 - left, y0 - top, x1 - left, y1 - top)
            draw = len(masks)
            masks.append(ellipse_mask(local, bottom - top, right - left, stroke)
                         if marker == "ellipse" else
                         rectangle_masks(torch.tensor([local]), bottom - top, right - left,
                                         stroke=stroke)[0])
        plans.append((p, (top, bottom, left, right), window_box, keep, draw))
    # ... then the masks go to the device in one copy, and the drawing is queued there.
    masks = masks_to_device(masks, image.device)
    for p, (top, bottom, left, right), window_box, keep, draw in plans:
        region = out[p, :, :, top:bottom, left:right]  # (V, 3, h, w) view
        if window_box is not None:
            w_top, w_bottom, w_left, w_right = window_box
            inside = image[:, w_top:w_bottom, w_left:w_right]
            for run in windowed:
                target = region[run, :, w_top - top:w_bottom - top, w_left - left:w_right - left]
                if keep is None:  # a rectangle window: the clipped box is the whole window
                    target.copy_(inside.expand_as(target))
                else:
                    target.copy_(torch.where(masks[keep], inside, target))
        if draw is not None:
            for channel, value in enumerate(paint):  # type: ignore[arg-type]
                region[:, channel].masked_fill_(masks[draw], value)
    if contour:
        mask_prompts.paint_contours(out, proposal_masks, contour, paint)  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------------------------------
# Model inputs: the one place for resize, centre crop / square, normalisation
# ----------------------------------------------------------------------------------------------
def model_inputs(images: torch.Tensor, resolution: int, preprocess: str = DEFAULT_PREPROCESS,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, 3, R, R)`` normalised CLIP inputs from uint8 ``(N, 3, H, W)`` images.

    ``"center-crop"``: CLIP's own preprocessing (short side to R, bicubic with antialiasing,
    centre crop R x R). ``"square"``: the whole image resized to R x R, no crop (the aspect
    ratio changes, nothing is cut off).
    """
    check_preprocess(preprocess)
    size = [resolution] if preprocess == "center-crop" else [resolution, resolution]
    x = TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    if preprocess == "center-crop":
        x = TF.center_crop(x, [resolution, resolution])
    x = x.to(dtype) / 255.0
    # torchvision's normalize builds its mean and std on the device with a copy that waits
    # for the device; the same arithmetic with them queued as a copy instead.
    mean = host_to_device(torch.tensor(CLIP_MEAN, dtype=dtype).view(3, 1, 1), x.device)
    std = host_to_device(torch.tensor(CLIP_STD, dtype=dtype).view(3, 1, 1), x.device)
    return x.sub_(mean).div_(std)


def pil_preprocess(resolution: int, preprocess: str = DEFAULT_PREPROCESS
                   ) -> Callable[[Image.Image], torch.Tensor]:
    """The Pillow form of ``model_inputs`` for one image (the reference path).

    ``"center-crop"`` is exactly openai/CLIP's ``_transform``.
    """
    check_preprocess(preprocess)
    if preprocess == "center-crop":
        steps = [Resize(resolution, interpolation=InterpolationMode.BICUBIC),
                 CenterCrop(resolution)]
    else:
        steps = [Resize((resolution, resolution), interpolation=InterpolationMode.BICUBIC)]
    return Compose([*steps, _rgb, ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _render_smaller(image: torch.Tensor, boxes: torch.Tensor, target_size: int,
                    params: dict[str, object]
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """``render_variants``' ``target_size`` approximation: the image with its short side at
    ``target_size`` (bicubic), boxes, blur radius and stroke width scaled alike, masks
    resized nearest-neighbour."""
    if target_size <= 0:
        raise ValueError(f"target_size must be positive, got {target_size}")
    _, h, w = image.shape
    scale = target_size / min(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    image = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC,
                      antialias=True)
    factors = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h])
    boxes = as_boxes(boxes, torch.float32).cpu() * factors
    params = dict(params)
    params["blur_radius"] = float(params.get("blur_radius", DEFAULT_BLUR_RADIUS)) * scale
    stroke = int(params.get("width", DEFAULT_WIDTH))  # type: ignore[call-overload]
    params["width"] = max(1, round(stroke * scale)) if stroke > 0 else stroke
    if mask_prompts.uses_masks(str(params.get("marker", DEFAULT_MARKER)),
                               str(params.get("window", DEFAULT_WINDOW))):
        masks = mask_prompts.as_masks(params.get("masks"), len(boxes), h, w)  # type: ignore[arg-type]
        params["masks"] = mask_prompts.resize_masks(masks, new_h, new_w)
    return image, boxes, params


def prompt_inputs(
    image: Image.Image | torch.Tensor,
    boxes: torch.Tensor,
    variants: Sequence[str],
    resolution: int,
    *,
    preprocess: str = DEFAULT_PREPROCESS,
    backend: str = DEFAULT_RENDER_BACKEND,
    device: str | torch.device = "cpu",
    **render_params: object,
) -> torch.Tensor:
    """``(P * V, 3, R, R)`` model inputs of an image's visual prompts, proposal-major then
    variant (the order of ``RedCircle.visual_prompt_keys``), by either backend."""
    if backend == "torch":
        pixels = image_tensor(image, device)
        params = dict(render_params)
        target_size = params.pop("target_size", None)
        if target_size is not None:
            pixels, boxes, params = _render_smaller(pixels, boxes, int(target_size), params)
        rendered = render_prompts(pixels, boxes, variants, **params)  # type: ignore[arg-type]
        flat = rendered.reshape(-1, *rendered.shape[2:])
        return model_inputs(flat, resolution, preprocess)
    if backend != "pil":
        raise ValueError(f"render backend must be one of {RENDER_BACKENDS}, got {backend!r}")
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    transform = pil_preprocess(resolution, preprocess)
    rendered_pil = render_variants(image, boxes, variants, **render_params)  # type: ignore[arg-type]
    return torch.stack([transform(p) for row in rendered_pil for p in row]).to(device)


def input_difference(image: Image.Image, boxes: torch.Tensor, variants: Sequence[str],
                     resolution: int, *, preprocess: str = DEFAULT_PREPROCESS,
                     **render_params: object) -> dict[str, float]:
    """How far the torch backend's model inputs are from the Pillow reference's, in grey
    levels (0-255, CLIP's normalisation undone): largest and mean per-pixel difference and
    the share of values more than one level apart."""
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    by_backend = [prompt_inputs(image, boxes, variants, resolution, preprocess=preprocess,
                                backend=b, **render_params) * std for b in RENDER_BACKENDS]
    difference = (by_backend[0] - by_backend[1]).abs()
    return {"max_levels": round(float(difference.max()), 3),
            "mean_levels": round(float(difference.mean()), 5),
            "share_over_1_level": round(float((difference > 1).double().mean()), 6)}


def model_view(inputs: torch.Tensor) -> Image.Image:
    """What CLIP sees: one normalised ``(3, R, R)`` model input back as a Pillow image."""
    mean = torch.tensor(CLIP_MEAN, device=inputs.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=inputs.device).view(3, 1, 1)
    pixels = ((inputs.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return to_pil(pixels)

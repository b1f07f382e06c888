"""Visual prompts: crops, markers and blurred/grayscale backgrounds around a proposal.

These reproduce the image edits of the original study:

* 6.2 (the final proposal): for each region proposal the whole image is kept, a red ellipse
  (stroke 3 px) is drawn around the proposal and the background outside the proposal's
  rectangle is blurred (Gaussian, radius 20 px) and/or turned grayscale. ``render_variant``
  does this the straightforward way, one proposal at a time; ``render_variants`` computes the
  blurred / grayscale backgrounds once per image and gives the same pixels.
* Fine-Grained Visual Prompting's mask forms (``mask_prompts``): the window ``"mask"`` keeps
  the proposal's segmentation mask sharp (with the "blur" variant, FGVP's "blur reverse mask";
  with "gray", its "grey reverse mask"), the marker ``"mask-contour"`` draws the mask's
  contour. They take the proposals' masks, ``(H, W)`` bool per proposal.

The colour encodings of position (6.1.1 and 6.1.2: painted backgrounds, tints and their
prompts) are one idea with their methods, in ``colour_encodings``.

Boxes are ``(x1, y1, x2, y2)`` pixel coordinates (floats allowed), as everywhere in the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, get_args

import torch
from PIL import Image, ImageDraw, ImageFilter

from refcocog_tools.prompts import mask_prompts_pil
from refcocog_tools.prompts.mask_prompts import (
    MASK_MARKER,
    MASK_WINDOW,
    MaskInput,
    as_masks,
    uses_masks,
)

Box = tuple[float, float, float, float]
BoxLike = Sequence[float] | torch.Tensor
Colour = str | tuple[int, int, int]
Variant = Literal["marker", "blur", "gray", "blur_gray"]
MarkerShape = Literal["ellipse", "rectangle", "mask-contour", "none"]
MARKER_SHAPES: tuple[str, ...] = get_args(MarkerShape)
WindowShape = Literal["rectangle", "ellipse", "mask"]
WINDOW_SHAPES: tuple[str, ...] = get_args(WindowShape)

VARIANTS: tuple[str, ...] = ("marker", "blur", "gray", "blur_gray")
# The two renderings the study kept for its final proposal (modifications 2 and 4 of 6.2).
STUDY_VARIANTS: tuple[str, ...] = ("blur", "blur_gray")
# The study's tuned parameters (6.2): red ellipse, 3 px stroke, Gaussian blur radius 20 px.
DEFAULT_COLOUR = "red"
DEFAULT_WIDTH = 3
DEFAULT_BLUR_RADIUS = 20.0
DEFAULT_MARKER = "ellipse"
DEFAULT_WINDOW = "rectangle"  # the study kept the proposal's rectangle sharp


# ----------------------------------------------------------------------------------------------
# Basic operations
# ----------------------------------------------------------------------------------------------
def as_box(box: BoxLike) -> Box:
    """A box as a tuple of four Python floats; rejects boxes with x2 < x1 or y2 < y1."""
    values = box.tolist() if isinstance(box, torch.Tensor) else list(box)
    if len(values) < 4:
        raise ValueError(f"a box needs four coordinates (x1, y1, x2, y2), got {values}")
    x1, y1, x2, y2 = (float(v) for v in values[:4])
    if x2 < x1 or y2 < y1:
        # PIL's drawing functions raise an unhelpful error for these; say what is wrong.
        raise ValueError(f"box {(x1, y1, x2, y2)} is not xyxy (x2 < x1 or y2 < y1)")
    return (x1, y1, x2, y2)


def _boxes(boxes: torch.Tensor | Iterable[BoxLike]) -> list[Box]:
    if isinstance(boxes, torch.Tensor):
        return [as_box(row) for row in boxes.reshape(-1, 4)]
    return [as_box(b) for b in boxes]


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB (the image itself when it already is)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def crop(image: Image.Image, box: BoxLike) -> Image.Image:
    """Crop ``box`` out of ``image``, never returning an empty image.

    PIL rounds the coordinates; a box thinner than a pixel after rounding is widened to one
    pixel so that CLIP's preprocessing always gets a valid image. Parts of the box outside the
    image come back black (PIL's behaviour), as in the study.
    """
    x1, y1, x2, y2 = (round(v) for v in as_box(box))
    return image.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))


def draw_marker(
    image: Image.Image,
    box: BoxLike,
    shape: MarkerShape = DEFAULT_MARKER,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    mask: torch.Tensor | None = None,
) -> Image.Image:
    """A copy of ``image`` with an ellipse or rectangle outline inscribed in ``box``, or
    (``shape="mask-contour"``) the contour of the proposal's ``(H, W)`` bool ``mask``."""
    result = image.copy()
    _draw_marker_inplace(result, as_box(box), shape, colour, width,
                         _mask_for(shape, DEFAULT_WINDOW, mask, result.size))
    return result


def _mask_for(marker: str, window: str, mask: MaskInput | None, size: tuple[int, int]
              ) -> Image.Image | None:
    """The proposal's mask as an "L" image when the marker or the window is drawn from it."""
    if not uses_masks(marker, window):
        return None
    return mask_prompts_pil.mask_image(as_masks(mask, 1, size[1], size[0], "mask")[0])


def _draw_marker_inplace(
    image: Image.Image, box: Box, shape: str, colour: Colour | None, width: int,
    mask: Image.Image | None = None,
) -> None:
    if shape == "none" or colour is None or width <= 0:
        return
    if shape == MASK_MARKER:
        assert mask is not None, "the mask-contour marker needs the proposal's mask"
        mask_prompts_pil.draw_contour(image, mask, colour, width)
        return
    draw = ImageDraw.Draw(image)
    if shape == "ellipse":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "rectangle":
        draw.rectangle(box, outline=colour, width=width)
    else:
        raise ValueError(f"marker shape must be one of {MARKER_SHAPES}, got {shape!r}")


def window_mask(size: tuple[int, int], box: Box, window: str,
                mask: Image.Image | None = None) -> Image.Image:
    """The sharp region of a proposal, drawn exactly as the study drew it (PIL mask); for
    ``window="mask"`` the proposal's own ``mask`` ("L" image)."""
    if window == MASK_WINDOW:
        assert mask is not None, "the mask window needs the proposal's mask"
        return mask
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if window == "rectangle":
        draw.rectangle(box, fill=255)
    elif window == "ellipse":
        draw.ellipse(box, fill=255)
    else:
        raise ValueError(f"window shape must be one of {WINDOW_SHAPES}, got {window!r}")
    return mask


# ----------------------------------------------------------------------------------------------
# 6.2: marker + blurred / grayscale background
# ----------------------------------------------------------------------------------------------
def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def _background(image: Image.Image, variant: str, blur_radius: float,
                blurred: Image.Image | None = None) -> Image.Image:
    """The image the proposal is pasted on; ``blurred`` reuses an already blurred image."""
    if variant == "marker":
        return image
    if variant == "gray":
        return image.convert("L").convert("RGB")
    if blurred is None:
        blurred = image.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    if variant == "blur":
        return blurred
    return blurred.convert("L").convert("RGB")  # blur_gray: blurred first, then grayscale


def _composite(
    image: Image.Image,
    background: Image.Image,
    box: Box,
    variant: str,
    colour: Colour | None,
    width: int,
    marker: str,
    window: str,
    region_only: bool = False,
    mask: Image.Image | None = None,
) -> Image.Image:
    """Paste the proposal's window of ``image`` sharp onto ``background``, draw the marker.

    ``region_only`` pastes only the bounding box of the mask: the same pixels (the mask is 0
    outside it) but without a pass over the whole image, several times faster for small boxes.
    ``mask``: the proposal's segmentation mask ("L"), for the mask window and contour.
    """
    result = background.copy()
    if variant != "marker":
        sharp = window_mask(image.size, box, window, mask)
        if not region_only:
            result.paste(image, mask=sharp)  # the study's operation
        elif (bbox := sharp.getbbox()) is not None:
            result.paste(image.crop(bbox), bbox[:2], sharp.crop(bbox))
    _draw_marker_inplace(result, box, marker, colour, width, mask)
    return result


def render_variant(
    image: Image.Image,
    box: BoxLike,
    variant: Variant = "blur",
    *,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
    marker: MarkerShape = DEFAULT_MARKER,
    window: WindowShape = DEFAULT_WINDOW,
    mask: MaskInput | None = None,
) -> Image.Image:
    """One visual prompt for one proposal, computed from scratch (the study's way).

    Variants: ``"marker"`` (the image with the marker), ``"blur"`` (Gaussian-blurred image with
    the proposal's window pasted back sharp, marker on top), ``"gray"`` (grayscale background),
    ``"blur_gray"`` (blurred, then grayscale background). This blurs the full image on every
    call; ``render_variants`` gives the same pixels for many proposals much faster.
    ``mask``: the proposal's ``(H, W)`` bool segmentation mask, needed (and only read) by the
    ``"mask"`` window and the ``"mask-contour"`` marker.
    """
    _check_variant(variant)
    image = as_rgb(image)
    box = as_box(box)
    mask_l = _mask_for(marker, window, mask, image.size)
    background = _background(image, variant, blur_radius)
    return _composite(image, background, box, variant, colour, width, marker, window,
                      mask=mask_l)


def render_variants(
    image: Image.Image,
    boxes: torch.Tensor | Iterable[BoxLike],
    variants: Sequence[str] = STUDY_VARIANTS,
    *,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
    marker: MarkerShape = DEFAULT_MARKER,
    window: WindowShape = DEFAULT_WINDOW,
    target_size: int | None = None,
    masks: MaskInput | None = None,
) -> list[list[Image.Image]]:
    """All visual prompts of an image: ``result[i][j]`` is proposal ``i`` in ``variants[j]``.

    The blurred and grayscale backgrounds are computed once per image and every proposal is
    composited from them with the same mask and marker drawing as ``render_variant`` (the paste
    is restricted to the mask's bounding box), so with ``target_size=None`` the pixels are
    identical to calling ``render_variant`` per proposal (the tests check this).

    ``target_size``: first resize the image (bicubic) so that its short side is
    ``target_size`` (e.g. CLIP's input resolution), scaling the boxes, the blur radius and the
    stroke width (rounded, at least 1 px) by the same factor, and render at that size. This is
    an approximation of rendering at full size and letting CLIP's preprocessing shrink the
    result: the edges of the window and the marker are rasterised at the smaller size, so
    pixels differ slightly, but it is much cheaper for large images. Scores of methods using
    it are therefore not bit-comparable with the full-size rendering (masks are resized
    nearest-neighbour).

    ``masks``: the proposals' segmentation masks, ``(P, H, W)`` bool (or P masks of
    ``(H, W)``), needed by the ``"mask"`` window and the ``"mask-contour"`` marker.
    """
    for variant in variants:
        _check_variant(variant)
    image = as_rgb(image)
    box_list = _boxes(boxes)
    mask_list: list[Image.Image | None] = [None] * len(box_list)
    if uses_masks(marker, window):  # checked before any blurring
        checked = as_masks(masks, len(box_list), image.height, image.width)
        mask_list = [mask_prompts_pil.mask_image(m) for m in checked]
    if target_size is not None:
        if target_size <= 0:
            raise ValueError(f"target_size must be positive, got {target_size}")
        w, h = image.size
        scale = target_size / min(w, h)
        new_size = (max(1, round(w * scale)), max(1, round(h * scale)))
        sx, sy = new_size[0] / w, new_size[1] / h
        image = image.resize(new_size, Image.Resampling.BICUBIC)
        box_list = [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in box_list]
        blur_radius = blur_radius * scale
        width = max(1, round(width * scale)) if width > 0 else width
        mask_list = [None if m is None else mask_prompts_pil.resize_mask(m, new_size)
                     for m in mask_list]

    blurred = None
    if any(v in ("blur", "blur_gray") for v in variants):
        blurred = image.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    backgrounds = {v: _background(image, v, blur_radius, blurred) for v in dict.fromkeys(variants)}
    needs_window = any(v != "marker" for v in variants)
    result = []
    draws_contour = marker == MASK_MARKER and colour is not None and width > 0
    for box, mask in zip(box_list, mask_list, strict=True):
        # The window (mask, its bounding box and the sharp pixels in it) and a mask's contour
        # are computed once per proposal and shared by every variant; only the background
        # copy is per variant.
        window_patch = _window_patch(image, box, window, mask) if needs_window else None
        ring = (mask_prompts_pil.contour_image(mask, width)
                if draws_contour and mask is not None else None)
        row = []
        for v in variants:
            rendered = backgrounds[v].copy()
            if v != "marker" and window_patch is not None:
                sharp, corner, window_l = window_patch
                rendered.paste(sharp, corner, window_l)
            if marker != MASK_MARKER:
                _draw_marker_inplace(rendered, box, marker, colour, width)
            elif ring is not None:
                rendered.paste(colour, (0, 0, *rendered.size), ring)  # type: ignore[arg-type]
            row.append(rendered)
        result.append(row)
    return result


def _window_patch(image: Image.Image, box: Box, window: str, mask: Image.Image | None = None
                  ) -> tuple[Image.Image, tuple[int, int], Image.Image | None] | None:
    """The sharp pixels of a proposal's window, where they go, and the mask to paste them with.

    Pasting ``image.crop(bbox)`` at the mask's bounding box with the cropped mask gives the
    same pixels as the study's full-image ``paste(image, mask=mask)`` (the mask is 0 outside
    its bounding box). A filled rectangle is 255 everywhere inside its bounding box, so for
    rectangular windows the mask is dropped and the paste is a plain copy of the rows.
    """
    sharp = window_mask(image.size, box, window, mask)
    bbox = sharp.getbbox()
    if bbox is None:
        return None
    return image.crop(bbox), bbox[:2], (None if window == "rectangle" else sharp.crop(bbox))

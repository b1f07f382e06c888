"""Visual prompts: crops, markers, blurred/grayscale backgrounds, colour codes and tints.

These reproduce the image edits of the original study:

* 6.2 (the final proposal): for each region proposal the whole image is kept, a red ellipse
  (stroke 3 px) is drawn around the proposal and the background outside the proposal's
  rectangle is blurred (Gaussian, radius 20 px) and/or turned grayscale. ``render_variant``
  does this the straightforward way, one proposal at a time; ``render_variants`` computes the
  blurred / grayscale backgrounds once per image and gives the same pixels.
* 6.1.1: the background outside a proposal is painted with a colour that codes the position
  of the proposal's centre on a 3x3 grid, and the expression is augmented with colour words.
* 6.1.2: the proposal's crop is tinted red (left half) or green (right half) and the
  expression gets " with a red/green overlay".

Boxes are ``(x1, y1, x2, y2)`` pixel coordinates (floats allowed), as everywhere in the package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Box = tuple[float, float, float, float]
BoxLike = Sequence[float] | torch.Tensor
Colour = str | tuple[int, int, int]
Variant = Literal["marker", "blur", "gray", "blur_gray"]
MarkerShape = Literal["ellipse", "rectangle", "none"]
WindowShape = Literal["rectangle", "ellipse"]

VARIANTS: tuple[str, ...] = ("marker", "blur", "gray", "blur_gray")
# The two renderings the study kept for its final proposal (modifications 2 and 4 of 6.2).
STUDY_VARIANTS: tuple[str, ...] = ("blur", "blur_gray")
# The study's tuned parameters (6.2): red ellipse, 3 px stroke, Gaussian blur radius 20 px.
DEFAULT_COLOUR = "red"
DEFAULT_WIDTH = 3
DEFAULT_BLUR_RADIUS = 20.0


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


def _rgb(image: Image.Image) -> Image.Image:
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
    shape: MarkerShape = "ellipse",
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
) -> Image.Image:
    """A copy of ``image`` with an ellipse or rectangle outline inscribed in ``box``."""
    result = image.copy()
    _draw_marker_inplace(result, as_box(box), shape, colour, width)
    return result


def _draw_marker_inplace(
    image: Image.Image, box: Box, shape: str, colour: Colour | None, width: int
) -> None:
    if shape == "none" or colour is None or width <= 0:
        return
    draw = ImageDraw.Draw(image)
    if shape == "ellipse":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "rectangle":
        draw.rectangle(box, outline=colour, width=width)
    else:
        raise ValueError(f"marker shape must be 'ellipse', 'rectangle' or 'none', got {shape!r}")


def _window_mask(size: tuple[int, int], box: Box, window: str) -> Image.Image:
    """The sharp region of a proposal, drawn exactly as the study drew it (PIL mask)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if window == "rectangle":
        draw.rectangle(box, fill=255)
    elif window == "ellipse":
        draw.ellipse(box, fill=255)
    else:
        raise ValueError(f"window shape must be 'rectangle' or 'ellipse', got {window!r}")
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
) -> Image.Image:
    """Paste the proposal's window of ``image`` sharp onto ``background``, draw the marker.

    ``region_only`` pastes only the bounding box of the mask: the same pixels (the mask is 0
    outside it) but without a pass over the whole image, several times faster for small boxes.
    """
    result = background.copy()
    if variant != "marker":
        mask = _window_mask(image.size, box, window)
        if not region_only:
            result.paste(image, mask=mask)  # the study's operation
        elif (bbox := mask.getbbox()) is not None:
            result.paste(image.crop(bbox), bbox[:2], mask.crop(bbox))
    _draw_marker_inplace(result, box, marker, colour, width)
    return result


def render_variant(
    image: Image.Image,
    box: BoxLike,
    variant: Variant = "blur",
    *,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
    marker: MarkerShape = "ellipse",
    window: WindowShape = "rectangle",
) -> Image.Image:
    """One visual prompt for one proposal, computed from scratch (the study's way).

    Variants: ``"marker"`` (the image with the marker), ``"blur"`` (Gaussian-blurred image with
    the proposal's window pasted back sharp, marker on top), ``"gray"`` (grayscale background),
    ``"blur_gray"`` (blurred, then grayscale background). This blurs the full image on every
    call; ``render_variants`` gives the same pixels for many proposals much faster.
    """
    _check_variant(variant)
    image = _rgb(image)
    box = as_box(box)
    background = _background(image, variant, blur_radius)
    return _composite(image, background, box, variant, colour, width, marker, window)


def render_variants(
    image: Image.Image,
    boxes: torch.Tensor | Iterable[BoxLike],
    variants: Sequence[str] = STUDY_VARIANTS,
    *,
    colour: Colour | None = DEFAULT_COLOUR,
    width: int = DEFAULT_WIDTH,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
    marker: MarkerShape = "ellipse",
    window: WindowShape = "rectangle",
    target_size: int | None = None,
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
    it are therefore not bit-comparable with the full-size rendering.
    """
    for variant in variants:
        _check_variant(variant)
    image = _rgb(image)
    box_list = _boxes(boxes)
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

    blurred = None
    if any(v in ("blur", "blur_gray") for v in variants):
        blurred = image.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    backgrounds = {v: _background(image, v, blur_radius, blurred) for v in dict.fromkeys(variants)}
    needs_window = any(v != "marker" for v in variants)
    result = []
    for box in box_list:
        # The window (mask, its bounding box and the sharp pixels in it) is computed once per
        # proposal and shared by every variant; only the background copy is per variant.
        window_patch = _window_patch(image, box, window) if needs_window else None
        row = []
        for v in variants:
            rendered = backgrounds[v].copy()
            if v != "marker" and window_patch is not None:
                sharp, corner, mask = window_patch
                rendered.paste(sharp, corner, mask)
            _draw_marker_inplace(rendered, box, marker, colour, width)
            row.append(rendered)
        result.append(row)
    return result


def _window_patch(image: Image.Image, box: Box, window: str
                  ) -> tuple[Image.Image, tuple[int, int], Image.Image | None] | None:
    """The sharp pixels of a proposal's window, where they go, and the mask to paste them with.

    Pasting ``image.crop(bbox)`` at the mask's bounding box with the cropped mask gives the
    same pixels as the study's full-image ``paste(image, mask=mask)`` (the mask is 0 outside
    its bounding box). A filled rectangle is 255 everywhere inside its bounding box, so for
    rectangular windows the mask is dropped and the paste is a plain copy of the rows.
    """
    mask = _window_mask(image.size, box, window)
    bbox = mask.getbbox()
    if bbox is None:
        return None
    return image.crop(bbox), bbox[:2], (None if window == "rectangle" else mask.crop(bbox))


# ----------------------------------------------------------------------------------------------
# 6.1.1: position coded as a background colour
# ----------------------------------------------------------------------------------------------
LUT_RGB: dict[str, tuple[int, int, int]] = {
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "magenta": (255, 0, 255),
    "black": (0, 0, 0),
    "brown": (139, 69, 19),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
# Rows top/middle/bottom, columns left/centre/right (the study's table).
LUT_GRID: tuple[tuple[str, str, str], ...] = (
    ("blue", "yellow", "red"),
    ("green", "magenta", "black"),
    ("brown", "cyan", "white"),
)
# Normalised centroid cuts; a centroid exactly on a cut belongs to the lower cell (<=).
LUT_X_CUTS = (0.35, 0.65)
LUT_Y_CUTS = (0.33, 0.67)


def _cell(value: float, cuts: tuple[float, float]) -> int:
    return 0 if value <= cuts[0] else 1 if value <= cuts[1] else 2


def lut_colour(box: BoxLike, size: tuple[int, int]) -> tuple[str, tuple[int, int, int]]:
    """The study's colour for a proposal: 3x3 grid cell of its normalised centroid."""
    x1, y1, x2, y2 = as_box(box)
    width, height = size
    cx = (x1 + x2) / 2 / width
    cy = (y1 + y2) / 2 / height
    name = LUT_GRID[_cell(cy, LUT_Y_CUTS)][_cell(cx, LUT_X_CUTS)]
    return name, LUT_RGB[name]


def paint_background(image: Image.Image, box: BoxLike, rgb: tuple[int, int, int] | None = None
                     ) -> Image.Image:
    """Everything outside ``box``'s rectangle set to ``rgb`` (default: the LUT colour)."""
    image = _rgb(image)
    box = as_box(box)
    if rgb is None:
        rgb = lut_colour(box, image.size)[1]
    result = Image.new("RGB", image.size, tuple(rgb))
    result.paste(image, mask=_window_mask(image.size, box, "rectangle"))
    return result


# Colours of a grid column (left/right) or row (above = top, below = bottom).
KEYWORD_COLOURS: dict[str, tuple[str, str, str]] = {
    "left": tuple(row[0] for row in LUT_GRID),
    "right": tuple(row[2] for row in LUT_GRID),
    "above": LUT_GRID[0],
    "below": LUT_GRID[2],
}
_TOKEN = re.compile(r"[a-z]+")


def colour_prompts(sentence: str) -> list[str]:
    """The study's colour-augmented expressions (6.1.1); the plain sentence comes first.

    For each of the keywords left / right / above / below present as a word, three colours
    (the grid column or row the keyword points at) each give two prompts,
    ``"{text}. The image has a {colour} background"`` and ``"{colour}. {text}"``. For above /
    below, ``text`` is the sentence cut before the keyword (the part naming the object);
    for left / right it is the whole sentence.
    """
    prompts = [sentence]
    tokens = set(_TOKEN.findall(sentence.lower()))
    for keyword, colours in KEYWORD_COLOURS.items():
        if keyword not in tokens:
            continue
        text = sentence
        if keyword in ("above", "below"):
            match = re.search(rf"\b{keyword}\b", sentence, flags=re.IGNORECASE)
            text = sentence[: match.start()].strip() if match else sentence
        for colour in colours:
            prompts.append(f"{text}. The image has a {colour} background")
            prompts.append(f"{colour}. {text}")
    return prompts


# ----------------------------------------------------------------------------------------------
# 6.1.2: red / green tint by horizontal position
# ----------------------------------------------------------------------------------------------
OVERLAY_RGBA: dict[str, tuple[int, int, int, int]] = {
    "left": (255, 0, 0, 128),  # red, alpha 0.5
    "right": (0, 255, 0, 128),  # green, alpha 0.5
    "centre": (0, 0, 0, 0),  # no tint
}


def overlay_side(box: BoxLike, size: tuple[int, int]) -> str:
    """``"left"``/``"right"``/``"centre"``: where the box centroid lies w.r.t. the middle."""
    x1, _, x2, _ = as_box(box)
    cx = (x1 + x2) / 2 / size[0]
    return "left" if cx < 0.5 else "right" if cx > 0.5 else "centre"


def tint_crop(image: Image.Image, box: BoxLike, side: str | None = None) -> Image.Image:
    """The crop of ``box`` alpha-composited with the tint of its side (RGB result).

    ``side`` overrides the side computed from the box centroid (``overlay_side``).
    """
    side = overlay_side(box, image.size) if side is None else side
    if side not in OVERLAY_RGBA:
        raise ValueError(f"side must be one of {tuple(OVERLAY_RGBA)}, got {side!r}")
    region = crop(image, box).convert("RGBA")
    tint = Image.new("RGBA", region.size, OVERLAY_RGBA[side])
    # The crop is opaque, so the composite is opaque too and RGB loses nothing.
    return Image.alpha_composite(region, tint).convert("RGB")


def overlay_prompt(sentence: str) -> str:
    """The study's prompt for tinted crops: mention the tint a 'left'/'right' object has.

    Like the study, this tests for the substring (so e.g. "leftmost" counts) and 'left' wins
    when both occur.
    """
    lowered = sentence.lower()
    if "left" in lowered:
        return sentence + " with a red overlay"
    if "right" in lowered:
        return sentence + " with a green overlay"
    return sentence


# ----------------------------------------------------------------------------------------------
# Figures for the book
# ----------------------------------------------------------------------------------------------
def side_by_side(images: Sequence[Image.Image], titles: Sequence[str] | None = None,
                 width: float = 3.2, columns: int | None = None) -> Figure:
    """A matplotlib figure showing ``images`` in a row (or a grid of ``columns``).

    Each image gets a thin grey frame, so that a white or pale picture keeps its edges on a
    white page.
    """
    import matplotlib.pyplot as plt  # lazy: plotting is only needed for the book

    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    columns = min(columns or len(images), len(images))
    rows = -(-len(images) // columns)
    aspect = max(im.size[1] / im.size[0] for im in images)
    # Room for a (possibly two-line) title above every row, so titles never cover images.
    title_room = 0.45 * rows if titles is not None else 0.2
    fig, axes = plt.subplots(rows, columns,
                             figsize=(width * columns, width * aspect * rows + title_room),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(images):
            ax.axis("off")
            continue
        ax.imshow(images[k])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.55")
            spine.set_linewidth(1.0)
        if titles is not None:
            ax.set_title(titles[k], fontsize=10)
    fig.tight_layout()
    return fig

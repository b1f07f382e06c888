"""Visual prompts: pixel-exact fast path, study parameters, crops and markers."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from refcocog_tools.prompts import visual_prompts as vp

matplotlib.use("Agg")


def _image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    # Random texture, so that blur, grayscale and sharp regions all differ from each other.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and ImageChops.difference(a, b).getbbox() is None


BOXES = [
    (10.0, 8.0, 30.0, 30.0),
    (10.4, 7.6, 30.5, 29.49),  # fractional coordinates
    (0.0, 0.0, 64.0, 48.0),  # the whole image, touching every border
    (50.7, 30.2, 64.0, 48.0),  # touching the bottom-right border
    (0.0, 20.0, 5.5, 47.9),  # thin, on the left border
    (20.0, 20.0, 20.0, 20.0),  # degenerate point
    (-5.5, -3.2, 10.7, 12.0),  # partly outside the image
    (60.2, 40.0, 70.3, 52.9),
]


@pytest.mark.parametrize("params", [
    {},
    {"marker": "rectangle", "colour": (0, 128, 255), "width": 1, "blur_radius": 2.5},
    {"marker": "none", "window": "ellipse"},
])
def test_fast_path_matches_per_proposal_rendering(params: dict) -> None:
    image = _image()
    variants = list(vp.VARIANTS)
    fast = vp.render_variants(image, torch.tensor(BOXES), variants, **params)
    assert len(fast) == len(BOXES) and all(len(row) == len(variants) for row in fast)
    for box, row in zip(BOXES, fast, strict=True):
        for variant, rendered in zip(variants, row, strict=True):
            assert _same(rendered, vp.render_variant(image, box, variant, **params)), (box, variant)


def test_blur_variant_follows_the_study() -> None:
    image = _image()
    box = (10.0, 8.0, 30.0, 30.0)
    out = np.asarray(vp.render_variant(image, box, "blur", marker="none"))
    original = np.asarray(image)
    # Inside the (inclusive) window the pixels are untouched; far outside they are blurred.
    assert np.array_equal(out[8:31, 10:31], original[8:31, 10:31])
    assert not np.array_equal(out[40:, 40:], original[40:, 40:])
    # Radius-20 blur of noise is nearly flat.
    assert out[40:, 40:].std() < original[40:, 40:].std() / 4


def test_gray_variants_are_gray_outside_and_colour_inside() -> None:
    image = _image()
    box = (10.0, 8.0, 30.0, 30.0)
    for variant in ("gray", "blur_gray"):
        out = np.asarray(vp.render_variant(image, box, variant, marker="none")).astype(int)
        outside = out[35:, 35:]
        assert (outside == outside[..., :1]).all()  # R == G == B
        inside = out[10:28, 12:28]
        assert (inside[..., 0] != inside[..., 1]).any()


def test_marker_is_drawn_in_colour_and_input_untouched() -> None:
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    before = image.copy()
    out = vp.render_variant(image, (5, 5, 35, 35), "marker")
    assert _same(image, before)
    # The ellipse touches the middle of the left side of its box; the corner stays white.
    assert out.getpixel((6, 20)) == (255, 0, 0)
    assert out.getpixel((5, 5)) == (255, 255, 255)
    rect = vp.draw_marker(image, (5, 5, 35, 35), shape="rectangle", colour="blue", width=1)
    assert rect.getpixel((5, 5)) == (0, 0, 255) and rect.getpixel((20, 20)) == (255, 255, 255)


def test_target_size_resizes_and_scales() -> None:
    image = _image(128, 96)
    [[small]] = vp.render_variants(image, [(32, 24, 96, 72)], ["blur"], target_size=48)
    assert small.size == (64, 48)
    # Same as rendering the resized image with scaled box, radius and stroke width.
    resized = image.resize((64, 48), Image.Resampling.BICUBIC)
    expected = vp.render_variant(resized, (16, 12, 48, 36), "blur", blur_radius=10, width=2)
    assert _same(small, expected)


def test_invalid_arguments_are_rejected() -> None:
    image = _image()
    with pytest.raises(ValueError, match="unknown variant"):
        vp.render_variants(image, [(0, 0, 5, 5)], ["sepia"])
    with pytest.raises(ValueError, match="not xyxy"):
        vp.render_variant(image, (10, 10, 5, 5))


def test_crop_rounds_and_is_never_empty() -> None:
    image = _image()
    assert vp.crop(image, (10.4, 5.6, 20.5, 15.0)).size == (10, 9)
    assert vp.crop(image, (7.0, 7.0, 7.0, 7.0)).size == (1, 1)
    assert _same(vp.crop(image, (3, 4, 13, 9)), image.crop((3, 4, 13, 9)))

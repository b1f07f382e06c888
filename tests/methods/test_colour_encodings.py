"""The colour encodings of position (chapter 08): the LUT, painted backgrounds, prompts, tints."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refcocog_tools.methods import colour_encodings as ce


def _image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    # Random texture, so that the painted background and the kept region differ.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(("centre", "name"), [
    ((0.1, 0.1), "blue"), ((0.5, 0.1), "yellow"), ((0.9, 0.1), "red"),
    ((0.1, 0.5), "green"), ((0.5, 0.5), "magenta"), ((0.9, 0.5), "black"),
    ((0.1, 0.9), "brown"), ((0.5, 0.9), "cyan"), ((0.9, 0.9), "white"),
    ((0.35, 0.33), "blue"),  # on the cuts: the lower cell
    ((0.36, 0.34), "magenta"),
])
def test_lut_colour_grid(centre: tuple[float, float], name: str) -> None:
    cx, cy = centre[0] * 200, centre[1] * 100
    got, rgb = ce.lut_colour((cx - 2, cy - 2, cx + 2, cy + 2), (200, 100))
    assert got == name and rgb == ce.LUT_RGB[name]


def test_lut_rgb_values() -> None:
    assert ce.LUT_RGB["brown"] == (139, 69, 19) and ce.LUT_RGB["magenta"] == (255, 0, 255)
    assert len(set(ce.LUT_RGB.values())) == 9


def test_paint_background() -> None:
    image = _image()
    out = np.asarray(ce.paint_background(image, (10, 10, 20, 20), (0, 255, 0)))
    assert (out[0, 0] == (0, 255, 0)).all() and (out[30:, 30:] == (0, 255, 0)).all()
    assert np.array_equal(out[10:21, 10:21], np.asarray(image)[10:21, 10:21])
    # Default colour: the LUT colour of the box (top-left -> blue).
    assert ce.paint_background(image, (0, 0, 5, 5)).getpixel((60, 40)) == (0, 0, 255)


def test_colour_prompts() -> None:
    assert ce.colour_prompts("a red car") == ["a red car"]
    left = ce.colour_prompts("the man on the left")
    assert left[0] == "the man on the left" and len(left) == 7
    assert left[1] == "the man on the left. The image has a blue background"
    assert left[2] == "blue. the man on the left"
    assert {p.split(".")[0] for p in left[2::2]} == {"blue", "green", "brown"}
    above = ce.colour_prompts("the lamp above the table")
    assert above[1:3] == ["the lamp. The image has a blue background", "blue. the lamp"]
    assert above[-1] == "red. the lamp"
    below = ce.colour_prompts("cat below the chair")
    assert [p.split(".")[0] for p in below[2::2]] == ["brown", "cyan", "white"]
    both = ce.colour_prompts("right cup above the plate")
    assert len(both) == 13 and both[1].endswith("red background") and both[-1] == "red. right cup"
    # Substrings are not keywords: "leftover" is not "left".
    assert ce.colour_prompts("leftover pizza") == ["leftover pizza"]


def test_tint_crop_sides() -> None:
    image = Image.new("RGB", (100, 50), (0, 0, 255))
    left = ce.tint_crop(image, (0, 0, 20, 20))
    assert left.mode == "RGB" and left.size == (20, 20)
    r, g, b = left.getpixel((5, 5))
    assert r > 100 and g == 0 and b < 200  # blue mixed with half red
    r, g, b = ce.tint_crop(image, (80, 0, 100, 20)).getpixel((5, 5))
    assert g > 100 and r == 0
    assert ce.tint_crop(image, (40, 0, 60, 20)).getpixel((5, 5)) == (0, 0, 255)  # centred
    assert ce.overlay_side((40, 0, 60, 20), (100, 50)) == "centre"
    assert ce.tint_crop(image, (40, 0, 60, 20), side="left").getpixel((5, 5))[0] > 100


def test_overlay_prompt() -> None:
    assert ce.overlay_prompt("man on the left") == "man on the left with a red overlay"
    assert ce.overlay_prompt("dog right side") == "dog right side with a green overlay"
    assert ce.overlay_prompt("left of the right dog").endswith("red overlay")
    assert ce.overlay_prompt("a dog") == "a dog"

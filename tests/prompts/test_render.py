"""The tensor visual-prompt pipeline against Pillow, the reference (about 20 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.minidata import default_data_root
from refcocog_tools.engine.bench import choice_agreement
from refcocog_tools.engine.evaluate import group_by_image
from refcocog_tools.prompts import render, tensor_filters
from refcocog_tools.prompts.visual_prompts import render_variants
from refcocog_tools.proposals.proposers import GroundTruthProposer
from refcocog_tools.report.figure_panels import ultralytics_photo


def _noise(seed: int, size: tuple[int, int] = (53, 41)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _array(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("radius", [0.6, 2.0, 7.3, 20.0, 40.0])
def test_blur_is_pillows_three_box_blurs_bit_for_bit(radius: float) -> None:
    image = _noise(int(radius * 10))
    expected = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)))
    pixels = render.image_tensor(image)
    # The tensor operations (what a GPU runs) and the CPU's per-plane Pillow call, both exact.
    assert np.array_equal(_array(tensor_filters.box_blur_ops(pixels, radius)), expected)
    assert np.array_equal(_array(tensor_filters.pillow_gaussian_blur(pixels, radius)), expected)
    stacked = tensor_filters.pillow_gaussian_blur(torch.stack([pixels, pixels.flip(-1)]), radius)
    assert np.array_equal(_array(stacked[0]), expected)  # batches keep every plane apart
    # ... and it is not a true Gaussian: torchvision's differs by several levels.
    if 2 <= radius <= 7.3:  # (its kernel must fit the image)
        from torchvision.transforms.v2.functional import gaussian_blur

        sigma = radius
        kernel = 2 * int(3 * sigma) + 1
        true = gaussian_blur(render.image_tensor(image), [kernel, kernel], [sigma, sigma])
        assert not np.array_equal(_array(true), expected)


def test_grayscale_is_pillows() -> None:
    image = _noise(3)
    expected = np.asarray(image.convert("L").convert("RGB"))
    grey = tensor_filters.pillow_grayscale(render.image_tensor(image))
    assert np.array_equal(_array(grey), expected)


BOXES = torch.tensor([[3.4, 2.7, 30.6, 25.2], [0.0, 0.0, 52.9, 40.9], [-5.0, 10.2, 12.5, 60.0],
                      [20.0, 20.0, 20.4, 20.9], [40.7, 1.0, 52.0, 12.0]])


def test_rectangles_match_pillow_pixel_for_pixel() -> None:
    """Window and rectangle marker are rasterised exactly as Pillow draws them."""
    image = _noise(5)
    variants = ("marker", "blur", "gray", "blur_gray")
    reference = render_variants(image, BOXES, variants, marker="rectangle", blur_radius=4.0)
    got = render.render_prompts(render.image_tensor(image), BOXES, variants,
                                marker="rectangle", blur_radius=4.0)
    for p in range(len(BOXES)):
        for v in range(len(variants)):
            assert np.array_equal(_array(got[p, v]), np.asarray(reference[p][v])), (p, v)


def test_ellipses_match_pillow_pixel_for_pixel() -> None:
    image = _noise(6, (120, 90))
    boxes = torch.tensor([[10.2, 5.5, 70.8, 60.1], [50.0, 30.0, 119.0, 89.0],
                          [-8.5, 40.0, 30.0, 100.0], [60.0, 60.0, 61.0, 60.5]])
    # "marker" between two windowed variants: the window is pasted into each run of them.
    variants = ("blur", "marker", "gray")
    for window in ("rectangle", "ellipse"):
        reference = render_variants(image, boxes, variants, window=window, blur_radius=3.0)
        got = render.render_prompts(render.image_tensor(image), boxes, variants,
                                    window=window, blur_radius=3.0)
        for p in range(len(boxes)):
            for v in range(len(variants)):
                assert np.array_equal(_array(got[p, v]), np.asarray(reference[p][v])), (p, v)


@pytest.mark.parametrize("marker", ["ellipse", "rectangle"])
@pytest.mark.parametrize("window", ["rectangle", "ellipse"])
def test_device_rendering_never_waits_for_the_device(marker: str, window: str) -> None:
    """Tensors on the "meta" device have shapes but no values, so any step that reads a value
    back from the device (``.item()``, ``bool()``, ``.tolist()``, boolean indexing) fails on
    them. On a GPU each such read makes the host wait for every queued kernel, the encoder's
    included; none may happen between an image's arrival and its model inputs."""
    image = render.image_tensor(_noise(7, (90, 70))).to("meta")
    boxes = torch.tensor([[10.2, 5.5, 70.8, 60.1], [-8.5, 40.0, 30.0, 100.0]])
    inputs = render.prompt_inputs(image, boxes, ("marker", "blur", "blur_gray"), 32,
                                  device="meta", marker=marker, window=window)
    assert inputs.device.type == "meta" and inputs.shape == (6, 3, 32, 32)
    with pytest.raises(RuntimeError, match="meta"):  # the check itself can fail
        bool(image.sum() > 0)


def test_bad_boxes_and_modes_are_refused() -> None:
    image = render.image_tensor(_noise(1))
    with pytest.raises(ValueError, match="xyxy"):
        render.render_prompts(image, torch.tensor([[5.0, 5.0, 1.0, 9.0]]))
    with pytest.raises(ValueError, match="preprocess"):
        render.model_inputs(image[None], 32, "stretch")
    with pytest.raises(ValueError, match="render backend"):
        render.prompt_inputs(image, BOXES, ("blur",), 32, backend="opencv")


def test_square_preprocessing_keeps_the_whole_image() -> None:
    """center-crop cuts the sides of a wide image off; square keeps every column."""
    wide = torch.zeros(1, 3, 40, 80, dtype=torch.uint8)
    wide[..., :10] = 255  # a white band at the left edge
    white = (1 - render.CLIP_MEAN[0]) / render.CLIP_STD[0]
    cropped = render.model_inputs(wide, 32, "center-crop")
    square = render.model_inputs(wide, 32, "square")
    assert cropped.shape == square.shape == (1, 3, 32, 32)
    assert float(cropped[0, 0, :, 0].max()) < 0  # the band was cut off
    assert float(square[0, 0, :, 0].min()) == pytest.approx(white, abs=0.05)
    # The Pillow form of the step gives the same inputs up to resampling rounding.
    pil = render.pil_preprocess(32, "square")(render.to_pil(wide[0]))
    assert float((pil - square[0]).abs().max()) < 0.05


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_model_inputs_agree_with_pillow_on_photographs(name: str) -> None:
    image = Image.open(ultralytics_photo(name)).convert("RGB")
    w, h = image.size
    # An edge proposal, a central one, a thin one, the whole image.
    boxes = torch.tensor([[0.0, 0.3 * h, 0.2 * w, 0.9 * h], [0.35 * w, 0.25 * h, 0.7 * w, 0.8 * h],
                          [0.5 * w, 0.1 * h, 0.52 * w, 0.6 * h], [0.0, 0.0, w - 1.0, h - 1.0]])
    for mode in render.PREPROCESS_MODES:
        difference = render.input_difference(image, boxes, ("blur", "blur_gray"), 224,
                                              preprocess=mode)
        print(name, mode, difference)  # the figures of the note (pytest -s shows them)
        # The prompts are pixel-identical; what is left is the resampling: torchvision's
        # antialiased bicubic on uint8 against Pillow's, and Pillow's rounding to uint8.
        assert difference["max_levels"] <= 8, difference
        assert difference["mean_levels"] < 0.6, difference


def test_backends_choose_the_same_boxes_on_the_embedded_test_split(tiny_rn, tiny_vit) -> None:
    root = default_data_root()
    test_split = RefCOCOg(root, "test", view="expression")
    pool = RefCOCOg(root, "train", view="expression").sentences()
    groups = group_by_image(test_split)
    for backbone in (tiny_rn, tiny_vit):
        result = choice_agreement(groups, [backbone], GroundTruthProposer(), pool,
                                  n_debias=30)
        assert result["expressions"] == len(test_split)
        print(backbone.name, result)
        assert result["same_choices"] == 1.0, result
        assert result["max_levels"] <= 8, result


def test_preprocess_views_show_what_clip_sees_of_an_edge_proposal() -> None:
    """Figures: the centre crop loses a proposal at the left edge, the square view keeps it."""
    from refcocog_tools.report.figure_panels import preprocess_views, tensor_variants

    image = Image.new("RGB", (160, 90), (0, 0, 255))
    views = preprocess_views(image, (1.0, 10.0, 30.0, 80.0), resolution=32, blur_radius=2.0,
                             width=3)
    assert set(views) == {"center-crop", "square"}
    red = {mode: (np.asarray(v)[..., 0] > 128).sum() for mode, v in views.items()}
    assert red["center-crop"] == 0 < red["square"]  # the red ellipse was cut off
    [[drawn]] = tensor_variants(image, [(1.0, 10.0, 30.0, 80.0)], ("blur",), blur_radius=2.0)
    assert np.array_equal(np.asarray(drawn), np.asarray(
        render_variants(image, [(1.0, 10.0, 30.0, 80.0)], ("blur",), blur_radius=2.0)[0][0]))

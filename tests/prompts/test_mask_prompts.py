"""FGVP's mask prompts (sharp mask window, mask contour): tensor renderer against Pillow, what
they change, the device rule, refusals, and red-circle scoring with them end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from refcocog_tools.cli.evaluate import red_circle_options
from refcocog_tools.cli.main import build_parser
from refcocog_tools.methods.red_circle import RedCircle, RedCircleOptions
from refcocog_tools.methods.registry import make_method
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts import mask_prompts, render
from refcocog_tools.prompts import visual_prompts as vp
from refcocog_tools.prompts.mask_prompts_pil import mask_image, resize_mask
from refcocog_tools.proposals.proposers import GroundTruthProposer, Proposals

WIDTH, HEIGHT = 96, 72
VARIANTS = ("marker", "blur", "gray", "blur_gray")
# Every form a mask takes part in: a mask window under each marker, a mask contour over each
# window.
MASK_FORMS = sorted({(m, w) for m in vp.MARKER_SHAPES for w in vp.WINDOW_SHAPES
                     if mask_prompts.uses_masks(m, w)})


def _noise(seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _person(cx: int, cy: int, r: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> torch.Tensor:
    """A hand-made "person": a disc of radius ``r`` (head) over a 2r x 3r rectangle (body)."""
    ys, xs = torch.meshgrid(torch.arange(size[1]), torch.arange(size[0]), indexing="ij")
    head = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    body = (xs >= cx - r) & (xs <= cx + r) & (ys > cy + r) & (ys <= cy + 4 * r)
    return head | body


def _proposals() -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and masks: two people in their (fractional) boxes, one cut by the image's corner,
    a mask that spills out of its box, and an empty mask."""
    masks = torch.stack([
        _person(30, 15, 8), _person(72, 40, 6), _person(2, 2, 4),
        _person(50, 30, 5) | (torch.arange(WIDTH) < 3).expand(HEIGHT, WIDTH),
        torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)])
    boxes = torch.tensor([[21.6, 6.2, 38.9, 47.0], [65.5, 33.7, 78.2, 64.0], [0.0, 0.0, 6.4, 18.0],
                          [44.0, 24.0, 56.0, 50.0], [10.0, 10.0, 20.0, 20.0]])
    return boxes, masks


def _array(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("marker", "window"), MASK_FORMS)
def test_mask_forms_match_pillow_pixel_for_pixel(marker: str, window: str) -> None:
    """As the ellipse's: the tensor prompts are Pillow's, pixel for pixel, in every variant,
    and the fast Pillow path is the per-proposal one."""
    image = _noise(1)
    boxes, masks = _proposals()
    params = {"marker": marker, "window": window, "blur_radius": 3.0, "width": 2}
    reference = vp.render_variants(image, boxes, VARIANTS, masks=masks, **params)
    got = render.render_prompts(render.image_tensor(image), boxes, VARIANTS, masks=masks,
                                **params)
    assert got.shape == (len(boxes), len(VARIANTS), 3, HEIGHT, WIDTH)
    for p in range(len(boxes)):
        for v, variant in enumerate(VARIANTS):
            assert np.array_equal(_array(got[p, v]), np.asarray(reference[p][v])), (p, variant)
            alone = vp.render_variant(image, boxes[p], variant, mask=masks[p], **params)
            assert np.array_equal(np.asarray(alone), np.asarray(reference[p][v])), (p, variant)


def test_smaller_rendering_resizes_masks_alike_in_both_renderers() -> None:
    """``render_size``: both renderers shrink the masks nearest-neighbour at the pixel centres,
    to the same pixels; what is left between the prompts is the bicubic resize of the image."""
    from fractions import Fraction

    image = _noise(2)
    boxes, masks = _proposals()
    for target in (31, 50, 71):
        pixels, _, params = render._render_smaller(
            render.image_tensor(image), boxes, target, {"window": "mask", "masks": masks})
        size = (pixels.shape[2], pixels.shape[1])
        for old, new in zip((HEIGHT, WIDTH), (size[1], size[0]), strict=True):
            exact = [int(Fraction(2 * i + 1, 2) * old / new) for i in range(new)]
            assert mask_prompts.nearest_indices(old, new).tolist() == exact
        for ours, mask in zip(params["masks"], masks, strict=True):
            theirs = np.asarray(resize_mask(mask_image(mask), size)) > 0
            assert np.array_equal(ours.numpy(), theirs), target
            # Pillow's own NEAREST (floating point) differs only where a centre is on an edge.
            pillow = np.asarray(mask_image(mask).resize(size, Image.Resampling.NEAREST)) > 0
            assert (pillow != theirs).mean() < 0.02
    reference = vp.render_variants(image, boxes, ("blur",), window="mask", marker="mask-contour",
                                   masks=masks, target_size=40, blur_radius=3.0)
    assert reference[0][0].size == (53, 40)
    pil, torch_inputs = (render.prompt_inputs(
        image, boxes, ("blur",), 40, window="mask", marker="mask-contour", masks=masks,
        target_size=40, blur_radius=3.0, backend=backend) for backend in ("pil", "torch"))
    assert torch_inputs.shape == pil.shape == (len(boxes), 3, 40, 40)
    # The bicubic resizes of the image differ by rounding (8 levels at most, as for boxes).
    levels = (torch_inputs - pil).abs() * torch.tensor(render.CLIP_STD).view(1, 3, 1, 1) * 255
    assert float(levels.max()) <= 8


def test_contour_is_the_square_dilation_minus_the_mask() -> None:
    """The ring is every pixel within ``width`` (chessboard distance) of the mask and not in
    it, as scipy's binary dilation computes it independently."""
    _, masks = _proposals()
    for stroke in (1, 3):
        ring = mask_prompts.contour_masks(masks, stroke)
        for mask, got in zip(masks.numpy(), ring.numpy(), strict=True):
            dilated = ndimage.binary_dilation(mask, np.ones((2 * stroke + 1,) * 2, bool))
            assert np.array_equal(got, dilated & ~mask)
    assert not mask_prompts.contour_masks(masks, 0).any()


def test_a_mask_prompt_differs_from_the_box_prompt_where_the_mask_does() -> None:
    """Blur reverse mask: inside the mask the photograph, elsewhere in the box the blurred
    background (the box window keeps those neighbour pixels sharp); the contour hugs the mask,
    not the box's ellipse."""
    image = _noise(3)
    boxes, masks = _proposals()
    original = np.asarray(image)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(3.0)))
    by_mask, by_box = (np.asarray(vp.render_variant(
        image, boxes[0], "blur", marker="none", window=w, mask=masks[0], blur_radius=3.0))
        for w in ("mask", "rectangle"))
    inside = masks[0].numpy()
    in_box = vp.window_mask(image.size, vp.as_box(boxes[0]), "rectangle")
    box_not_mask = (np.asarray(in_box) > 0) & ~inside
    assert box_not_mask.sum() > 50  # the test's premise: the person does not fill its box
    assert np.array_equal(by_mask[inside], original[inside])
    assert np.array_equal(by_mask[box_not_mask], blurred[box_not_mask])
    assert np.array_equal(by_box[box_not_mask], original[box_not_mask])
    assert np.array_equal(by_mask[~inside & ~box_not_mask], by_box[~inside & ~box_not_mask])
    # Grey reverse mask: grey outside the mask (R == G == B), colour inside it.
    grey = np.asarray(vp.render_variant(image, boxes[0], "gray", marker="none", window="mask",
                                        mask=masks[0])).astype(int)
    assert (grey[~inside] == grey[~inside][:, :1]).all()
    assert (grey[inside][:, 0] != grey[inside][:, 1]).any()
    # The contour: red pixels only next to the mask, none on it; the ellipse's elsewhere.
    white = Image.new("RGB", image.size, "white")
    contour = np.asarray(vp.draw_marker(white, boxes[0], "mask-contour", mask=masks[0]))
    ellipse = np.asarray(vp.draw_marker(white, boxes[0], "ellipse"))
    red = (contour == (255, 0, 0)).all(-1)
    near = ndimage.binary_dilation(inside, np.ones((7, 7), bool)) & ~inside
    assert red.any() and not (red & ~near).any() and not (red & inside).any()
    assert not np.array_equal(red, (ellipse == (255, 0, 0)).all(-1))


@pytest.mark.parametrize(("marker", "window"), MASK_FORMS)
def test_mask_rendering_never_waits_for_the_device(marker: str, window: str) -> None:
    """The meta device has shapes but no values: any read-back (``bool()``, ``.item()``,
    boolean indexing) in the mask forms' path from image to model inputs would fail here."""
    image = render.image_tensor(_noise(4)).to("meta")
    boxes, masks = _proposals()
    for target_size in (None, 48):
        inputs = render.prompt_inputs(image, boxes, ("marker", "blur", "blur_gray"), 32,
                                      device="meta", marker=marker, window=window,
                                      masks=masks, target_size=target_size)
        assert inputs.device.type == "meta" and inputs.shape == (15, 3, 32, 32)
    with pytest.raises(RuntimeError, match="meta"):  # the check itself can fail
        bool(masks.to("meta").any())


@pytest.mark.parametrize(("marker", "window"), [("mask-contour", "rectangle"),
                                                ("ellipse", "mask")])
def test_a_mask_prompt_without_masks_is_one_line_naming_the_input(marker: str,
                                                                  window: str) -> None:
    image = _noise(5)
    boxes, masks = _proposals()
    calls = [lambda m: vp.render_variants(image, boxes, ("blur",), marker=marker,
                                          window=window, masks=m),
             lambda m: render.render_prompts(render.image_tensor(image), boxes, ("blur",),
                                             marker=marker, window=window, masks=m)]
    for call in calls:
        for wrong, says in [(None, "got none"), (masks[:2], r"\(5, 72, 96\)"),
                            (masks.to(torch.uint8), "bool")]:
            with pytest.raises(ValueError, match=says) as raised:
                call(wrong)
            assert "\n" not in str(raised.value) and str(raised.value).startswith("masks")
    # Box forms never look at masks.
    assert len(vp.render_variants(image, boxes, ("blur",), masks=None)) == len(boxes)


def test_red_circle_without_masks_names_the_option(tiny_rn) -> None:
    image = _noise(6)
    boxes, _ = _proposals()
    method = make_method("red-circle", [tiny_rn], cache=EmbeddingCache(None), n_debias=0,
                         window="mask", marker="mask-contour")
    with pytest.raises(ValueError, match="--window mask --marker mask-contour") as raised:
        method.predict(image, ["the person"], Proposals(boxes, [None] * len(boxes)))
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="window"):
        RedCircleOptions(window="circle")


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_red_circle_scores_with_mask_prompts_end_to_end(tiny_rn, backend: str) -> None:
    """Blur reverse mask with the tiny model: scores for every proposal, different from the
    box window's, drawn from each proposal's own mask (a changed mask changes the key and the
    score), the same choices by both renderers."""
    image = _noise(7)
    boxes, masks = _proposals()
    proposals = Proposals(boxes, ["person"] * len(boxes))
    proposals.masks = masks  # the field the mask proposers fill in
    expressions = ["the person on the left", "a small person"]

    def method(**options: object) -> RedCircle:
        return make_method("red-circle", [tiny_rn], cache=EmbeddingCache(None), n_debias=0,
                           debias_at_zero="own-prompts", render_backend=backend,
                           **options)  # type: ignore[return-value]

    fgvp = method(variants=("blur",), window="mask", marker="none")
    prediction = fgvp.predict(image, expressions, proposals)
    assert prediction.scores.shape == (2, len(boxes)) and torch.isfinite(prediction.scores).all()
    assert fgvp.config()["window"] == "mask"
    boxed = method(variants=("blur",), window="rectangle", marker="none")
    assert not torch.allclose(prediction.scores, boxed.predict(image, expressions,
                                                               proposals).scores)
    # Another mask for the first proposal: a new cache key and another score for it.
    moved = masks.clone()
    moved[0] = _person(30, 20, 6)
    keys = fgvp.visual_prompt_keys(image, boxes, masks)
    assert keys[1:] == fgvp.visual_prompt_keys(image, boxes, moved)[1:]
    assert keys[0] != fgvp.visual_prompt_keys(image, boxes, moved)[0]
    proposals.masks = moved
    rescored = fgvp.predict(image, expressions, proposals).scores
    assert not torch.allclose(rescored[:, 0], prediction.scores[:, 0])
    # The area filter keeps proposals and their masks together (the small ones here).
    small = method(window="mask", marker="mask-contour", area_filter=0.05)
    kept = small.kept_proposals(image.size, boxes)
    assert 0 < len(kept) < len(boxes)
    assert torch.isfinite(small.predict(image, expressions, proposals).scores[:, kept]).all()


def test_both_backends_choose_alike_with_mask_prompts(tiny_rn) -> None:
    image = _noise(8)
    boxes, masks = _proposals()
    proposals = Proposals(boxes, [None] * len(boxes))
    proposals.masks = masks
    chosen = {}
    for backend in render.RENDER_BACKENDS:
        method = make_method("red-circle", [tiny_rn], cache=EmbeddingCache(None), n_debias=0,
                             window="mask", marker="mask-contour", render_backend=backend)
        chosen[backend] = method.predict(image, ["someone"], proposals).scores
    # Same prompts; the model inputs differ only by the bicubic resampling's rounding.
    assert torch.equal(chosen["torch"].argmax(1), chosen["pil"].argmax(1))
    assert torch.allclose(chosen["torch"], chosen["pil"], atol=2e-3)


def test_the_command_line_refuses_mask_prompts_of_box_proposals_before_loading() -> None:
    from refcocog_tools.engine.run import RunSpecError, check_masks

    args = build_parser().parse_args(["evaluate", "--method", "red-circle", "--variants", "blur",
                                      "--window", "mask", "--out", "unused.json"])
    options = red_circle_options(args)
    assert (options.window, options.marker, options.variants) == ("mask", "ellipse", ("blur",))
    with pytest.raises(RunSpecError, match="--window mask: --proposals gt gives no segmentation"):
        check_masks("red-circle", options, GroundTruthProposer(), "gt")
    check_masks("red-circle", options, GroundTruthProposer(masks=True), "gt")  # masks: fine
    boxes_only = build_parser().parse_args(["evaluate", "--method", "red-circle",
                                          "--out", "unused.json"])
    check_masks("red-circle", red_circle_options(boxes_only), GroundTruthProposer(), "gt")

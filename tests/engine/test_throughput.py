"""Throughput work that must not change results: fast rendering, the batched engine, bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
from refcocog_tools.methods.red_circle import RedCircle, RedCircleOptions
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts import visual_prompts as vp
from refcocog_tools.proposals.proposers import GroundTruthProposer

# Ten proposals with fractional, border-touching, degenerate and out-of-image coordinates.
BOXES = [
    (10.0, 8.0, 60.0, 50.0), (10.4, 7.6, 30.5, 29.49), (0.0, 0.0, 120.0, 90.0),
    (80.7, 60.2, 120.0, 90.0), (0.0, 20.0, 5.5, 89.9), (40.0, 40.0, 40.0, 40.0),
    (-5.5, -3.2, 10.7, 12.0), (100.2, 70.0, 130.3, 95.9), (33.3, 12.7, 77.7, 66.6),
    (55.5, 5.25, 56.75, 80.5),
]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and ImageChops.difference(a, b).getbbox() is None


@pytest.mark.parametrize("params", [
    {},
    {"window": "ellipse", "marker": "rectangle", "width": 2, "blur_radius": 4.5},
])
def test_render_variants_is_pixel_identical_for_many_proposals(params: dict) -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), "RGB")
    fast = vp.render_variants(image, torch.tensor(BOXES), vp.VARIANTS, **params)
    for box, row in zip(BOXES, fast, strict=True):
        for variant, rendered in zip(vp.VARIANTS, row, strict=True):
            assert _same(rendered, vp.render_variant(image, box, variant, **params)), (box, variant)
    # Every returned image is its own buffer: drawing on one leaves the others alone.
    before = fast[1][0].copy()
    fast[0][0].paste((0, 0, 0), (0, 0, 120, 90))
    assert _same(fast[1][0], before)


@pytest.fixture(scope="module")
def groups(mini_data):
    return group_by_image(RefCOCOg(mini_data, "test"), 14)


def _only_cache_hits(method) -> None:
    """Make ``method`` fail if ``predict`` draws an input the engine should have encoded."""
    _no_drawing(method.cache)


def _no_drawing(cache: EmbeddingCache) -> None:
    """Make a look-up in ``cache`` fail if it has to draw (and encode) an input itself."""
    looked_up = cache.images

    def no_drawing(*args, **kwargs):
        raise AssertionError("an input the engine should have encoded in a batch was drawn")

    cache.images = lambda backbone, keys, draw: looked_up(backbone, keys, no_drawing)


def _red_circle(backbones, pool) -> RedCircle:
    return RedCircle(backbones, pool, EmbeddingCache(),
                     RedCircleOptions(n_debias=30), debias_seed=2)


def _draw_as_on_a_gpu(monkeypatch) -> None:
    """Make the engine lay out its work as it does for models on a GPU (tensor-drawn inputs
    in the main process from the images the workers decode, Pillow-drawn ones in the
    workers), here on the CPU."""
    from refcocog_tools.engine import encoding
    monkeypatch.setattr(encoding.Encoding, "on_gpu", property(lambda self: True))


@pytest.mark.parametrize("options", [{"batch_size": 1}, {"batch_size": 64},
                                     {"batch_size": 3, "workers": 2},
                                     {"batch_size": 5, "workers": 1, "gpu_layout": True}])
def test_batched_engine_gives_the_unbatched_predictions(options, groups, mini_data, tiny_rn,
                                                        tiny_vit, monkeypatch) -> None:
    options = dict(options)
    if options.pop("gpu_layout", False):
        _draw_as_on_a_gpu(monkeypatch)
    pool = RefCOCOg(mini_data, "train").sentences()
    backbones = [tiny_rn, tiny_vit]
    reference = evaluate_groups(groups, _red_circle(backbones, pool), GroundTruthProposer())
    method = _red_circle(backbones, pool)

    _only_cache_hits(method)  # the engine's batches must leave predict only cache hits
    rows = evaluate_groups(groups, method, GroundTruthProposer(), **options)
    assert len(rows) == sum(len(g) for g in groups) and rows == reference


@pytest.mark.parametrize("gpu_layout", [False, True])
def test_crop_cosine_metric_encodes_every_crop_in_the_batches(gpu_layout, groups, mini_data,
                                                              tiny_rn, monkeypatch) -> None:
    """The metric's crops (ground truth, and predicted boxes no expression refers to) are
    encoded in the engine's batches, never one image at a time while the rows are written,
    and the rows, cosines included, are the plain loop's. In the GPU layout red-circle's
    prompts are drawn in the main process and the ground-truth crops in the worker."""
    pool = RefCOCOg(mini_data, "train").sentences()
    reference = evaluate_groups(groups, _red_circle([tiny_rn], pool), GroundTruthProposer(),
                                [tiny_rn])
    from refcocog_tools.methods import red_circle
    drawn_here = []  # red-circle prompts drawn in this process; the worker's calls stay there

    def counting(*args, **kwargs):
        if torch.utils.data.get_worker_info() is None:
            drawn_here.append(1)
        return prompt_inputs(*args, **kwargs)

    prompt_inputs = red_circle.prompt_inputs
    monkeypatch.setattr(red_circle, "prompt_inputs", counting)
    if gpu_layout:
        _draw_as_on_a_gpu(monkeypatch)
    method = _red_circle([tiny_rn], pool)
    _only_cache_hits(method)
    metric_cache = EmbeddingCache()
    _no_drawing(metric_cache)
    rows = evaluate_groups(groups, method, GroundTruthProposer(), [tiny_rn], batch_size=7,
                           workers=1, metric_cache=metric_cache)
    assert len(drawn_here) == (len(groups) if gpu_layout else 0)
    # Cosines agree to float rounding: a crop encoded in another batch sums in another order.
    assert len(rows) == len(reference)
    cosines = [(row.pop("cosine"), ref.pop("cosine"))
               for row, ref in zip(rows, reference, strict=True)]
    assert rows == reference
    assert all(c is not None and abs(c - r) < 1e-5 for c, r in cosines)
    assert any(row["box"] not in [r["gt_box"] for r in rows] for row in rows)  # some top-ups


def test_the_baselines_crops_serve_the_metric_without_a_second_encoding(groups, tiny_rn,
                                                                         monkeypatch) -> None:
    """The metric reads the method's cache: every crop is encoded once, in the batches."""
    from refcocog_tools.methods.registry import make_method
    from refcocog_tools.methods.scoring import box_key

    encoded = []
    queue_images = tiny_rn.queue_images

    def counting(images, *args, **kwargs):
        encoded.append(len(images))
        return queue_images(images, *args, **kwargs)

    monkeypatch.setattr(tiny_rn, "queue_images", counting)
    method = make_method("baseline", [tiny_rn])
    _only_cache_hits(method)
    rows = evaluate_groups(groups, method, GroundTruthProposer(), [tiny_rn], batch_size=16)
    assert all(row["cosine"] is not None for row in rows)
    crops = [{box_key(b) for b in GroundTruthProposer()(g[0], g[0].image).boxes} for g in groups]
    assert sum(encoded) == sum(len(c) for c in crops)


@pytest.mark.parametrize("options", [{}, {"batch_size": 8}])
def test_the_engine_hashes_each_image_once(options, groups, mini_data, tiny_rn,
                                           monkeypatch) -> None:
    """Requests, predictions and the metric's crops all name the image: one hash per image
    inside an evaluation, a fresh hash outside it (an image changed in place gets a new key)."""
    from refcocog_tools.models import prompt_cache
    hashed = []
    pixel_digest = prompt_cache._pixel_digest

    def counting(image):
        hashed.append(image.size)
        return pixel_digest(image)

    monkeypatch.setattr(prompt_cache, "_pixel_digest", counting)
    pool = RefCOCOg(mini_data, "train").sentences()
    evaluate_groups(groups, _red_circle([tiny_rn], pool), GroundTruthProposer(), [tiny_rn],
                    **options)
    assert len(hashed) == len(groups)
    image = groups[0][0].image
    before = prompt_cache.image_fingerprint(image)
    image.paste((255, 0, 0), (0, 0, 4, 4))
    assert prompt_cache.image_fingerprint(image) != before


def test_plain_engine_with_workers_for_other_methods(groups, tiny_rn) -> None:
    from refcocog_tools.methods.registry import make_method

    reference = evaluate_groups(groups, make_method("baseline", [tiny_rn]), GroundTruthProposer())
    rows = evaluate_groups(groups, make_method("baseline", [tiny_rn]), GroundTruthProposer(),
                           batch_size=8, workers=2)
    assert rows == reference


def test_bench_command_prints_every_stage(mini_data, isolated_cache, capsys) -> None:
    code = cli_main(["bench", "--data-root", str(mini_data), "--limit", "5", "--n-debias", "20",
                     "--batch-size", "4"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["stages"]) == {"decode", "proposals", "render", "encode", "score"}
    for stage in report["stages"].values():
        assert {"seconds", "images_per_s", "expressions_per_s"} <= set(stage)
    assert report["expressions"] == 5
    assert report["end_to_end"]["expressions_per_s"] is not None
    assert report["end_to_end_unbatched"]["same_predictions"] is True
    backends = report["render_backends"]
    assert backends["same_choices"] is True and backends["torch_speedup"] > 0
    assert {"torch", "pil"} <= set(backends)
    assert report["encoder_ceiling"]["visual_prompts_per_s"] > 0
    assert report["pipeline"]["visual_prompts"] == report["stages"]["render"]["visual_prompts"]
    assert 0 < report["pipeline"]["share_of_ceiling"]
    assert report["study_pattern"]["same_choices"] is True
    assert report["memory"]["rss_peak_mib"] > 0


def test_synthetic_workload_encodes_every_visual_prompt() -> None:
    """The GPU-sizing workload, on a small architecture so it runs here in a second."""
    import torch

    from refcocog_tools.engine.bench import RN50X16_CONFIG, synthetic_workload
    from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS

    state = torch.random.get_rng_state()
    out = synthetic_workload("3,4", [], "cpu", batch_size=5, seed=0,
                             architecture=TINY_CLIP_CONFIGS["tiny-rn"], architecture_name="tiny")
    assert out["visual_prompts"] == 3 * 4 * 2 and out["random_weights"] is True
    assert out["resolution"] == TINY_CLIP_CONFIGS["tiny-rn"]["image_resolution"]
    assert out["encoder_ceiling"]["visual_prompts_per_s"] > 0 and out["share_of_ceiling"] > 0
    assert torch.equal(state, torch.random.get_rng_state())
    assert set(RN50X16_CONFIG) == set(TINY_CLIP_CONFIGS["tiny-rn"])  # a complete CLIP config


def test_compile_wraps_the_image_tower_lazily_and_refuses_unknown_modes() -> None:
    """``--compile``: the tower is wrapped (compiled at its first call, not here) and still
    answers what the engine reads of it; a misspelt mode is refused before any work."""
    import clip.model

    from refcocog_tools.engine.bench import compile_image_encoder
    from refcocog_tools.models.backbones import ClipBackbone
    from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS
    from refcocog_tools.prompts.render import pil_preprocess

    model = clip.model.CLIP(**TINY_CLIP_CONFIGS["tiny-rn"]).eval()
    tower = model.visual
    backbone = ClipBackbone(name="tiny", model=model, preprocess=pil_preprocess(64),
                            device=torch.device("cpu"), checksum="x", checkpoint=Path("."),
                            untrained=True)
    with pytest.raises(ValueError, match="compile mode"):
        compile_image_encoder(backbone, "fastest")
    assert backbone.model.visual is tower
    compile_image_encoder(backbone, "default")
    assert backbone.model.visual is not tower
    assert backbone.input_resolution == tower.input_resolution
    assert backbone.model.visual.conv1.weight.dtype == torch.float32  # CPU stays float32


class _FakeDetector:
    """A proposer that is not "gt", so the engine runs it in the main process as it would a
    YOLO model; its boxes are the instances' boxes, shifted, with one extra box."""

    name = "fake-detector"
    untrained = True
    checksum = None

    def __init__(self) -> None:
        self.batches: list[int] = []

    def propose_many(self, items, images=None):
        from refcocog_tools.proposals.structures import Proposals

        assert images is not None and len(images) == len(items)  # decoded once, passed in
        self.batches.append(len(items))
        out = []
        for item, image in zip(items, images, strict=True):
            boxes = [[x1 + 1, y1 + 1, x2, y2] for x1, y1, x2, y2 in
                     (inst.box for inst in item.instances)] + [[0, 0, image.width / 2,
                                                                image.height / 2]]
            out.append(Proposals(torch.tensor(boxes, dtype=torch.float32),
                                 [None] * len(boxes)))
        return out

    def __call__(self, item, image=None):
        return self.propose_many([item], [item.image if image is None else image])[0]

    def config(self):
        return {"proposer": self.name}


@pytest.mark.parametrize("options", [{"batch_size": 64}, {"batch_size": 16, "workers": 2},
                                     {"batch_size": 16, "gpu_layout": True}])
def test_batched_engine_with_a_detector_in_the_main_process(options, groups, mini_data,
                                                            tiny_rn, monkeypatch) -> None:
    options = dict(options)
    if options.pop("gpu_layout", False):
        _draw_as_on_a_gpu(monkeypatch)
    pool = RefCOCOg(mini_data, "train").sentences()
    reference = evaluate_groups(groups, _red_circle([tiny_rn], pool), _FakeDetector())
    method = _red_circle([tiny_rn], pool)

    _only_cache_hits(method)  # the engine's batches must leave predict only cache hits
    detector = _FakeDetector()
    rows = evaluate_groups(groups, method, detector, **options)
    assert rows == reference
    assert max(detector.batches) > 1  # images reach the detector in batches

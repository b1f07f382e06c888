"""Every grounding method on the embedded dataset with the embedded (untrained) backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.engine.evaluate import evaluate, group_by_image
from refcocog_tools.methods.gradcam import GradCam, box_from_map
from refcocog_tools.methods.red_circle import (
    RedCircle,
    RedCircleOptions,
    debias_explicit,
    debias_fast,
    sample_debias_sentences,
)
from refcocog_tools.methods.registry import make_method
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts.visual_prompts import render_variant
from refcocog_tools.proposals.proposers import GroundTruthProposer, Proposals

CLIP_METHODS = ("baseline", "color-background", "color-overlay", "red-circle", "gradcam")


@pytest.fixture(scope="module")
def pool(mini_data) -> list[str]:
    return RefCOCOg(mini_data, "train").sentences()


@pytest.mark.parametrize("name", CLIP_METHODS + ("random", "largest", "center"))
def test_each_method_end_to_end(name, test_split, tiny_rn, pool) -> None:
    method = make_method(name, [tiny_rn], debias_pool=pool, n_debias=50) if name == "red-circle" \
        else make_method(name, [tiny_rn])
    results = evaluate(test_split, method, GroundTruthProposer(), [tiny_rn], limit=8)
    rows = results["predictions"]
    assert len(rows) == 8 == results["metrics"]["n"]
    for row in rows:
        x1, y1, x2, y2 = row["box"]
        assert x2 > x1 and y2 > y1
        assert 0.0 <= row["iou"] <= 1.0 and -1.0 <= row["cosine"] <= 1.0 + 1e-5
        assert row["chosen"] < row["n_proposals"]
        if name != "gradcam":  # proposal methods return one of the proposals' boxes
            item = next(i for i in test_split if i.sent_id == row["sent_id"])
            boxes = [list(inst.box) for inst in item.instances]
            assert [round(v, 3) for v in boxes[row["chosen"]]] == row["box"]
    assert results["provenance"]["untrained"] and results["provenance"]["synthetic_data"]
    assert results["config"]["method"]["method"] == name


def test_ensemble_of_two_backbones_averages_similarities(test_split, tiny_rn, tiny_vit) -> None:
    item = test_split[0]
    proposals = GroundTruthProposer()(item)
    both = make_method("baseline", [tiny_rn, tiny_vit]).predict(item.image, [item.sentence],
                                                                proposals)
    singles = [make_method("baseline", [b]).predict(item.image, [item.sentence], proposals)
               for b in (tiny_rn, tiny_vit)]
    torch.testing.assert_close(both.scores, (singles[0].scores + singles[1].scores) / 2)


def test_debias_fast_equals_the_explicit_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(3 + 40, 12, generator=gen)
    fast = debias_fast(full[:3], full[3:].mean(dim=0), 40)
    torch.testing.assert_close(fast, debias_explicit(full, 3))


def test_red_circle_debias_matches_the_study_form(test_split, tiny_rn, tiny_vit, pool) -> None:
    """The method's scores equal the (E + N) x V matrix computation, per backbone, averaged."""
    item = test_split[0]
    proposals = GroundTruthProposer()(item)
    method = RedCircle([tiny_rn, tiny_vit], pool, None,
                       RedCircleOptions(n_debias=30, render_backend="pil"), debias_seed=4)
    expressions = [i.sentence for i in test_split if i.image_id == item.image_id]
    scores, keep = method.scores(item.image, expressions, proposals)
    prompts = ["This is " + e for e in expressions] + method.debias_sentences
    visual_prompts = method.render(item.image, proposals.boxes)
    per_backbone = []
    for backbone in (tiny_rn, tiny_vit):
        full = backbone.encode_texts(prompts) @ backbone.encode_images(visual_prompts).T
        per_backbone.append(debias_explicit(full, len(expressions)))
    explicit = torch.stack(per_backbone).mean(0).reshape(len(expressions), len(proposals), 2)
    torch.testing.assert_close(scores, explicit.max(dim=-1).values, atol=1e-5, rtol=1e-4)
    assert keep.tolist() == list(range(len(proposals)))


def test_debias_sampling_is_seeded() -> None:
    pool = [f"sentence {i}" for i in range(100)]
    assert sample_debias_sentences(pool, 10, 1) == sample_debias_sentences(pool, 10, 1)
    assert sample_debias_sentences(pool, 10, 1) != sample_debias_sentences(pool, 10, 2)
    assert len(sample_debias_sentences(pool[:5], 20, 0)) == 20


def test_red_circle_rendering_pixels() -> None:
    """Inside the rectangle unchanged, outside blurred, the ellipse red."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    box = (20, 10, 60, 50)
    out = np.asarray(render_variant(image, box, "blur", blur_radius=5, width=3))
    src = np.asarray(image)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(5)))
    # A pixel inside the box, away from the ellipse stroke (the box centre), is unchanged.
    assert (out[30, 40] == src[30, 40]).all()
    # Outside the box: the blurred image, not the original.
    assert (out[55, 5] == blurred[55, 5]).all() and not (out[55, 5] == src[55, 5]).all()
    # The top of the ellipse (middle of the box's top edge) is pure red.
    assert tuple(out[11, 40]) == (255, 0, 0)


def test_long_expression_is_truncated_not_a_crash(test_split, tiny_rn) -> None:
    item = test_split[0]
    long = "the small red dog next to the big blue car on the left " * 20
    prediction = make_method("baseline", [tiny_rn]).predict(
        item.image, [long, item.sentence], GroundTruthProposer()(item))
    assert prediction.boxes.shape == (2, 4)


def test_no_proposals_falls_back_to_the_whole_image(test_split, tiny_rn, pool) -> None:
    item = test_split[0]
    record = item.record.__class__(**{**item.record.__dict__, "instances": ()})
    empty_item = item.__class__(record, item.sentences, item.sent_ids)
    proposals = GroundTruthProposer()(empty_item)
    width, height = item.image_size
    assert proposals.boxes.tolist() == [[0.0, 0.0, float(width), float(height)]]
    for name in ("baseline", "red-circle"):
        method = make_method(name, [tiny_rn], debias_pool=pool, n_debias=5) \
            if name == "red-circle" else make_method(name, [tiny_rn])
        prediction = method.predict(item.image, [item.sentence], proposals)
        assert prediction.boxes.tolist() == [[0.0, 0.0, float(width), float(height)]]


def test_area_filter_never_picks_a_near_whole_image_box(test_split, tiny_rn) -> None:
    item = test_split[0]
    w, h = item.image_size
    boxes = torch.tensor([[0, 0, w, h], list(item.box)], dtype=torch.float32)
    proposals = Proposals(boxes=boxes, labels=[None, None])
    method = RedCircle([tiny_rn], (), None, RedCircleOptions(area_filter=0.8, n_debias=0))
    prediction = method.predict(item.image, [item.sentence, "anything"], proposals)
    assert prediction.chosen.tolist() == [1, 1]
    assert torch.isinf(prediction.scores[:, 0]).all()


def test_class_prior_reweights_by_label(test_split, tiny_rn) -> None:
    item = test_split[0]
    proposals = GroundTruthProposer()(item)
    unweighted = RedCircle([tiny_rn], (), None, RedCircleOptions(n_debias=0))
    plain = unweighted.scores(item.image, [item.sentence], proposals)[0]
    prior = RedCircle([tiny_rn], (), None, RedCircleOptions(n_debias=0, class_prior=True))
    weighted = prior.scores(item.image, [item.sentence], proposals)[0]
    text = tiny_rn.encode_texts(["This is " + item.sentence])
    labels = tiny_rn.encode_texts([f"A photo of a {lab}" for lab in proposals.labels])
    torch.testing.assert_close(weighted, plain * (text @ labels.T), atol=1e-5, rtol=1e-4)


def test_gradcam_box_from_map() -> None:
    heat = torch.zeros(10, 20)
    heat[2:5, 3:9] = 1.0
    heat[7, 15] = 0.4  # below half the peak: ignored
    assert box_from_map(heat, 0.5).tolist() == [3.0, 2.0, 9.0, 5.0]
    assert box_from_map(torch.zeros(4, 6)).tolist() == [0.0, 0.0, 6.0, 4.0]


def test_gradcam_maps_cover_the_image(test_split, tiny_rn, tiny_vit) -> None:
    item = test_split[0]
    heat = GradCam([tiny_rn, tiny_vit]).heatmaps(item.image, [item.sentence])
    assert heat.shape == (1, item.image.height, item.image.width)
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6


def test_gradcam_target_layer_is_checked_up_front_and_changes_the_map(test_split,
                                                                      tiny_rn) -> None:
    with pytest.raises(ValueError, match="layer9"):
        make_method("gradcam", [tiny_rn], target_layer="layer9")
    item = test_split[0]
    earlier = make_method("gradcam", [tiny_rn], target_layer="layer3")
    assert earlier.config()["target_layer"] == "layer3"
    last = GradCam([tiny_rn]).heatmaps(item.image, [item.sentence])
    assert not torch.allclose(earlier.heatmaps(item.image, [item.sentence]), last)


def test_cached_second_run_is_identical_and_encodes_nothing(tmp_path, test_split, tiny_rn,
                                                            pool) -> None:
    def run() -> tuple[dict, EmbeddingCache]:
        cache = EmbeddingCache(tmp_path / "emb")
        method = make_method("red-circle", [tiny_rn], cache=cache, debias_pool=pool, n_debias=20)
        results = evaluate(test_split, method, GroundTruthProposer(), [tiny_rn], limit=6)
        cache.save()
        return results, cache

    first, cache1 = run()
    second, cache2 = run()
    assert cache1.misses > 0 and cache2.misses == 0
    assert first["predictions"] == second["predictions"]
    assert first["metrics"] == second["metrics"]


def test_corrupt_cache_is_recomputed_not_trusted(tmp_path, test_split, tiny_rn) -> None:
    cache = EmbeddingCache(tmp_path / "emb")
    method = make_method("baseline", [tiny_rn], cache=cache)
    reference = evaluate(test_split, method, GroundTruthProposer(), [tiny_rn], limit=4)
    cache.save()
    files = sorted((tmp_path / "emb").rglob("*.pt"))
    assert {f.name for f in files} == {"image.pt", "text.pt"}
    for f in files:  # truncate every cache file
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
    cache = EmbeddingCache(tmp_path / "emb")
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        again = evaluate(test_split, make_method("baseline", [tiny_rn], cache=cache),
                         GroundTruthProposer(), [tiny_rn], limit=4)
    assert cache.misses > 0
    assert again["predictions"] == reference["predictions"]


def test_cache_refuses_entries_that_are_not_unit_vectors(tmp_path, tiny_rn) -> None:
    cache = EmbeddingCache(tmp_path / "emb")
    good = cache.texts(tiny_rn, ["a dog"])
    cache._store[(tiny_rn.checksum, "text")]["a cat"] = torch.full((good.shape[1],), 3.0)
    cache._dirty.add((tiny_rn.checksum, "text"))
    cache.save()
    reloaded = EmbeddingCache(tmp_path / "emb")
    reloaded.texts(tiny_rn, ["a dog", "a cat"])
    assert reloaded.misses == 1  # "a cat" was recomputed, "a dog" reused
    torch.testing.assert_close(reloaded.texts(tiny_rn, ["a cat"]),
                               tiny_rn.encode_texts(["a cat"]))


def test_group_by_image_limits_expressions(test_split) -> None:
    groups = group_by_image(test_split, limit=5)
    assert sum(len(g) for g in groups) == 5
    assert all(len({i.image_id for i in g}) == 1 for g in groups)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_each_image_is_decoded_once_and_not_kept(test_split, tiny_rn, monkeypatch,
                                                 batch_size) -> None:
    import refcocog_tools.data.dataset as dataset_module

    decoded = []
    original = dataset_module.load_rgb_image

    def counting(path):
        decoded.append(path)
        return original(path)

    monkeypatch.setattr(dataset_module, "load_rgb_image", counting)
    groups = group_by_image(test_split, limit=10)
    method = make_method("red-circle", [tiny_rn], n_debias=0)
    from refcocog_tools.engine.evaluate import evaluate_groups

    rows = evaluate_groups(groups, method, GroundTruthProposer(), [tiny_rn],
                           batch_size=batch_size)
    assert len(rows) == 10
    assert len(decoded) == len(set(decoded)) == len(groups)
    assert all("image" not in vars(item) for group in groups for item in group)


def test_cache_shards_write_only_their_own_entries(tmp_path, tiny_rn) -> None:
    first = EmbeddingCache(tmp_path / "emb")
    first.texts(tiny_rn, ["a dog", "a cat"])
    first.save()
    second = EmbeddingCache(tmp_path / "emb", shard="rank1")
    second.texts(tiny_rn, ["a cat", "a bus"])  # "a cat" comes from the other shard's file
    assert second.misses == 1
    second.save()
    folder = next((tmp_path / "emb").iterdir())
    shard_keys = torch.load(folder / "text.rank1.pt", weights_only=True)["keys"]
    assert shard_keys == ["a bus"]
    merged = EmbeddingCache(tmp_path / "emb")
    merged.texts(tiny_rn, ["a dog", "a cat", "a bus"])
    assert merged.misses == 0


def test_both_spellings_of_colour_name_the_same_method() -> None:
    from refcocog_tools.cli.evaluate import add_common_arguments
    from refcocog_tools.methods.registry import canonical_method

    assert canonical_method("colour-overlay") == "color-overlay"
    assert canonical_method("colour-background") == "color-background"
    assert canonical_method("baseline") == "baseline"
    import argparse

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    assert parser.parse_args(["--method", "colour-overlay"]).method == "color-overlay"

"""Intervals by bootstrap over images, paired comparisons and McNemar's test (uncertainty)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from refcocog_tools.engine import results, uncertainty
from refcocog_tools.engine.uncertainty import Interval


def _rows(ious: list[float], images: list[int]) -> list[dict]:
    return [{"ref_id": k, "sent_id": k, "image_id": image, "iou": iou,
             "sentence": "the cat", "category": "cat"}
            for k, (iou, image) in enumerate(zip(ious, images, strict=True))]


def _random_rows(n_images: int, per_image: int, seed: int, shift: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ious = np.clip(rng.uniform(0, 1, n_images * per_image) + shift, 0, 1)
    return _rows([float(v) for v in ious], [k // per_image for k in range(len(ious))])


def test_the_intervals_hold_the_point_estimate_and_are_not_degenerate() -> None:
    rows = _random_rows(n_images=12, per_image=4, seed=1)
    found = uncertainty.intervals(rows)
    ious = np.array([r["iou"] for r in rows])
    assert found["accuracy"].estimate == pytest.approx(float((ious >= 0.5).mean()))
    assert found["miou"].estimate == pytest.approx(float(ious.mean()))
    for interval in found.values():
        assert interval.low < interval.estimate < interval.high
        assert 0.0 <= interval.low and interval.high <= 1.0


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rows = _random_rows(n_images=10, per_image=3, seed=2)
    assert uncertainty.intervals(rows, seed=7) == uncertainty.intervals(rows, seed=7)
    assert uncertainty.intervals(rows, seed=7) != uncertainty.intervals(rows, seed=8)


def _expression_level_width(rows: list[dict], seed: int = 0) -> float:
    """The accuracy interval's width when every expression is its own image."""
    alone = [{**r, "image_id": k} for k, r in enumerate(rows)]
    found = uncertainty.intervals(alone, seed=seed)["accuracy"]
    return found.high - found.low


def test_resampling_is_by_image() -> None:
    """An image's expressions all right or all wrong together: the image is one draw, not
    five, and the interval is wider than an expression-level bootstrap's."""
    correct = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    rows = _rows([0.9 if c else 0.1 for c in correct for _ in range(5)],
                 [image for image in range(10) for _ in range(5)])
    found = uncertainty.intervals(rows)["accuracy"]
    by_image = found.high - found.low
    assert by_image > 1.5 * _expression_level_width(rows)


def test_a_large_difference_beats_and_identical_methods_do_not_differ() -> None:
    weak = _random_rows(n_images=15, per_image=3, seed=3)
    strong = [{**r, "iou": min(1.0, r["iou"] + 0.6)} for r in weak]
    forward = uncertainty.compare(strong, weak)
    assert uncertainty.verdict(forward.accuracy) == uncertainty.BEATS
    assert uncertainty.verdict(forward.miou) == uncertainty.BEATS
    assert forward.b_only == 0 and forward.a_only > 0
    backward = uncertainty.compare(weak, strong)
    assert uncertainty.verdict(backward.accuracy) == uncertainty.DOES_NOT_BEAT
    same = uncertainty.compare(weak, [dict(r) for r in reversed(weak)])  # order does not matter
    assert same.accuracy == Interval(0.0, 0.0, 0.0) and same.mcnemar_p == 1.0
    assert uncertainty.verdict(same.miou) == uncertainty.NO_DETECTABLE_DIFFERENCE
    sentence = uncertainty.comparison_sentence("strong", "weak", forward)
    assert sentence.startswith("strong beats weak on accuracy@0.5: +")
    assert "no difference this data can detect" in uncertainty.comparison_sentence(
        "a", "b", same)


def test_mcnemar_p_is_the_exact_two_sided_binomial() -> None:
    """b = 5 expressions only A gets right, c = 1 only B: p = 2 * P(X <= 1), X ~ Bin(6, 1/2)."""
    a = _rows([0.9] * 5 + [0.1] + [0.9] * 3 + [0.1] * 2, list(range(11)))
    b = _rows([0.1] * 5 + [0.9] + [0.9] * 3 + [0.1] * 2, list(range(11)))
    comparison = uncertainty.compare(a, b)
    assert (comparison.a_only, comparison.b_only) == (5, 1)
    hand = 2 * (1 + 6) / 2 ** 6
    assert comparison.mcnemar_p == pytest.approx(hand)
    assert comparison.mcnemar_p == pytest.approx(2 * binom.cdf(1, 6, 0.5))


def test_compare_refuses_different_expressions() -> None:
    rows = _random_rows(n_images=3, per_image=2, seed=4)
    with pytest.raises(ValueError, match="not the same expressions"):
        uncertainty.compare(rows, rows[:-1])


def test_rows_without_an_image_are_refused_and_no_rows_have_no_interval() -> None:
    with pytest.raises(ValueError, match="image_id"):
        uncertainty.intervals([{"iou": 0.5}])
    assert uncertainty.intervals([]) is None
    assert uncertainty.format_interval(None) == "n/a"


def test_one_image_has_a_degenerate_interval() -> None:
    found = uncertainty.intervals(_rows([0.9, 0.2], [0, 0]))
    assert found["accuracy"] == Interval(0.5, 0.5, 0.5)


def test_the_table_cell_format() -> None:
    assert uncertainty.format_interval(Interval(0.6977, 0.5512, 0.8304)) == "0.698 [0.55, 0.83]"
    assert (uncertainty.format_interval({"estimate": 0.12, "low": -0.021, "high": 0.26},
                                        signed=True) == "+0.120 [-0.02, +0.26]")


def test_the_results_document_carries_intervals_and_old_documents_still_read(
        tmp_path: Path) -> None:
    rows = _random_rows(n_images=8, per_image=5, seed=5)
    document = results.results_document(rows, config={"limit": 0}, provenance={})
    assert document["schema"] == results.SCHEMA == "refcocog-tools/results/2"
    stored = document["metrics"]["intervals"]
    assert "low" not in stored  # one entry per metric, no flat bounds
    for name in ("accuracy", "miou"):
        assert stored[name]["low"] <= document["metrics"][name] <= stored[name]["high"]
    assert stored["resamples"] == uncertainty.RESAMPLES and stored["confidence"] == 0.95
    path = results.write_results(document, tmp_path, "m")
    from_file = uncertainty.document_intervals(results.read_results(path))
    assert from_file["accuracy"].low == stored["accuracy"]["low"]

    old = json.loads(path.read_text())
    old["schema"] = "refcocog-tools/results/1"
    del old["metrics"]["intervals"]
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    recomputed = uncertainty.document_intervals(results.read_results(old_path))
    assert recomputed["miou"] == uncertainty.intervals(rows)["miou"]
    old["schema"] = "refcocog-tools/results/0"
    old_path.write_text(json.dumps(old))
    with pytest.raises(results.ResultsError, match="field 'schema'"):
        results.read_results(old_path)


def test_nan_iou_counts_as_wrong_and_is_left_out_of_the_mean() -> None:
    found = uncertainty.intervals(_rows([0.8, math.nan, 0.6, 0.2], [0, 0, 1, 1]))
    assert found["accuracy"].estimate == pytest.approx(0.5)
    assert found["miou"].estimate == pytest.approx((0.8 + 0.6 + 0.2) / 3)

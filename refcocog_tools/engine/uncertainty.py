"""How sure a results document's numbers are: intervals by bootstrap over images, paired
comparisons of two methods, McNemar's exact test, and the one wording of a verdict.

The expressions of one image are not independent draws: they share the picture, its
proposals and often the referred object, so a method tends to be right or wrong about all of
them together. The unit resampled is therefore the image (a cluster bootstrap): each resample
draws images with replacement and keeps every expression of a drawn image. Intervals are
percentile intervals of ``scipy.stats.bootstrap`` over image indices, seeded with
``numpy.random.default_rng(seed)``, so the same rows always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refcocog_tools.engine.metrics import ACCURACY_THRESHOLD

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# The one wording of a comparison's verdict, from its difference interval.
BEATS = "beats"
DOES_NOT_BEAT = "does not beat"
NO_DETECTABLE_DIFFERENCE = "no difference this data can detect"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Comparison:
    """Method A against method B on the same expressions: differences A - B with paired
    image-bootstrap intervals, and McNemar's exact test on correctness. ``a_only``: expressions
    A gets right and B wrong (McNemar's b); ``b_only``: the other way round (c)."""

    accuracy: Interval
    miou: Interval
    a_only: int
    b_only: int
    mcnemar_p: float
    n: int
    images: int


@dataclass(frozen=True)
class _PerImage:
    """Each image's count of expressions, of correct ones, and its IoU sum (finite IoUs)."""

    n: np.ndarray
    correct: np.ndarray
    iou_sum: np.ndarray
    iou_n: np.ndarray


def _per_image(rows: Sequence[Mapping[str, Any]], images: np.ndarray, n_images: int,
               threshold: float) -> _PerImage:
    ious = np.array([float(r["iou"]) if r.get("iou") is not None else math.nan for r in rows],
                    dtype=np.float64)
    finite = np.isfinite(ious)
    # NaN >= threshold is False: an expression without an IoU counts as wrong, as accuracy_at.
    correct = (ious >= threshold).astype(np.float64)
    return _PerImage(np.bincount(images, minlength=n_images).astype(np.float64),
                     np.bincount(images, weights=correct, minlength=n_images),
                     np.bincount(images, weights=np.where(finite, ious, 0.0), minlength=n_images),
                     np.bincount(images, weights=finite.astype(np.float64), minlength=n_images))


def _image_codes(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, int]:
    """Each row's image as an index 0..n_images-1 (rows without ``image_id`` are refused)."""
    try:
        ids = [str(r["image_id"]) for r in rows]
    except KeyError:
        raise ValueError("uncertainty: every row needs an image_id (the bootstrap resamples "
                         "images)") from None
    uniques, codes = np.unique(np.array(ids), return_inverse=True)
    return codes.astype(np.intp), len(uniques)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The pooled ratio over the images of ``sample`` (indices, last axis), per resample
    (scipy's resamples come as rows, its ``axis`` is always the last)."""
    sample = sample.astype(np.intp)
    total = denominator[sample].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator[sample].sum(axis=-1) / total


def _bootstrap(statistic: Any, n_images: int, estimate: float, resamples: int,
               confidence: float, seed: int) -> Interval:
    from scipy.stats import bootstrap

    if n_images < 2 or not math.isfinite(estimate):
        return Interval(estimate, estimate, estimate)  # nothing to resample
    result = bootstrap((np.arange(n_images),), statistic, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", vectorized=True,
                       rng=np.random.default_rng(seed))
    low, high = (float(v) for v in (result.confidence_interval.low,
                                     result.confidence_interval.high))
    # A constant statistic (identical methods) has a degenerate interval: its single value.
    if not (math.isfinite(low) and math.isfinite(high)):
        low = high = estimate
    return Interval(estimate, low, high)


def intervals(rows: Sequence[Mapping[str, Any]], *, threshold: float = ACCURACY_THRESHOLD,
              resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
              seed: int = SEED) -> dict[str, Interval] | None:
    """Accuracy at ``threshold`` and mean IoU of ``rows`` (one per expression, with ``iou``
    and ``image_id``) with their image-bootstrap intervals; None for no rows."""
    if not rows:
        return None
    images, n_images = _image_codes(rows)
    per = _per_image(rows, images, n_images, threshold)
    out = {}
    for name, numerator, denominator in (("accuracy", per.correct, per.n),
                                         ("miou", per.iou_sum, per.iou_n)):
        estimate = float(_ratio(numerator, denominator, np.arange(n_images)))
        def statistic(s: np.ndarray, axis: int = -1, num: np.ndarray = numerator,
                      den: np.ndarray = denominator) -> np.ndarray:
            return _ratio(num, den, s)

        out[name] = _bootstrap(statistic, n_images, estimate, resamples, confidence, seed)
    return out


def summary(rows: Sequence[Mapping[str, Any]], *, threshold: float = ACCURACY_THRESHOLD,
            resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
            seed: int = SEED) -> dict[str, Any] | None:
    """``intervals`` as the JSON a results document's summary carries, with how they were
    made (``metrics["intervals"]``)."""
    found = intervals(rows, threshold=threshold, resamples=resamples, confidence=confidence,
                      seed=seed)
    if found is None:
        return None
    return {"method": "percentile bootstrap over images", "confidence": confidence,
            "resamples": resamples, "seed": seed,
            **{name: {"low": i.low, "high": i.high} for name, i in found.items()}}


def _expression_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return (str(row.get("ref_id")), str(row.get("sent_id")))


def compare(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], *,
            threshold: float = ACCURACY_THRESHOLD, resamples: int = RESAMPLES,
            confidence: float = CONFIDENCE, seed: int = SEED) -> Comparison:
    """Method A's rows against method B's on the same expressions (matched by ref and
    sentence id): paired image-bootstrap intervals of the differences A - B and McNemar's exact
    test. ValueError when the two sets of expressions differ."""
    from scipy.stats import binomtest

    by_key = {_expression_key(r): r for r in rows_b}
    keys_a = [_expression_key(r) for r in rows_a]
    if len(by_key) != len(rows_b) or set(keys_a) != set(by_key) or len(set(keys_a)) != len(keys_a):
        raise ValueError(f"compare: the two methods' rows are not the same expressions "
                         f"({len(rows_a)} and {len(rows_b)} rows, "
                         f"{len(set(keys_a) ^ set(by_key))} not in both)")
    if not rows_a:
        raise ValueError("compare: no expressions to compare")
    paired_b = [by_key[k] for k in keys_a]
    images, n_images = _image_codes(rows_a)
    a = _per_image(rows_a, images, n_images, threshold)
    b = _per_image(paired_b, images, n_images, threshold)
    everything = np.arange(n_images)
    differences = {}
    for name, (num_a, den_a), (num_b, den_b) in (
            ("accuracy", (a.correct, a.n), (b.correct, b.n)),
            ("miou", (a.iou_sum, a.iou_n), (b.iou_sum, b.iou_n))):
        def difference(s: np.ndarray, axis: int = -1, num_a=num_a, den_a=den_a,
                       num_b=num_b, den_b=den_b) -> np.ndarray:
            return _ratio(num_a, den_a, s) - _ratio(num_b, den_b, s)

        differences[name] = _bootstrap(difference, n_images, float(difference(everything)),
                                       resamples, confidence, seed)
    right_a = np.array([float(r["iou"]) >= threshold for r in rows_a])
    right_b = np.array([float(r["iou"]) >= threshold for r in paired_b])
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = a_only + b_only
    p = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return Comparison(differences["accuracy"], differences["miou"], a_only, b_only, float(p),
                      len(rows_a), n_images)


def verdict(difference: Interval) -> str:
    """The verdict on A - B: "beats" (interval above 0), "does not beat" (below 0), or "no
    difference this data can detect" (the interval holds 0)."""
    if difference.low > 0:
        return BEATS
    if difference.high < 0:
        return DOES_NOT_BEAT
    return NO_DETECTABLE_DIFFERENCE


def comparison_sentence(name_a: str, name_b: str, comparison: Comparison,
                        metric: str = "accuracy") -> str:
    """One sentence on a comparison, e.g. "red-circle beats baseline on accuracy@0.5: +0.12
    [+0.05, +0.20], McNemar p = 0.003 (n = 43 expressions, 8 images)"."""
    difference = getattr(comparison, metric)
    label = {"accuracy": "accuracy@0.5", "miou": "mean IoU"}[metric]
    word = verdict(difference)
    subject = (f"{name_a} and {name_b}: {word}" if word == NO_DETECTABLE_DIFFERENCE
               else f"{name_a} {word} {name_b}")
    return (f"{subject} on {label}: {format_interval(difference, signed=True)}, McNemar "
            f"p = {comparison.mcnemar_p:.3g} (n = {comparison.n} expressions, "
            f"{comparison.images} images)")


def format_interval(interval: Interval | Mapping[str, Any] | None, digits: int = 3,
                    signed: bool = False) -> str:
    """A table cell: ``0.698 [0.55, 0.83]`` (the estimate to ``digits`` decimals, the bounds
    to one fewer); ``signed`` for differences (``+0.12 [-0.02, +0.26]``); "n/a" for None."""
    if interval is None:
        return "n/a"
    if isinstance(interval, Mapping):
        interval = Interval(interval["estimate"], interval["low"], interval["high"])
    sign = "+" if signed else ""
    bounds = max(digits - 1, 0)
    return (f"{interval.estimate:{sign}.{digits}f} "
            f"[{interval.low:{sign}.{bounds}f}, {interval.high:{sign}.{bounds}f}]")


def document_intervals(document: Mapping[str, Any], **options: Any) -> dict[str, Interval] | None:
    """A results document's intervals: those its summary carries (schema 2), else computed
    from its predictions (a schema-1 document written before intervals existed)."""
    metrics = document.get("metrics") or {}
    stored = metrics.get("intervals")
    if isinstance(stored, Mapping) and not options:
        return {name: Interval(float(metrics[name]), float(stored[name]["low"]),
                               float(stored[name]["high"]))
                for name in ("accuracy", "miou")
                if isinstance(stored.get(name), Mapping) and metrics.get(name) is not None}
    return intervals(document.get("predictions") or [], **options)

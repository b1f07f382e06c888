"""The original study's numbers, exactly as it reported them, in one place.

Source: Garosi, Minardi, Suardi, "Visual grounding with CLIP on RefCOCOg", University of Trento,
Machine Learning - Deep Learning module, A.Y. 2022-23 (a Jupyter notebook). Nothing here was
recomputed by this project: these values are quoted, with the section they come from, so that
the report never retypes them and never confuses them with numbers computed here (which come from
untrained tiny models on a synthetic dataset).

The study's training loops print "accuracy" for what is the mean IoU over the samples
(cumulative IoU divided by the sample count), so those rows are recorded as ``miou``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

STUDY = "Garosi, Minardi, Suardi (University of Trento, 2022-23)"


@dataclass(frozen=True)
class ReportedRow:
    """One number the study reported."""

    key: str  # short handle: baseline, bottleneck, large_regressor, colour_background, final
    method: str
    backbone: str
    proposals: str
    split: str
    metric: str  # "miou", "accuracy" (IoU >= 0.5) or "cosine"
    value: float
    source: str  # the section of the study's notebook it was read from


# Where the study did not state a field, the row says "not stated" instead of guessing.
_BASELINE = ("baseline", "baseline crop matching", "RN50x16", "YOLO")
_BOTTLENECK = ("bottleneck", "bottleneck regressor (MSE loss, 30 epochs)", "ViT-B/32", "none")
_LARGE = ("large_regressor", "large regressor (MSE + IoU loss, stopped after 1 epoch)",
          "not stated", "none")
_COLOUR = ("colour_background", "colour-coded background", "not stated", "YOLO")
_FINAL = ("final", "red ellipse + blur, debias 5000 (final proposal)", "RN50x16", "YOLOv8s")
_SRC_BASELINE = "Baseline > Results (table)"
_SRC_BOTTLENECK = "1. Adding a bottleneck on top of CLIP > Results (table)"
_SRC_LARGE = "2. Adding a Fully-Connected Neural Network on top of CLIP (training log)"
_SRC_COLOUR = "6.1.1 Encoding position in the background (prose)"
_SRC_FINAL = "6.2 final proposal (output of the test-run cell)"

_ROWS: tuple[ReportedRow, ...] = (
    ReportedRow(*_BASELINE, "test", "miou", 0.504, _SRC_BASELINE),
    ReportedRow(*_BASELINE, "test", "accuracy", 0.517, _SRC_BASELINE),
    ReportedRow(*_BASELINE, "test", "cosine", 0.877, _SRC_BASELINE),
    ReportedRow(*_BOTTLENECK, "train", "miou", 0.49, _SRC_BOTTLENECK),
    ReportedRow(*_BOTTLENECK, "val", "miou", 0.19, _SRC_BOTTLENECK),
    ReportedRow(*_BOTTLENECK, "test", "miou", 0.19, _SRC_BOTTLENECK),
    ReportedRow(*_LARGE, "val", "miou", 0.17, _SRC_LARGE),
    ReportedRow(*_LARGE, "test", "miou", 0.17, _SRC_LARGE),
    ReportedRow(*_COLOUR, "not stated", "miou", 0.54, _SRC_COLOUR),
    ReportedRow(*_FINAL, "test", "miou", 0.506, _SRC_FINAL),
    ReportedRow(*_FINAL, "test", "accuracy", 0.483, _SRC_FINAL),
    ReportedRow(*_FINAL, "test", "cosine", 0.885, _SRC_FINAL),
)


def reported_rows() -> tuple[ReportedRow, ...]:
    """Every reported number, as immutable rows."""
    return _ROWS


def reported_results(wide: bool = False) -> pd.DataFrame:
    """The study's numbers as a DataFrame (one row per number, or one per method with ``wide``).

    The wide table has one column per metric and keeps the source; a metric the study did not
    report for a row is NaN, never zero.
    """
    frame = pd.DataFrame([asdict(row) for row in _ROWS])
    if not wide:
        return frame
    keys = ["key", "method", "backbone", "proposals", "split", "source"]
    rows: dict[tuple[str, ...], dict[str, object]] = {}
    for record in frame.to_dict("records"):  # a dict keeps the study's row order
        row = rows.setdefault(tuple(record[k] for k in keys), {k: record[k] for k in keys})
        row[record["metric"]] = record["value"]
    table = pd.DataFrame(list(rows.values()))
    metrics = [m for m in ("miou", "accuracy", "cosine") if m in table]
    return table[keys[:5] + metrics + ["source"]]


def reported_value(key: str, metric: str, split: str = "test") -> float:
    """One reported number by short key; ``KeyError`` rather than a guess when it is missing."""
    for row in _ROWS:
        if row.key == key and row.metric == metric and row.split == split:
            return row.value
    raise KeyError(f"the study reported no {metric!r} on {split!r} for {key!r}")

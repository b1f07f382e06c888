"""The original study's numbers, exactly as it reported them, in one place.

Source: Garosi, Minardi, Suardi, "Visual grounding with CLIP on RefCOCOg", University of Trento,
Machine Learning - Deep Learning module, A.Y. 2022-23 (a Jupyter notebook). Nothing here was
recomputed by this project: these values are quoted, with the section they come from, so that
the report never retypes them and never confuses them with numbers computed here (which, on the
embedded defaults, come from a synthetic dataset with the toy or the untrained tiny models).

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

    key: str  # short handle: baseline, baseline_batch0, bottleneck, large_regressor, ...
    method: str
    backbone: str
    proposals: str
    split: str
    metric: str  # "miou", "accuracy" (IoU >= 0.5) or "cosine"
    value: float
    scope: str  # what the number was computed over (see SCOPES)
    source: str  # the section of the study's notebook it was read from


# What a number was computed over, as far as the notebook shows it.
SCOPES = {
    "full split": "every sample of the split",
    "full split, first expression of each ref": "every ref of the split, scored on its first "
    "expression only (the training loop keeps prompt_list[0:1])",
    "118-expression run": "a run that printed an accuracy of exactly 57/118; its log stops at "
    "batch 45, so it is not the whole test split (9,602 expressions)",
    "batch 0": "the first batch of the loader, the only printed output of that cell",
    "not stated": "the notebook does not say",
}

# Where the study did not state a field, the row says "not stated" instead of guessing.
_BASELINE = ("baseline", "baseline crop matching", "RN50x16", "YOLOv5s (torch hub)")
_BASELINE_BATCH0 = ("baseline_batch0", "baseline crop matching (batch 0 only)", "RN50x16",
                    "YOLOv5s (torch hub)")
_BOTTLENECK = ("bottleneck", "bottleneck regressor (MSE loss, 30 epochs)", "ViT-B/32", "none")
# The prose says MSE alone did best; the only logged run used 0.7 MSE + 1.0 IoU. ViT-B/32: the
# notebook builds LargeRegressorModel(512), i.e. for 512-d embeddings.
_LARGE = ("large_regressor",
          "large regressor (logged run: 0.7 MSE + 1.0 IoU loss, stopped after 1 epoch)",
          "ViT-B/32", "none")
_COLOUR = ("colour_background", "colour-coded background", "not stated", "YOLOv5s (torch hub)")
_FINAL = ("final", "red ellipse + blur, debias 5000 (final proposal)", "RN50x16", "YOLOv8s")
_SRC_BASELINE = "Baseline > Results (table)"
_SRC_BASELINE_TEST = "Baseline (printed output of the test-set cell, batch 0)"
_SRC_BASELINE_VAL = "Baseline (printed output of the validation-set cell, batch 0)"
_SRC_BOTTLENECK = "1. Adding a bottleneck on top of CLIP > Results (table)"
_SRC_LARGE = "2. Adding a Fully-Connected Neural Network on top of CLIP (training log)"
_SRC_COLOUR = "6.1.1 Encoding position in the background (prose)"
_SRC_FINAL = "6.2 final proposal (output of the test-run cell)"
_FIRST = "full split, first expression of each ref"

_ROWS: tuple[ReportedRow, ...] = (
    ReportedRow(*_BASELINE, "not stated", "miou", 0.504, "not stated", _SRC_BASELINE),
    ReportedRow(*_BASELINE, "not stated", "accuracy", 0.517, "not stated", _SRC_BASELINE),
    ReportedRow(*_BASELINE, "not stated", "cosine", 0.877, "not stated", _SRC_BASELINE),
    ReportedRow(*_BASELINE_BATCH0, "test", "miou", 0.5377648168453767, "batch 0",
                _SRC_BASELINE_TEST),
    ReportedRow(*_BASELINE_BATCH0, "test", "accuracy", 0.5564516129032258, "batch 0",
                _SRC_BASELINE_TEST),
    ReportedRow(*_BASELINE_BATCH0, "test", "cosine", 0.879729240171371, "batch 0",
                _SRC_BASELINE_TEST),
    ReportedRow(*_BASELINE_BATCH0, "val", "miou", 0.5657518891818916, "batch 0",
                _SRC_BASELINE_VAL),
    ReportedRow(*_BASELINE_BATCH0, "val", "accuracy", 0.559322033898305, "batch 0",
                _SRC_BASELINE_VAL),
    ReportedRow(*_BASELINE_BATCH0, "val", "cosine", 0.8941795219809322, "batch 0",
                _SRC_BASELINE_VAL),
    ReportedRow(*_BOTTLENECK, "train", "miou", 0.49, _FIRST, _SRC_BOTTLENECK),
    ReportedRow(*_BOTTLENECK, "val", "miou", 0.19, _FIRST, _SRC_BOTTLENECK),
    ReportedRow(*_BOTTLENECK, "test", "miou", 0.19, _FIRST, _SRC_BOTTLENECK),
    ReportedRow(*_LARGE, "train", "miou", 0.17, _FIRST, _SRC_LARGE),
    ReportedRow(*_LARGE, "val", "miou", 0.17, _FIRST, _SRC_LARGE),
    ReportedRow(*_LARGE, "test", "miou", 0.17, _FIRST, _SRC_LARGE),
    ReportedRow(*_COLOUR, "not stated", "miou", 0.54, "not stated", _SRC_COLOUR),
    ReportedRow(*_FINAL, "test", "miou", 0.5064360232455498, "118-expression run", _SRC_FINAL),
    ReportedRow(*_FINAL, "test", "accuracy", 0.4830508474576271, "118-expression run",
                _SRC_FINAL),
    ReportedRow(*_FINAL, "test", "cosine", 0.8853325278072034, "118-expression run",
                _SRC_FINAL),
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
    keys = ["key", "method", "backbone", "proposals", "split", "scope", "source"]
    rows: dict[tuple[str, ...], dict[str, object]] = {}
    for record in frame.to_dict("records"):  # a dict keeps the study's row order
        row = rows.setdefault(tuple(record[k] for k in keys), {k: record[k] for k in keys})
        row[record["metric"]] = record["value"]
    table = pd.DataFrame(list(rows.values()))
    metrics = [m for m in ("miou", "accuracy", "cosine") if m in table]
    return table[keys[:6] + metrics + ["source"]]


def reported_value(key: str, metric: str, split: str | None = None) -> float:
    """One reported number by short key (and split, where the key has several).

    ``KeyError`` rather than a guess when no row or more than one row matches.
    """
    found = [row for row in _ROWS if row.key == key and row.metric == metric
             and (split is None or row.split == split)]
    if len(found) != 1:
        where = "" if split is None else f" on {split!r}"
        if not found:
            raise KeyError(f"the study reported no {metric!r}{where} for {key!r}")
        splits = sorted(row.split for row in found)
        raise KeyError(f"the study reported {metric!r} for {key!r} on several splits "
                       f"({', '.join(splits)}): name one")
    return found[0].value


# ----------------------------------------------------------------------------------------------
# Other work's numbers, quoted with their scope: Fine-Grained Visual Prompting (FGVP)
# ----------------------------------------------------------------------------------------------
FGVP = "Yang, Wang, Li, Wang, Yang, Fine-Grained Visual Prompting (NeurIPS 2023)"
FGVP_SOURCE = ("the Results table of FGVP's official repository README "
               "(github.com/ylingfeng/FGVP), not the paper's own table, which this project "
               "could not read")
FGVP_SCOPE = ("accuracy on the RefCOCOg val split (umd), zero-shot, CLIP ViT-B/32 and RN50x16 "
              "ensembled, ReCLIP's post-processing (R), with the visual prompt named; the "
              "README does not say which proposals (ReCLIP's code base offers ground-truth "
              "and detected boxes)")


@dataclass(frozen=True)
class QuotedRow:
    """A number another work reported, with what it was computed over."""

    method: str
    visual_prompt: str
    value: float
    scope: str
    source: str


_FGVP_ROWS: tuple[QuotedRow, ...] = (
    QuotedRow("ReCLIP (as rerun by FGVP)", "crop and blur outside the box (P | B4)", 0.593,
              FGVP_SCOPE, FGVP_SOURCE),
    QuotedRow("RedCircle (as rerun by FGVP)", "red circle (P | C1)", 0.573, FGVP_SCOPE,
              FGVP_SOURCE),
    QuotedRow("FGVP", "blur reverse mask (P | D4)", 0.621, FGVP_SCOPE, FGVP_SOURCE),
)


def fgvp_rows() -> tuple[QuotedRow, ...]:
    """FGVP's RefCOCOg numbers for the box, circle and blur-reverse-mask prompts."""
    return _FGVP_ROWS


def fgvp_value(method: str) -> float:
    """One of FGVP's quoted accuracies by its method label (KeyError when none matches)."""
    for row in _FGVP_ROWS:
        if row.method.startswith(method):
            return row.value
    raise KeyError(f"no FGVP row for {method!r}")

"""What a chapter's verdict box and its tables of methods are made of: the paired comparison
of two results documents in one sentence, the study's reported numbers with their scope in
one sentence, and a table of methods whose mean IoU and accuracy cells carry their intervals.

Every number in these sentences and tables is read from a results document or from
``report.reported``; none is typed by a chapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from refcocog_tools.engine.uncertainty import (
    Comparison,
    Interval,
    compare,
    comparison_sentence,
    document_intervals,
)
from refcocog_tools.report.figures import METRIC_NAMES
from refcocog_tools.report.reported import SCOPES, reported_rows
from refcocog_tools.report.result_tables import reported_caption, reported_table, table_source

INTERVAL_NOTE = "mean IoU and accuracy with 95% intervals (bootstrap over images)"


Row = Mapping[str, Any]


def compare_documents(document_a: Mapping[str, Any], document_b: Mapping[str, Any],
                      subset: Callable[[Row], bool] | None = None) -> Comparison:
    """Method A's results document against method B's on the same expressions (paired
    differences A - B with image-bootstrap intervals, McNemar's exact test); ``subset`` keeps
    the prediction rows it accepts (e.g. the spatial expressions)."""
    def kept(document: Mapping[str, Any]) -> list[Row]:
        return [row for row in document["predictions"] if subset is None or subset(row)]

    return compare(kept(document_a), kept(document_b))


def comparison_answer(name_a: str, document_a: Mapping[str, Any], name_b: str,
                      document_b: Mapping[str, Any], metric: str = "accuracy",
                      subset: Callable[[Row], bool] | None = None) -> str:
    """The verdict sentence of A against B, e.g. "the baseline beats the largest floor on
    accuracy@0.5: +0.12 [+0.05, +0.20], McNemar p = 0.003 (n = 43 expressions, 8 images)."."""
    found = compare_documents(document_a, document_b, subset)
    return comparison_sentence(name_a, name_b, found, metric=metric) + "."


def _value_words(value: float) -> str:
    return f"{value:.3g}"


def study_report(key: str, metrics: Sequence[str] = ("miou", "accuracy"),
                 split: str | None = None) -> str:
    """What the study reported for ``key`` in one sentence: the method and its configuration,
    each metric's value (per split where it reported several), the scope the number covers
    and the section it was read from. KeyError when it reported none of ``metrics``."""
    rows = [r for r in reported_rows() if r.key == key and r.metric in metrics
            and (split is None or r.split == split)]
    if not rows:
        raise KeyError(f"the study reported none of {list(metrics)} for {key!r}")
    splits = list(dict.fromkeys(r.split for r in rows))
    parts = []
    for metric in metrics:
        found = [r for r in rows if r.metric == metric]
        if not found:
            continue
        if len(splits) == 1:
            parts.append(f"{METRIC_NAMES.get(metric, metric)} {_value_words(found[0].value)}")
        else:
            per_split = ", ".join(f"{_value_words(r.value)} ({r.split})" for r in found)
            parts.append(f"{METRIC_NAMES.get(metric, metric)} {per_split}")
    first = rows[0]
    scope = ("scope not stated" if first.scope == "not stated"
             else f"scope: {SCOPES.get(first.scope, first.scope)}")
    backbone = "backbone not stated" if first.backbone == "not stated" else first.backbone
    proposals = "no proposals" if first.proposals == "none" else f"proposals {first.proposals}"
    split_words = f", {splits[0]} split" if len(splits) == 1 and splits[0] != "not stated" \
        else ""
    return (f"{first.method} [{backbone}, {proposals}{split_words}]: {' and '.join(parts)}; "
            f"{scope}; section \u201c{first.source}\u201d.")


def document_cells(document: Mapping[str, Any]) -> dict[str, Interval | float | None]:
    """A document's mean IoU and accuracy as intervals (its point estimate alone, as an
    interval of zero width, where there are no predictions to resample)."""
    metrics = document["metrics"]
    found = document_intervals(document) or {}
    cells: dict[str, Interval | float | None] = {}
    for name in ("miou", "accuracy"):
        value = metrics.get(name)
        cells[name] = found.get(name) or (None if value is None
                                          else Interval(float(value), float(value),
                                                        float(value)))
    return cells


def method_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per method (label -> results document, in display order): ``method``, mean IoU
    and accuracy as interval cells (``0.698 [0.55, 0.83]`` on the page), crop cosine, ``n``."""
    rows = []
    for label, document in results.items():
        metrics = document["metrics"]
        cosine = metrics.get("cosine")
        rows.append({"method": label, **document_cells(document),
                     "cosine": float("nan") if cosine is None else float(cosine),
                     "n": int(metrics["n"])})
    return pd.DataFrame(rows, columns=["method", "miou", "accuracy", "cosine", "n"])


def method_caption(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The caption of a ``method_table``: where its rows come from and what the brackets are."""
    return f"{table_source(results.values())}; {INTERVAL_NOTE}."


def chart_intervals(results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per metric, one interval per method, for ``metric_bar_chart``'s error bars."""
    cells = [document_cells(document) for document in results.values()]
    return {name: [c[name] if isinstance(c[name], Interval) else None for c in cells]
            for name in ("miou", "accuracy")}


def study_and_build_table(keys: Sequence[str], results: Mapping[str, Mapping[str, Any]]
                          ) -> tuple[pd.DataFrame, str]:
    """The study's rows of ``keys`` (its point numbers, as reported) above this build's rows
    with intervals; a ``numbers`` column says which is which; the caption names both
    sources once."""
    study = reported_table(keys).assign(numbers="study")
    ours = method_table(results).assign(numbers="this build")
    columns = ["numbers", "method", "miou", "accuracy", "cosine", "n"]
    table = pd.concat([study[columns].astype(object), ours[columns].astype(object)],
                      ignore_index=True)
    caption = f"{reported_caption(keys)}; {method_caption(results)}"
    return table, caption

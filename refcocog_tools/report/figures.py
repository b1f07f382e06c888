"""Tables and figures the report's chapters share.

A table's numbers come from one place, or from two kept apart: the study's rows (quoted from
``refcocog_tools.report.reported``) and this build's (``result_tables``; the pictures are
``figure_panels``). ``show_table`` displays a table with its source stated once, in the
caption (``table_source`` writes it from the results documents), numbers to three decimals,
counts as integers, no index and one mark for a missing value.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from refcocog_tools.data.mini_expressions import EXPRESSION_TYPES, expression_audit
from refcocog_tools.engine.results import build_source
from refcocog_tools.engine.uncertainty import Interval, format_interval
from refcocog_tools.report.result_tables import DECIMALS, METRICS, MISSING, metric_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# What a reader sees as a column header for the names the tables use; any other snake_case
# name is shown with spaces.
METRIC_NAMES = {"miou": "mean IoU", "accuracy": "accuracy@0.5", "cosine": "crop cosine"}
HEADER_WORDS = {**METRIC_NAMES, "n": "n", "spatial_share": "spatial share",
                "objects_per_image": "objects per image"}


def spatial_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per method, the metrics on spatial and on non-spatial expressions (source: caption)."""
    rows = []
    for label, doc in results.items():
        for subset, key in (("spatial", "spatial"), ("non-spatial", "non_spatial")):
            group = doc["metrics"]["by_spatial"][key]
            rows.append({"method": label, "expressions": subset, "n": int(group["n"]),
                         **metric_values(group)})
    return pd.DataFrame(rows, columns=["method", "expressions", "n", *METRICS])


# ----------------------------------------------------------------------------------------------
# Displaying a table
# ----------------------------------------------------------------------------------------------
def _is_count_column(name: str, column: pd.Series) -> bool:
    """A column of whole numbers (counts), shown without decimals; metrics never are."""
    if name in METRICS or not pd.api.types.is_numeric_dtype(column) or \
            pd.api.types.is_bool_dtype(column):
        return False
    values = column.dropna()
    return pd.api.types.is_integer_dtype(column) or bool(
        len(values) and (values.astype(float) % 1 == 0).all())


def header_text(name: Any) -> str:
    """A column header as a reader reads it: "mean IoU" for ``miou``, spaces for underscores;
    a name that is already words is kept (``test miou`` -> ``test mean IoU``)."""
    text = str(name)
    if text in HEADER_WORDS:
        return HEADER_WORDS[text]
    return " ".join("mean IoU" if word == "miou" else word
                    for word in text.replace("_", " ").split(" "))


def _is_interval(value: Any) -> bool:
    return isinstance(value, Interval) or (
        isinstance(value, Mapping) and {"estimate", "low", "high"} <= set(value))


def _formatted(frame: pd.DataFrame, html: bool = False) -> pd.DataFrame:
    """Every cell as the text a reader sees, under readable column headers. An interval cell
    (``engine.uncertainty.Interval``) reads ``0.698 [0.55, 0.83]``; in ``html`` its spaces do
    not break, so a narrow column wraps its words, never an estimate apart from its bounds."""
    space = "\u00a0" if html else " "
    shown = {}
    for name in frame.columns:
        column = frame[name]
        if _is_count_column(str(name), column):
            text = [MISSING if pd.isna(v) else f"{int(v)}" for v in column]
        elif pd.api.types.is_float_dtype(column):
            text = [MISSING if pd.isna(v) else f"{v:.{DECIMALS}f}" for v in column]
        else:
            text = [format_interval(v, DECIMALS).replace(" ", space) if _is_interval(v)
                    else f"{v:.{DECIMALS}f}" if isinstance(v, float) and not pd.isna(v)
                    else MISSING if v is None or v is pd.NA or (isinstance(v, float)
                                                                and pd.isna(v))
                    else str(v) for v in column]
        shown[header_text(name)] = text
    return pd.DataFrame(shown, columns=[header_text(n) for n in frame.columns])


class Table:
    """A table as a page shows it: the caption (its source), then the rows.

    HTML in the book (``text/html``), aligned text elsewhere (``text/plain``, which nbval
    compares): the same three-decimal cells in both.
    """

    def __init__(self, frame: pd.DataFrame, caption: str) -> None:
        self.frame = frame
        self.caption = caption

    def _repr_html_(self) -> str:
        body = _formatted(self.frame, html=True).to_html(index=False, escape=True, border=0,
                                              classes="dataframe refcocog-table")
        caption = f"<caption>{html.escape(self.caption)}</caption>"
        return body.replace(">\n", f">\n{caption}\n", 1) if self.caption else body

    def __repr__(self) -> str:
        text = _formatted(self.frame).to_string(index=False)
        return f"{self.caption}\n{text}" if self.caption else text


def show_table(frame: pd.DataFrame, caption: str = "") -> Table:
    """``frame`` formatted for a page with its source in ``caption``; the cell's last line."""
    if isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=True)
    else:  # a labelled index (epochs, named rows) is a column of the page's table
        frame = frame.reset_index(names=frame.index.name or "")
    return Table(frame, caption)


def expression_type_table(results: Mapping[str, Mapping[str, Any]],
                          root: str | Path) -> pd.DataFrame:
    """Accuracy (IoU >= 0.5) per method and per expression type of the embedded dataset
    (``mini_expressions.expression_type``: plain / position / size / relation), one column per type,
    with ``n`` per type in the first row label and the source of every row."""
    rows, counts = [], {}
    for label, doc in results.items():
        audit = expression_audit(root, doc["predictions"])
        by_type = audit.groupby("type")["correct"]
        counts = by_type.size().to_dict()
        accuracy = by_type.mean().to_dict()
        rows.append({"method": label,
                     **{t: float(accuracy.get(t, float("nan"))) for t in EXPRESSION_TYPES},
                     "all": float(audit["correct"].mean()), "source": build_source(doc)})
    names = {t: f"{t} (n={counts.get(t, 0)})" for t in EXPRESSION_TYPES}
    return pd.DataFrame(rows, columns=["method", *EXPRESSION_TYPES, "all", "source"]).rename(
        columns=names)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _same_values(table: pd.DataFrame, metrics: Sequence[str]) -> bool:
    """Whether every metric column holds the same numbers (mean IoU equals accuracy when every
    proposal is a ground-truth box: each IoU is 1 or well below 0.5)."""
    first = table[metrics[0]].astype(float)
    return len(metrics) > 1 and all(
        ((table[m].astype(float) - first).abs() < 1e-9).all() for m in metrics[1:])


def metric_bar_chart(table: pd.DataFrame, metrics: Sequence[str] = ("miou", "accuracy"),
                     label: str = "method", title: str = "", width: float = 7.0,
                     reference: Mapping[str, float] | None = None,
                     intervals: Mapping[str, Sequence[Interval | None]] | None = None) -> Figure:
    """Grouped horizontal bars: one group per row of ``table``, one bar per metric, labelled
    with its value.

    Metrics whose columns are equal on every row are drawn once, named together ("mean IoU =
    accuracy@0.5"), so no number is shown twice. ``intervals`` maps a metric to one interval
    per row, drawn as error bars; ``reference`` draws a dotted vertical line per metric (e.g.
    a floor).
    """
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("metric_bar_chart needs at least one row")
    metrics = list(metrics)
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    if _same_values(table, metrics):
        metrics, names = metrics[:1], [" = ".join(names)]
    labels = [textwrap.shorten(str(v), 52) for v in table[label]]
    height = max(2.0, 0.3 * len(labels) * len(metrics) + 1.0)
    fig, ax = plt.subplots(figsize=(width, height))
    step = 0.8 / len(metrics)
    positions = range(len(labels))
    for k, (metric, name) in enumerate(zip(metrics, names, strict=True)):
        offsets = [p - 0.4 + step * (k + 0.5) for p in positions]
        values = table[metric].astype(float)
        errors = None
        if intervals and metric in intervals:
            found = list(intervals[metric])
            errors = [[0.0 if i is None else max(v - i.low, 0.0) for v, i in zip(values, found,
                                                                                  strict=True)],
                      [0.0 if i is None else max(i.high - v, 0.0) for v, i in zip(values, found,
                                                                                   strict=True)]]
        bars = ax.barh(offsets, values.fillna(0), height=step, label=name, color=f"C{k}",
                       xerr=errors, error_kw={"ecolor": "0.25", "capsize": 2, "linewidth": 1})
        # Each value is written past its bar and its error bar, so neither hides it.
        ends = values.fillna(0).tolist() if errors is None else [
            v + high for v, high in zip(values.fillna(0), errors[1], strict=True)]
        for bar, value, end in zip(bars, values, ends, strict=True):
            if not pd.isna(value):
                ax.text(min(end, 1.0) + 0.01, bar.get_y() + bar.get_height() / 2,
                        f"{value:.3f}", va="center", fontsize=8)
        if reference and metric in reference:
            ax.axvline(reference[metric], color=f"C{k}", linestyle=":", linewidth=1)
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel(names[0] if len(names) == 1 else "score (0 to 1)")
    if len(names) > 1:
        ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

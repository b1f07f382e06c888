"""Tables and figures the report's chapters share.

A table's numbers come from one place, or from two kept apart: the study's rows (quoted from
``refcocog_tools.report.reported``)
and this build's. ``show_table`` displays a table with its source
stated once, in the caption (``table_source`` writes it from the results documents), numbers
to three decimals, counts as integers, no index and one mark for a missing value.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from refcocog_tools.engine.results import build_source
from refcocog_tools.engine.uncertainty import Interval, format_interval
from refcocog_tools.report import figure_panels as _panels
from refcocog_tools.report.reported import reported_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("miou", "accuracy", "cosine")
MISSING = "–"  # the one mark of a value that is missing or was not reported
DECIMALS = 3
# What a reader sees as a column header for the names the tables use; any other snake_case
# name is shown with spaces.
METRIC_NAMES = {"miou": "mean IoU", "accuracy": "accuracy@0.5", "cosine": "crop cosine"}
HEADER_WORDS = {**METRIC_NAMES, "n": "n", "spatial_share": "spatial share",
                "objects_per_image": "objects per image"}

# The pictures live in figure_panels; the chapters import them from here too.
GT_COLOUR = _panels.GT_COLOUR
PREDICTION_COLOUR = _panels.PREDICTION_COLOUR
draw_box = _panels.draw_box
heatmap_grid = _panels.heatmap_grid
lut_figure = _panels.lut_figure
prediction_grid = _panels.prediction_grid
preprocess_views = _panels.preprocess_views
side_by_side = _panels.side_by_side
tensor_variants = _panels.tensor_variants
ultralytics_photo = _panels.ultralytics_photo

# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def reported_source(section: str) -> str:
    """The source text of a number quoted from the original study."""
    return f"reported by the original study ({section})"


def _metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The three metrics as floats, NaN where a metric is missing (never zero)."""
    return {m: float("nan") if metrics.get(m) is None else float(metrics[m]) for m in METRICS}


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def results_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per evaluated method: ``method``, the metrics and ``n``.

    ``results`` maps a row label to an ``evaluate`` results document, in display order; the
    source of the rows is ``table_source(results.values())``, for the caption.
    """
    rows = []
    for label, doc in results.items():
        rows.append({"method": label, **_metric_values(doc["metrics"]),
                     "n": int(doc["metrics"]["n"])})
    return pd.DataFrame(rows, columns=["method", *METRICS, "n"]).astype({"n": "Int64"})


def reported_table(keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The study's numbers in the same layout as ``results_table`` (``n`` is not stated).

    ``keys`` picks rows of ``reported.reported_results`` by key (default: all of them); the
    method label names the backbone, proposals, split and scope (what the number was computed
    over) the study shows.
    """
    wide = reported_results(wide=True)
    if keys is not None:
        missing = set(keys) - set(wide["key"])
        if missing:
            raise KeyError(f"no reported rows for {sorted(missing)}")
        wide = wide[wide["key"].isin(keys)]
    rows = []
    for record in wide.to_dict("records"):
        label = (f"{record['method']} [{record['backbone']}, proposals {record['proposals']}, "
                 f"split {record['split']}, scope {record['scope']}]")
        rows.append({"method": label,
                     **{m: float(record.get(m, float("nan"))) for m in METRICS},
                     "n": None})
    return pd.DataFrame(rows, columns=["method", *METRICS, "n"]).astype({"n": "Int64"})


def reported_caption(keys: Sequence[str]) -> str:
    """Where the study's rows of ``keys`` come from: the study and its sections, once."""
    wide = reported_results(wide=True)
    sections = list(dict.fromkeys(wide[wide["key"].isin(keys)]["source"]))
    return reported_source("; ".join(sections))


def comparison_table(keys: Sequence[str],
                     results: Mapping[str, Mapping[str, Any]]) -> tuple[pd.DataFrame, str]:
    """The study's rows of ``keys`` above this build's ``results``, with a ``numbers`` column
    ("study" or "this build") and the caption stating both sources."""
    study = reported_table(keys).assign(numbers="study")
    ours = results_table(results).assign(numbers="this build")
    table = pd.concat([study, ours], ignore_index=True)
    table = table[["numbers", "method", *METRICS, "n"]]
    caption = f"{reported_caption(keys)}; {table_source(results.values())}."
    return table, caption


def spatial_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per method, the metrics on spatial and on non-spatial expressions (source: caption)."""
    rows = []
    for label, doc in results.items():
        for subset, key in (("spatial", "spatial"), ("non-spatial", "non_spatial")):
            group = doc["metrics"]["by_spatial"][key]
            rows.append({"method": label, "expressions": subset, "n": int(group["n"]),
                         **_metric_values(group)})
    return pd.DataFrame(rows, columns=["method", "expressions", "n", *METRICS])


def table_source(results: Iterable[Mapping[str, Any]]) -> str:
    """The source of a table of this build's results documents, stated once: the common
    ``build_source`` without the expression count (a column of the table)."""
    sources = list(dict.fromkeys(build_source(doc).rsplit(", n=", 1)[0] for doc in results))
    return "; ".join(sources)


def study_vs_build(rows: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per method: the study's mean IoU and configuration next to this build's.

    ``rows`` are (label, key of the study's row or None when it reported no number, this
    build's results document). The study's number is its test-split one where it has one.
    """
    wide = reported_results(wide=True)
    out = []
    for label, key, doc in rows:
        study = wide[wide["key"] == key] if key else wide.iloc[:0]
        if len(study) > 1 and (study["split"] == "test").any():
            study = study[study["split"] == "test"]
        first = study.iloc[0] if len(study) else None
        out.append({
            "method": label,
            "study miou": float(first["miou"]) if first is not None else float("nan"),
            "study configuration": (f"{first['backbone']}, proposals {first['proposals']}, "
                                    f"{first['split']} split"
                                    + (f", scope {first['scope']}" if "scope" in first else "")
                                    if first is not None else None),
            "this build miou": _metric_values(doc["metrics"])["miou"],
            "this build accuracy": _metric_values(doc["metrics"])["accuracy"],
            "this build configuration": build_source(doc).removeprefix("this build: "),
        })
    return pd.DataFrame(out)


def study_vs_build_chart(table: pd.DataFrame, width: float = 7.5) -> Figure:
    """Paired horizontal bars per method: the study's mean IoU (grey, hatched; absent where it
    reported none) and this build's (blue), labelled with their values."""
    import matplotlib.pyplot as plt

    labels = [textwrap.shorten(str(v), 40) for v in table["method"]]
    fig, ax = plt.subplots(figsize=(width, 0.55 * len(labels) + 1.2))
    positions = range(len(labels))
    for offset, column, style in ((-0.2, "study miou", {"color": "0.6", "hatch": "//",
                                                        "label": "study (reported)"}),
                                  (0.2, "this build miou", {"color": "C0",
                                                            "label": "this build"})):
        values = table[column].astype(float)
        bars = ax.barh([p + offset for p in positions], values.fillna(0), height=0.38, **style)
        for bar, value in zip(bars, values, strict=True):
            text = "not reported" if pd.isna(value) else f"{value:.3f}"
            ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=9)
    ax.set_yticks(list(positions), labels, fontsize=10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("mean IoU", fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return fig


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
        import html

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
    from refcocog_tools.data.mini_expressions import EXPRESSION_TYPES, expression_audit

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

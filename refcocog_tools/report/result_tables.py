"""Tables of results: this build's (with their 95% intervals), the study's as reported, and
the two side by side, each with its source stated once.

The study's rows are quoted from ``refcocog_tools.report.reported``; this build's come from
results documents (``engine.results``), whose intervals are ``engine.uncertainty``'s.
``figures`` re-exports these functions (``from refcocog_tools.report.figures import
results_table``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from refcocog_tools.engine.results import build_source
from refcocog_tools.engine.uncertainty import document_intervals, format_interval
from refcocog_tools.report.reported import reported_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("miou", "accuracy", "cosine")
MISSING = "–"  # the one mark of a value that is missing or was not reported
DECIMALS = 3


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def reported_source(section: str) -> str:
    """The source text of a number quoted from the original study."""
    return f"reported by the original study ({section})"


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
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
        rows.append({"method": label, **metric_values(doc["metrics"]),
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


def _interval_cells(doc: Mapping[str, Any]) -> dict[str, str]:
    """A results document's mean IoU and accuracy as ``0.698 [0.55, 0.83]`` cells."""
    found = document_intervals(doc) or {}
    return {"mean IoU [95% CI]": format_interval(found.get("miou")),
            "accuracy [95% CI]": format_interval(found.get("accuracy"))}


def interval_table(results: Mapping[str, Mapping[str, Any]],
                   label: str = "method") -> pd.DataFrame:
    """One row per results document: mean IoU and accuracy with their 95% image-bootstrap
    intervals as text cells, and the expression count (source: ``table_source``)."""
    rows = [{label: name, **_interval_cells(doc), "n": int(doc["metrics"]["n"])}
            for name, doc in results.items()]
    return pd.DataFrame(rows, columns=[label, "mean IoU [95% CI]", "accuracy [95% CI]", "n"])


def comparison_table(keys: Sequence[str],
                     results: Mapping[str, Mapping[str, Any]]) -> tuple[pd.DataFrame, str]:
    """The study's rows of ``keys`` above this build's ``results``, with a ``numbers`` column
    ("study" or "this build") and the caption stating both sources. This build's cells carry
    their 95% intervals; the study reported none."""
    study = reported_table(keys)
    study_rows = [{"numbers": "study", "method": row["method"],
                   "mean IoU [95% CI]": f"{row['miou']:.3f}",
                   "accuracy [95% CI]": f"{row['accuracy']:.3f}", "n": MISSING}
                  for row in study.to_dict("records")]
    ours = [{"numbers": "this build", "method": name, **_interval_cells(doc),
             "n": str(int(doc["metrics"]["n"]))} for name, doc in results.items()]
    table = pd.DataFrame(study_rows + ours)
    caption = (f"{reported_caption(keys)}; {table_source(results.values())}. Intervals: 95%, "
               "bootstrap over images.")
    return table, caption


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
            "this build miou": metric_values(doc["metrics"])["miou"],
            "this build accuracy": metric_values(doc["metrics"])["accuracy"],
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

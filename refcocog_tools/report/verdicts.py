"""The chapters' verdicts, gathered for the intro page.

A chapter states its verdict with ``report.glue_verdict``: the question it asks, the answer of
this build (one sentence made from the numbers and their intervals) and what the study
reported. Besides the Markdown box its first cell shows, ``glue_verdict`` glues the same
verdict as a JSON record (``RECORD_NAME``), with the principal difference and its interval when
the answer rests on one. The book build reads those records back from the executed notebooks
(``collect_verdicts``: nothing is executed, a record is plain JSON) and writes
``book/_verdicts.md`` and its figure ``book/_verdicts.png`` (generated, git-ignored), which the
intro page includes: one table of every chapter's question and answer, one chart of the
differences with their intervals. Every chapter that calls ``glue_verdict`` is collected.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

from refcocog_tools.core.files import atomic_write_bytes
from refcocog_tools.engine.uncertainty import Interval, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RECORD_NAME = "verdict-record"  # the glue name of a chapter's verdict as JSON
VERDICT_PAGE = Path("book") / "_verdicts.md"
VERDICT_FIGURE = Path("book") / "_verdicts.png"
# A glued record's JSON text, under myst_nb's glue prefix (nbformat requires a key ending in
# "/json" to hold an object at the top level of the bundle, so the record is text).
_RECORD_MIME = "application/papermill.record/text/plain"


@dataclass(frozen=True)
class Verdict:
    """One chapter's verdict: its question, this build's answer, the study's report and, when
    the answer rests on one, the principal difference (A - B) and what it compares."""

    chapter: str
    question: str
    answer: str
    study: str
    difference: Interval | None = None
    compared: str = ""  # e.g. "red-circle - crop baseline, accuracy@0.5"


def verdict_record(question: str, answer: str, study: str, difference: Interval | None = None,
                   compared: str = "") -> dict[str, Any]:
    """The JSON a chapter glues beside its verdict box (``RECORD_NAME``)."""
    record: dict[str, Any] = {"question": question, "answer": answer, "study": study,
                              "compared": compared}
    if difference is not None:
        record["difference"] = difference.to_dict()
    return record


class RecordText:
    """A verdict record as a displayable object whose plain-text form is its JSON."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.text = json.dumps(dict(record), sort_keys=True)

    def __repr__(self) -> str:
        return self.text


def _from_record(chapter: str, record: Mapping[str, Any]) -> Verdict:
    found = record.get("difference")
    difference = (Interval(float(found["estimate"]), float(found["low"]), float(found["high"]))
                  if isinstance(found, Mapping) else None)
    return Verdict(chapter, str(record.get("question", "")), str(record.get("answer", "")),
                   str(record.get("study", "")), difference, str(record.get("compared", "")))


def read_verdict(notebook: Path, chapter: str) -> Verdict | None:
    """The verdict an executed chapter glued (its last, if it glued several); None when it
    glued none."""
    nb = nbformat.read(notebook, as_version=4)
    found = None
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name == RECORD_NAME and _RECORD_MIME in output.get("data", {}):
                text = output["data"][_RECORD_MIME]
                found = json.loads("".join(text) if isinstance(text, list) else text)
    return _from_record(chapter, found) if isinstance(found, Mapping) else None


def collect_verdicts(out_dir: Path, names: Sequence[str]) -> list[Verdict]:
    """The verdicts of the chapters ``names`` (in that order) executed into ``out_dir``;
    chapters without a verdict or not executed are left out."""
    verdicts = []
    for name in names:
        path = out_dir / f"{name}.ipynb"
        if path.is_file():
            found = read_verdict(path, name)
            if found is not None:
                verdicts.append(found)
    return verdicts


def _cell(text: str) -> str:
    """Text as one Markdown table cell (a pipe or a line break would end it)."""
    return " ".join(text.replace("|", "\\|").split())


def headline(answer: str) -> str:
    """An answer's first sentence (its verdict and numbers); the chapter's box has the rest."""
    found = re.match(r"(.+?\.)(\s|$)", answer.strip(), flags=re.S)
    return found.group(1) if found else answer


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """The intro's table: chapter, question, the first sentence of this build's answer (MyST
    Markdown)."""
    lines = ["| chapter | question | this build's answer |", "|---|---|---|"]
    for found in verdicts:
        lines.append(f"| {{doc}}`chapters/{found.chapter}` | {_cell(found.question)} | "
                     f"{_cell(headline(found.answer))} |")
    return "\n".join(lines)


_COLOURS = {"beats": "tab:green", "does not beat": "tab:red",
            "no difference this data can detect": "0.45"}


def verdict_figure(verdicts: Sequence[Verdict]) -> Figure | None:
    """Each chapter's principal difference with its 95% interval, one row per chapter, coloured
    by its verdict; None when no verdict carries a difference."""
    import matplotlib.pyplot as plt  # heavy: only the book build draws

    shown = [v for v in verdicts if v.difference is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 0.6 * len(shown) + 1.3))
    for row, found in enumerate(shown):
        interval = found.difference
        assert interval is not None
        word = verdict(interval)
        ax.errorbar(interval.estimate, row,
                    xerr=[[interval.estimate - interval.low], [interval.high - interval.estimate]],
                    fmt="o", capsize=4, color=_COLOURS[word], label=word)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)),
                  [f"{v.chapter[:2]}: {v.compared}" for v in shown], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("difference A - B with its 95% interval (this build)", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def write_verdict_page(root: Path, out_dir: Path, names: Sequence[str]) -> Path:
    """Write ``book/_verdicts.md`` (and ``book/_verdicts.png`` when a verdict carries a
    difference) from the executed chapters; return the page's path."""
    import matplotlib.pyplot as plt  # heavy: only the book build draws

    verdicts = collect_verdicts(out_dir, names)
    parts = [verdict_table(verdicts) if verdicts else
             "No chapter of this build states a verdict yet."]
    figure = verdict_figure(verdicts)
    image = root / VERDICT_FIGURE
    if figure is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight",
                       metadata={"Software": None})
        plt.close(figure)
        atomic_write_bytes(image, buffer.getvalue())
        compared = "; ".join(f"chapter {v.chapter[:2]}: {v.compared}" for v in verdicts
                             if v.difference is not None)
        parts.append(
            f"```{{figure}} {image.name}\n:name: fig-verdicts\n:alt: One dot per chapter with "
            "a horizontal bar: the principal difference of its verdict and its 95% interval, "
            "right of the vertical line when the first method is ahead, coloured by the "
            f"verdict.\n\nThe principal difference behind each chapter's verdict ({compared}), "
            "with its 95% interval (paired image bootstrap); an interval that crosses the line "
            "is a difference this data cannot detect.\n```")
    else:
        image.unlink(missing_ok=True)
    page = root / VERDICT_PAGE
    atomic_write_bytes(page, ("\n\n".join(parts) + "\n").encode("utf-8"))
    return page

"""What a chapter calls: its header (``open_chapter``: parameters checked, models loaded, the
provenance box), ``glue`` and figures; and the report's command line.

Every chapter starts with ``chapter = open_chapter(globals())``, glues the numbers its prose
shows (``glue``, ``glue_figure``) and shows its other figures (``show_figure``). The command
line builds the book (``book_build`` does the work)::

    python -m refcocog_tools.report.chapter build [-p NAME VALUE ...] [--chapters 01_dataset ...]
    python -m refcocog_tools.report.chapter regen-baselines [--chapters ...]
"""

from __future__ import annotations

import io
import math
import os
import random
import sys
import types
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.dataset import is_synthetic as dataset_is_synthetic
from refcocog_tools.data.layouts import get_layout
from refcocog_tools.engine import results
from refcocog_tools.engine.results import ProvenanceNote
from refcocog_tools.engine.run import Run, RunSpec, build_run
from refcocog_tools.engine.uncertainty import Interval
from refcocog_tools.report.book_build import RESULTS_ENV
from refcocog_tools.report.chapter_files import (
    ReportError,
    find_root,
    resolve_data_root,
)
from refcocog_tools.report.method_runs import MethodRunner
from refcocog_tools.report.verdicts import RECORD_NAME, RecordText, verdict_record

# ----------------------------------------------------------------------------------------------
# Chapter parameters
# ----------------------------------------------------------------------------------------------
# What every chapter's parameters cell defines (chapters may add their own).
COMMON_PARAMETERS = ("data_root", "clip", "proposals", "device", "limit", "seed")
# Names an IPython kernel defines itself; everything else in a chapter's namespace before its
# header cell is a parameter (declared in the parameters cell, or injected by papermill).
_KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
}


def _type_accepts(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits a parameter annotation of the forms chapters use: ``int``,
    ``float``, ``str``, ``bool``, ``Optional[X]`` and ``list[X]`` (a tuple is accepted too)."""
    text = annotation.replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        return value is None or _type_accepts(text[len("Optional["):-1], value)
    if text.startswith("list[") and text.endswith("]"):
        return (isinstance(value, list | tuple)
                and all(_type_accepts(text[len("list["):-1], v) for v in value))
    kinds = _SIMPLE_TYPES.get(text)
    if kinds is None:
        raise ReportError(f"parameter annotation {annotation!r} is not one of int, float, str, "
                          "bool, Optional[X], list[X]")
    if isinstance(value, bool) and bool not in kinds:
        return False  # True is an int to Python, not to a reader of `-p limit True`
    return isinstance(value, kinds)


def _annotation_text(annotation: Any) -> str:
    """A type hint as its source text: ``int``, ``list[str]``, ``Optional[float]``."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")  # list[float], typing.Optional[float]


def _bound_by_import(name: str, value: Any, namespace: dict[str, Any]) -> bool:
    """Whether ``value`` is the very object a loaded module holds under ``name``: a constant the
    header cell imported (``from refcocog_tools.data.dataset import SPLITS``), not a parameter. (The
    kernel's cell history ``In`` cannot tell: nbval executes cells without storing history.)

    The chapter's own namespace is no such module, under whatever name it is registered: a
    kernel's ``__main__``, and ``__mp_main__``, the alias ``multiprocessing`` registers when a
    chapter's cell imports it first (chapter 09: every name papermill injected looked imported,
    so a misspelt parameter ran silently)."""
    for module_name, module in list(sys.modules.items()):
        if module_name == "__main__" or module is None:
            continue
        held_names = getattr(module, "__dict__", {})
        if held_names is namespace:
            continue
        held = held_names.get(name, _NOT_HELD)
        if held is value:
            return True
    return False


_NOT_HELD = object()


class ParameterError(ReportError):
    """A chapter parameter that is not declared or has the wrong type. In a kernel it shows as
    its one-line message (IPython's ``_render_traceback_`` hook): the reader's mistake, not a
    traceback through the package."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def check_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The chapter's parameters from its namespace, checked against its parameters cell.

    Every parameter is declared with a type hint (``limit: int = 0``), so the declared names and
    types are the namespace's ``__annotations__``. A name that is defined but not declared (a
    misspelt ``-p limt 5`` injected by papermill) or a value of the wrong type (``-p limit ten``)
    raises ParameterError (a ReportError) naming the parameter, before the chapter does any
    work.
    """
    declared = {name: _annotation_text(a)
                for name, a in namespace.get("__annotations__", {}).items()}
    if not declared:
        raise ReportError("the chapter declares no parameters: its parameters cell needs type "
                          "hints (limit: int = 0)")
    unknown = sorted(
        name for name, value in namespace.items()
        if not name.startswith("_") and name not in _KERNEL_NAMES and name not in declared
        and not callable(value) and not isinstance(value, types.ModuleType)
        and not _bound_by_import(name, value, namespace)
    )
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}: this chapter's "
                             f"parameters are {', '.join(declared)}")
    values = {}
    for name, annotation in declared.items():
        if name not in namespace:
            raise ParameterError(f"parameter {name} is declared but has no value")
        value = namespace[name]
        if not _type_accepts(annotation, value):
            raise ParameterError(f"parameter {name} must be {annotation}, got {value!r} "
                                 f"({type(value).__name__})")
        values[name] = value
    return values


# ----------------------------------------------------------------------------------------------
# Helpers the chapters call
# ----------------------------------------------------------------------------------------------
def provenance_note(data_root: str | os.PathLike[str] | None,
                    backbones_untrained: bool | None = None,
                    models: str = "", toy: bool = False,
                    dataset: str = "refcocog") -> ProvenanceNote:
    """The box at the top of a page (``results.provenance_note``) for a run's data root: the
    embedded synthetic dataset when empty; ``dataset`` names real data (refcocog, refcoco,
    refcoco+)."""
    synthetic = not data_root or dataset_is_synthetic(resolve_data_root(data_root))
    return results.provenance_note(synthetic, backbones_untrained, models, toy,
                                   dataset=dataset)


class Chapter:
    """What a chapter works on, opened once by ``open_chapter``: its checked parameters, the
    data root, the split's dataset (read on first use), the models and the provenance box.
    ``run``: the run builder's run of the page (``engine.run``) where it loads models; its
    methods are made by ``run.make_method`` and evaluated by ``runner``."""

    def __init__(self, params: dict[str, Any], root: Path, backbones: list[Any], proposer: Any,
                 note: ProvenanceNote | None, run: Run | None = None) -> None:
        self.params = params
        self.root = root
        self.backbones = backbones
        self.proposer = proposer
        self.note = note
        self.run = run

    @cached_property
    def dataset(self) -> Any:
        """The split of the ``split`` parameter (test when the chapter has none) of the
        ``dataset`` / ``split_by`` parameters' dataset (RefCOCOg umd when it has none),
        expression view."""
        if self.run is not None and self.run.dataset is not None:
            return self.run.dataset
        return self.open_split(self.params.get("split", "test"))

    @cached_property
    def runner(self) -> MethodRunner:
        """The page's evaluations (``method_runs.MethodRunner`` on ``run``, the ``limit``
        parameter's expressions): each configuration evaluated once."""
        if self.run is None:
            raise ReportError("this chapter loads no models (open_chapter(models=())): it "
                              "evaluates no method")
        return MethodRunner(self.run, self.params.get("limit", 0),
                            world=f"this page's split ({self.params.get('split', 'test')})")

    def evaluate(self, method: str, proposer: Any = None, **options: Any) -> dict[str, Any]:
        """The results document of ``method`` with ``options`` on the page's split, proposals
        (or ``proposer``) and backbones (``runner.run``: computed once per configuration)."""
        return self.runner.run(method, proposer, **options)

    def open_split(self, split: str, view: str = "expression") -> Any:
        """Another split of this chapter's dataset (the ``dataset`` / ``split_by`` parameters),
        e.g. the training split whose expressions red-circle debiases with."""
        return RefCOCOg(self.root, split=split, view=view,
                        dataset=self.params.get("dataset", "refcocog"),
                        split_by=self.params.get("split_by") or None)

    @property
    def results_dir(self) -> Path:
        """Where the chapter's methods write ``<method>.json``: the ``results_dir`` parameter,
        else the folder named by ``$REFCOCOG_TOOLS_RESULTS``, else ``results/`` in the book root
        (chapter 10 reads them there)."""
        given = self.params.get("results_dir", "") or os.environ.get(RESULTS_ENV, "")
        return Path(given).expanduser() if given else find_root() / "results"

    def save_results(self, method: str, document: dict[str, Any]) -> None:
        """Store a method's results document as ``<results_dir>/<method>.json``. Nothing is
        returned: a chapter's last line would otherwise print the machine's path on the page."""
        results.write_results(document, self.results_dir, method)

    def stored_results(self, method: str, *, uses_proposals: bool = True,
                       config: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The stored document of ``method`` computed on this chapter's data, split, CLIP
        checkpoints, proposals (unless ``uses_proposals`` is False) and limit, with ``config``
        equal; None when there is none (``results.find_results``)."""
        proposals = None
        if uses_proposals:
            proposals = self.proposer.name if self.proposer else self.params.get("proposals")
        return results.find_results(
            self.results_dir, method, data_root=self.root,
            split=self.params.get("split", "test"), backbones=self.backbones,
            proposals=proposals, limit=self.params.get("limit", 0), config=config)

    @property
    def run_label(self) -> str:
        """How captions name this page's computed numbers, e.g. "this build: synthetic
        dataset, CLIP tiny-rn (untrained)"."""
        return results.run_label(self.root, self.backbones,
                                 dataset=self.params.get("dataset", "refcocog"))


def open_chapter(namespace: dict[str, Any], *,
                 models: Sequence[str] = ("clip", "proposals")) -> Chapter:
    """The header of every chapter: ``chapter = open_chapter(globals())``.

    Checks the parameters (``check_parameters``: an unknown name or a wrong type stops here with
    the parameter's name), seeds everything with ``seed``, resolves ``data_root``, loads the
    models named in ``models`` from the parameters of the same name (``clip``: the CLIP
    backbones, ``proposals``: the proposer; ``models=()`` for a chapter that runs none) on
    ``device``, and writes the page's provenance box (``chapter.note``) from what was loaded.
    The ``dataset`` and ``split_by`` parameters, where a chapter has them, choose another
    dataset of the family (see ``layouts``); a proposer that reads a file checks it against the
    split here.
    """
    params = check_parameters(namespace)
    unknown_models = set(models) - {"clip", "proposals"}
    if unknown_models:
        raise ValueError(f"open_chapter: models can be clip and proposals, not {unknown_models}")
    seed_everything(params.get("seed", 0))
    data_root = params.get("data_root", "")
    root = resolve_data_root(data_root)
    device = params.get("device", "cpu")
    clip = params.get("clip", "") if "clip" in models else ""
    proposals = params.get("proposals", "") if "proposals" in models else ""
    run = None
    if clip or proposals:
        # The run builder loads the models and checks a proposer's file against the split;
        # the page's methods are made on it (``chapter.run.make_method``).
        spec = RunSpec(data_root=root, split=params.get("split", "test"), method=None,
                       layout=get_layout(params.get("dataset", "refcocog"),
                                         params.get("split_by") or None),
                       proposals=proposals or "gt", clip=clip, device=device,
                       seed=params.get("seed", 0))
        run = build_run(spec)
    backbones = run.backbones if run is not None else []
    proposer = run.proposer if run is not None and proposals else None
    chapter = Chapter(params, root, backbones, proposer, None, run)
    named = [f"CLIP {clip}"] * bool(clip) + [f"proposals {proposals}"] * bool(proposals)
    untrained = (any(b.untrained for b in backbones)
                 or bool(getattr(proposer, "untrained", False))) if named else None
    chapter.note = provenance_note(data_root, backbones_untrained=untrained,
                                   models="; ".join(named),
                                   toy=any(getattr(b, "toy", False) for b in backbones),
                                   dataset=params.get("dataset", "refcocog"))
    return chapter


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the study's ``np.random.seed = 42`` seeded nothing).

    Every chapter calls it first, so it also sets the one display option the pages need:
    table cells are shown whole (a source column cut with "..." would hide where a number
    comes from).
    """
    import pandas as pd

    pd.set_option("display.max_colwidth", None)
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)


def glue(name: str, value: Any, digits: int = 3, significant: int | None = None) -> None:
    """``myst_nb.glue`` a value for the prose, not displayed, floats rounded to ``digits``.

    Prose shows at most three decimals (``:.3f``, ``:.1%``); rounding before gluing keeps the
    recorded value, which nbval compares, the same on every CPU (the last digits of a float
    differ from one machine's kernels to another's). ``significant`` rounds to that many
    significant digits instead, for prose that shows ``:.4g``.
    """
    from myst_nb import glue as myst_glue

    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # a NumPy or torch scalar
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.{significant}g}") if significant else round(value, digits)
    myst_glue(name, value, display=False)


VERDICT_KEY = "verdict"


def glue_verdict(question: str, answer: str, study: str, name: str = VERDICT_KEY, *,
                 difference: Interval | None = None, compared: str = "") -> None:
    """Glue a chapter's verdict box as Markdown: the question it asks, the answer of this build
    in one sentence (made from the numbers and their intervals, e.g. by
    ``engine.uncertainty.comparison_sentence``), and what the study reported, with its scope.
    ``difference``: the interval of the principal difference the answer rests on, and
    ``compared`` what it compares ("red-circle - crop baseline, accuracy@0.5"), for the intro's
    summary figure.

    The chapter's first cell shows it (glue resolves names defined further down the page):

        ```{glue:md} verdict
        :format: myst
        ```

    The same verdict is glued as JSON (``verdicts.RECORD_NAME``); the book build gathers the
    records of every chapter into the intro page (``verdicts.write_verdict_page``).
    """
    from IPython.display import Markdown
    from myst_nb import glue as myst_glue

    text = (f":::{{admonition}} Verdict\n:class: tip\n**Question.** {question}\n\n"
            f"**This build.** {answer}\n\n**The study.** {study}\n:::")
    myst_glue(name, Markdown(text), display=False)
    myst_glue(RECORD_NAME, RecordText(verdict_record(question, answer, study, difference,
                                                     compared)),
              display=False)


def glue_figure(name: str, fig: Any, dpi: int = 100) -> None:
    """Glue a matplotlib figure as a PNG under ``name`` and close it.

    The page shows it where the prose places a numbered, captioned ``{glue:figure}`` directive
    with the same name (and its alt text), and the prose refers to it with ``{numref}``.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image
    from myst_nb import glue as myst_glue

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    myst_glue(name, Image(data=buffer.getvalue(), format="png"), display=False)


def show_figure(fig: Any, dpi: int = 100) -> None:
    """Display a matplotlib figure as a PNG and close it, whatever the matplotlib backend.

    Rendering the PNG here (instead of relying on the inline backend) keeps chapters working
    under ``MPLBACKEND=Agg`` and gives one ``image/png`` output per figure.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))



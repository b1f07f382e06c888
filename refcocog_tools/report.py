"""Build the report: execute every chapter with papermill, then build the Jupyter Book.

Chapter sources are jupytext ``py:percent`` files ``notebooks/NN_<idea>.py``. ``build``

1. reads the chapter list from ``_toc.yml`` (entries under ``book/chapters/``);
2. converts each source to a fresh notebook in ``book/chapters/`` (the build area);
3. executes it there with papermill, with the parameters given on the command line
   (kernel ``python3``, working directory ``notebooks/`` for every chapter, as under nbval);
4. runs ``jupyter-book build . -W`` (warnings are errors; the book never executes anything
   itself, so it shows exactly what step 3 computed).

``regen-baselines`` executes every chapter with its defaults (the embedded synthetic dataset and
untrained embedded models) and writes the executed notebooks back to ``notebooks/NN_<idea>.ipynb``,
paired with their ``.py`` sources: those files are the nbval regression baselines of ``make test``.

The module also holds the small helpers chapters call: ``resolve_data_root``,
``provenance_note`` (the visible statement of where a page's numbers come from),
``show_figure`` and ``seed_everything``.

Usage::

    python -m refcocog_tools.report build [-p NAME VALUE ...] [--chapters 01_dataset ...]
    python -m refcocog_tools.report regen-baselines [--chapters ...]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from .dataset import is_synthetic as dataset_is_synthetic

CHAPTER_DIR = Path("book") / "chapters"  # the build area, relative to the book root
SOURCE_DIR = Path("notebooks")
KERNEL = "python3"
PAIRING = "ipynb,py:percent"
# What every chapter's parameters cell defines (chapters may add their own).
COMMON_PARAMETERS = ("data_root", "clip", "proposals", "device", "limit", "seed")
# Deterministic kernels unless the caller (the Makefile) already chose.
_KERNEL_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "YOLO_OFFLINE": "1", "TQDM_DISABLE": "1"}


class ReportError(RuntimeError):
    """A chapter is missing or failed, or the book did not build; the message says which."""


# ----------------------------------------------------------------------------------------------
# Chapters
# ----------------------------------------------------------------------------------------------
def find_root(start: Path | None = None) -> Path:
    """The book root: the nearest directory holding ``_toc.yml``, from ``start`` (cwd) upwards,
    else the checkout this module lives in."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "_toc.yml").is_file():
            return candidate
    package_root = Path(__file__).resolve().parents[1]
    if (package_root / "_toc.yml").is_file():
        return package_root
    raise ReportError(f"no _toc.yml found in {here} or above: run from the repository root")


def _toc_files(node: Any) -> Iterable[str]:
    """Every ``file`` entry of a jb-book table of contents, depth first, in order."""
    if isinstance(node, dict):
        if isinstance(node.get("file"), str):
            yield node["file"]
        if isinstance(node.get("root"), str):
            yield node["root"]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                yield from _toc_files(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_files(child)


def toc_chapters(root: Path) -> list[str]:
    """Names (``NN_<idea>``) of the executed chapters in ``_toc.yml`` order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    prefix = CHAPTER_DIR.as_posix() + "/"
    names = []
    for entry in _toc_files(toc):
        entry = entry.removesuffix(".ipynb")
        if entry.startswith(prefix):
            names.append(entry[len(prefix):])
    return names


def chapter_source(root: Path, name: str) -> Path:
    """``notebooks/<name>.py``; ReportError when it does not exist."""
    path = root / SOURCE_DIR / f"{name}.py"
    if not path.is_file():
        raise ReportError(f"chapter {name}: source {path.relative_to(root)} not found "
                          "(_toc.yml lists it)")
    return path


def source_to_notebook(path: Path) -> Any:
    """Read a ``py:percent`` source as a notebook with the python3 kernel and stable cell ids."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)
    # Ids that only depend on position keep regenerated baselines free of random churn.
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:03d}"
    return nb


def parameters_cell_index(nb: Any) -> int | None:
    """Index of the cell tagged ``parameters`` (papermill's convention), or None."""
    for index, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return index
    return None


def parse_value(text: str) -> Any:
    """A command-line parameter value: int, float, bool or None when it reads as one, else str.

    Paths and model names stay strings; ``-p limit 0`` becomes the integer 0.
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ----------------------------------------------------------------------------------------------
# Chapter parameters
# ----------------------------------------------------------------------------------------------
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
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__",
                                                                 str(annotation))


def _imported_names(cell_sources: Sequence[str]) -> set[str]:
    """Names the kernel's executed cells (IPython's ``In``) bound by import statements: the
    header cell imports constants (``SPLITS``) that are not parameters."""
    import ast

    names = set()
    for source in cell_sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def check_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The chapter's parameters from its namespace, checked against its parameters cell.

    Every parameter is declared with a type hint (``limit: int = 0``), so the declared names and
    types are the namespace's ``__annotations__``. A name that is defined but not declared (a
    misspelt ``-p limt 5`` injected by papermill) or a value of the wrong type (``-p limit ten``)
    raises ReportError naming the parameter, before the chapter does any work.
    """
    declared = {name: _annotation_text(a)
                for name, a in namespace.get("__annotations__", {}).items()}
    if not declared:
        raise ReportError("the chapter declares no parameters: its parameters cell needs type "
                          "hints (limit: int = 0)")
    imported = _imported_names(namespace.get("In") or [])
    unknown = sorted(
        name for name, value in namespace.items()
        if not name.startswith("_") and name not in _KERNEL_NAMES and name not in declared
        and name not in imported
        and not callable(value) and not isinstance(value, types.ModuleType)
    )
    if unknown:
        raise ReportError(f"unknown parameter(s) {', '.join(unknown)}: this chapter's parameters "
                          f"are {', '.join(declared)}")
    values = {}
    for name, annotation in declared.items():
        if name not in namespace:
            raise ReportError(f"parameter {name} is declared but has no value")
        value = namespace[name]
        if not _type_accepts(annotation, value):
            raise ReportError(f"parameter {name} must be {annotation}, got {value!r} "
                              f"({type(value).__name__})")
        values[name] = value
    return values


def declared_parameters(root: Path, name: str) -> dict[str, str]:
    """The parameters a chapter's source declares, name to type, as papermill reads them."""
    from papermill.translators import PythonTranslator

    nb = source_to_notebook(chapter_source(root, name))
    index = parameters_cell_index(nb)
    if index is None:
        raise ReportError(f"chapter {name}: no cell tagged 'parameters' in its source")
    return {p.name: p.inferred_type_name for p in PythonTranslator.inspect(nb.cells[index])}


def execute_chapter(root: Path, name: str, parameters: dict[str, Any], out_dir: Path) -> Path:
    """Convert and execute one chapter into ``out_dir/<name>.ipynb``; return that path."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb = source_to_notebook(chapter_source(root, name))
    if parameters_cell_index(nb) is None:
        raise ReportError(f"chapter {name}: no cell tagged 'parameters' in its source")
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh = out_dir / f"{name}.ipynb"
    nbformat.write(nb, fresh)
    for key, value in _KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    try:
        papermill.execute_notebook(
            str(fresh), str(fresh), parameters=parameters, kernel_name=KERNEL,
            cwd=str(root / SOURCE_DIR), progress_bar=False, log_output=False,
            request_save_on_cell_execute=False,
        )
    except PapermillExecutionError as err:
        raise ReportError(
            f"chapter {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
            f"the partly executed notebook is {fresh.relative_to(root)}"
        ) from err
    return fresh


def clean_executed(nb: Any, pair: bool) -> Any:
    """Drop run-specific metadata (papermill paths and timings, execution timestamps).

    With ``pair`` the notebook gets the jupytext pairing with its ``.py`` source.
    """
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]  # folded, like the parameters cell
    if pair:
        nb.metadata["jupytext"] = {"formats": PAIRING}
    return nb


def execute_all(root: Path, names: Sequence[str], parameters: dict[str, dict[str, Any]],
                out_dir: Path, log: Any = sys.stdout) -> list[Path]:
    """Execute every chapter in order, each with its ``parameters[name]``; ReportError names
    the first that fails."""
    import nbformat

    done = []
    for index, name in enumerate(names, 1):
        started = time.perf_counter()
        path = execute_chapter(root, name, parameters.get(name, {}), out_dir)
        nb = clean_executed(nbformat.read(path, as_version=4), pair=False)
        nbformat.write(nb, path)
        print(f"[{index}/{len(names)}] {name}: executed in "
              f"{time.perf_counter() - started:.1f} s", file=log, flush=True)
        done.append(path)
    return done


def build_book(root: Path) -> None:
    """``jupyter-book build`` of the whole book, warnings as errors, output in book/_build."""
    exe = Path(sys.executable).with_name("jupyter-book")
    command = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"),
               "build", str(root), "--path-output", str(root / "book"), "-W", "--all"]
    result = subprocess.run(command, cwd=root, check=False)
    if result.returncode != 0:
        raise ReportError(f"jupyter-book build failed (exit {result.returncode}); "
                          "warnings count as errors (-W), see the log above")


def chapter_parameters(root: Path, names: Sequence[str],
                       parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per chapter, the given parameters it declares; ReportError for a parameter that none of
    ``names`` declares (a misspelt ``-p limt 5`` stops before anything runs)."""
    declared = {name: declared_parameters(root, name) for name in names}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ReportError(f"unknown parameter(s) {', '.join(unknown)}: no chapter of "
                          f"{', '.join(names)} declares them (known: {', '.join(sorted(known))})")
    return {name: {k: v for k, v in parameters.items() if k in declared[name]}
            for name in names}


def build(root: Path, parameters: dict[str, Any], chapters: Sequence[str] | None = None,
          book: bool = True) -> Path:
    """Execute the chapters with ``parameters`` and build the book; return the HTML index.

    Each chapter gets the parameters it declares: ``-p ablations False`` reaches chapter 09
    and no other.
    """
    names = list(chapters) if chapters else toc_chapters(root)
    per_chapter = chapter_parameters(root, names, parameters)
    started = time.perf_counter()
    execute_all(root, names, per_chapter, root / CHAPTER_DIR)
    if book:
        build_book(root)
    print(f"report built in {time.perf_counter() - started:.1f} s: "
          f"{(root / 'book' / '_build' / 'html' / 'index.html').relative_to(root)}")
    return root / "book" / "_build" / "html" / "index.html"


def regen_baselines(root: Path, chapters: Sequence[str] | None = None) -> list[Path]:
    """Execute with defaults and write the executed notebooks to ``notebooks/`` (paired)."""
    import nbformat

    names = list(chapters) if chapters else toc_chapters(root)
    written = []
    for path in execute_all(root, names, {name: {} for name in names}, root / CHAPTER_DIR):
        nb = clean_executed(nbformat.read(path, as_version=4), pair=True)
        target = root / SOURCE_DIR / path.name
        nbformat.write(nb, target)
        written.append(target)
        print(f"baseline written: {target.relative_to(root)}")
    return written


# ----------------------------------------------------------------------------------------------
# Helpers the chapters call
# ----------------------------------------------------------------------------------------------
def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """The data root a chapter uses: the embedded synthetic dataset when empty."""
    if not data_root:
        from .minidata import default_data_root

        return default_data_root()
    return Path(data_root).expanduser()


class ProvenanceNote:
    """A visible statement of where a page's numbers come from.

    Renders as a MyST admonition in the book (``text/markdown``) and as plain text elsewhere
    (``text/plain``, which nbval compares).
    """

    def __init__(self, title: str, body: str, kind: str) -> None:
        self.title = title
        self.body = body
        self.kind = kind  # "warning" or "note"

    def _repr_markdown_(self) -> str:
        return f"```{{admonition}} {self.title}\n:class: {self.kind}\n{self.body}\n```\n"

    def __repr__(self) -> str:
        return f"{self.kind.upper()}: {self.title}\n{self.body}"

    def __str__(self) -> str:
        return repr(self)


def provenance_note(data_root: str | os.PathLike[str] | None,
                    backbones_untrained: bool | None = None,
                    models: str = "") -> ProvenanceNote:
    """What the numbers on a page are, given the run's data root and models.

    ``backbones_untrained`` is None for a page that uses no model, else whether any model used
    (CLIP backbone, detector, regressor) has untrained weights. ``models`` names them.
    """
    synthetic = not data_root or dataset_is_synthetic(resolve_data_root(data_root))
    named = f" ({models})" if models else ""
    if synthetic:
        data = ("the embedded **synthetic** dataset (pictures of drawn shapes with generated "
                "expressions, written by `refcocog_tools.minidata`)")
    else:
        data = "the RefCOCOg data found at the `data_root` parameter of this run"
    if backbones_untrained is None:
        model_text = "No model is used on this page."
    elif backbones_untrained:
        model_text = (f"The models{named} are **untrained**: their weights are random, so their "
                      "outputs carry no visual or linguistic knowledge.")
    else:
        model_text = f"The models{named} use pretrained weights."
    if synthetic or backbones_untrained:
        title = "Computed here on a smoke-test configuration: not a RefCOCOg result"
        meaning = ("These numbers check that the code runs end to end and is deterministic; "
                   "they say nothing about RefCOCOg or about how well any method works. "
                   "The original study's numbers are quoted separately, with their source.")
        if not synthetic:
            meaning = ("The data is real, but with untrained models the numbers say nothing "
                       "about how well any method works.")
        return ProvenanceNote(title, f"Every number on this page was computed by this build "
                              f"from {data}. {model_text} {meaning}", "warning")
    title = "Computed here on RefCOCOg with pretrained weights"
    body = (f"Every number on this page was computed by this build from {data}. {model_text} "
            "Compare them with the original study's numbers, which are quoted separately "
            "with their source.")
    return ProvenanceNote(title, body, "note")


class Chapter:
    """What a chapter works on, opened once by ``open_chapter``: its checked parameters, the
    data root, the split's dataset (read on first use), the models and the provenance box."""

    def __init__(self, params: dict[str, Any], root: Path, backbones: list[Any], proposer: Any,
                 note: ProvenanceNote | None) -> None:
        self.params = params
        self.root = root
        self.backbones = backbones
        self.proposer = proposer
        self.note = note

    @cached_property
    def dataset(self) -> Any:
        """The RefCOCOg split of the ``split`` parameter (test when the chapter has none),
        expression view."""
        from .dataset import RefCOCOg

        return RefCOCOg(self.root, split=self.params.get("split", "test"),
                        dataset=self.params.get("dataset", "refcocog"),
                        split_by=self.params.get("split_by") or None)

    @property
    def run_label(self) -> str:
        """How captions name this page's computed numbers, e.g. "this build: synthetic
        dataset, CLIP tiny-rn (untrained)"."""
        data = "synthetic dataset" if dataset_is_synthetic(self.root) else "RefCOCOg"
        clips = ",".join(b.name for b in self.backbones)
        untrained = any(b.untrained for b in self.backbones)
        return (f"this build: {data}, CLIP {clips} "
                f"({'untrained' if untrained else 'pretrained'})")


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
    from .backbones import load_clips
    from .evaluate import check_proposer
    from .proposals import make_proposer

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
    backbones = load_clips(clip, device=device) if clip else []
    proposer = make_proposer(proposals, device=device) if proposals else None
    chapter = Chapter(params, root, backbones, proposer, None)
    if proposer is not None:
        check_proposer(proposer, chapter.dataset)
    named = [f"CLIP {clip}"] * bool(clip) + [f"proposals {proposals}"] * bool(proposals)
    untrained = (any(b.untrained for b in backbones)
                 or bool(getattr(proposer, "untrained", False))) if named else None
    chapter.note = provenance_note(data_root, backbones_untrained=untrained,
                                   models="; ".join(named))
    return chapter


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the study's ``np.random.seed = 42`` seeded nothing).

    Every chapter calls it first, so it also sets the one display option the pages need:
    table cells are shown whole (a source column cut with "..." would hide where a number
    comes from).
    """
    import numpy as np
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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refcocog_tools.report",
        description="Execute the report's chapters and build the Jupyter Book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_p = sub.add_parser("build", help="execute every chapter, then build the book")
    build_p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                         metavar=("NAME", "VALUE"),
                         help="chapter parameter, e.g. -p data_root /data/refcocog")
    build_p.add_argument("--chapters", nargs="+", help="only these chapters (NN_<idea>)")
    build_p.add_argument("--no-book", action="store_true", help="execute only, skip the book")
    regen = sub.add_parser("regen-baselines",
                           help="execute with defaults into notebooks/*.ipynb (nbval baselines)")
    regen.add_argument("--chapters", nargs="+", help="only these chapters (NN_<idea>)")
    for p in (build_p, regen):
        p.add_argument("--root", type=Path, default=None, help="book root (default: find it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m refcocog_tools.report``."""
    args = _parser().parse_args(argv)
    try:
        root = find_root(args.root)
        if args.command == "build":
            parameters = {name: parse_value(value) for name, value in args.parameter}
            build(root, parameters, args.chapters, book=not args.no_book)
        else:
            regen_baselines(root, args.chapters)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the report: execute every chapter with papermill, then build the Jupyter Book.

Chapter sources are jupytext ``py:percent`` files ``notebooks/NN_<idea>.py``. ``build``

1. reads the chapter list from ``_toc.yml`` (entries under ``book/chapters/``);
2. converts each source to a fresh notebook in ``book/chapters/`` (the build area);
3. executes it there with papermill, with the parameters given on the command line
   (kernel ``python3``, working directory ``notebooks/`` for every chapter, as under nbval);
4. runs ``jupyter-book build . -W`` (warnings are errors; the book never executes anything
   itself, so it shows exactly what step 3 computed).

``regen-baselines`` executes every chapter with its defaults (the embedded synthetic dataset and
embedded models, the toy CLIP trained on the synthetic world) and writes the executed notebooks
back to ``notebooks/NN_<idea>.ipynb``, paired with their ``.py`` sources: those files are the
nbval regression baselines of ``make test``.

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
import tempfile
import time
import types
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from . import results
from .dataset import is_synthetic as dataset_is_synthetic
from .results import ProvenanceNote

CHAPTER_DIR = Path("book") / "chapters"  # the build area, relative to the book root
SOURCE_DIR = Path("notebooks")
KERNEL = "python3"
PAIRING = "ipynb,py:percent"
# A folder for the chapters' results files that overrides results/ of the book root when a
# chapter's results_dir parameter is empty (the nbval runs and baselines use fresh ones).
RESULTS_ENV = "REFCOCOG_TOOLS_RESULTS"
# What every chapter's parameters cell defines (chapters may add their own).
COMMON_PARAMETERS = ("data_root", "clip", "proposals", "device", "limit", "seed")
# What the book keeps of papermill's record of a run (not its paths).
_RUN_RECORD = ("start_time", "end_time", "duration", "exception", "parameters")
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
    """A type hint as its source text: ``int``, ``list[str]``, ``Optional[float]``."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")  # list[float], typing.Optional[float]


def _bound_by_import(name: str, value: Any) -> bool:
    """Whether ``value`` is the very object a loaded module holds under ``name``: a constant the
    header cell imported (``from refcocog_tools.dataset import SPLITS``), not a parameter. (The
    kernel's cell history ``In`` cannot tell: nbval executes cells without storing history.)"""
    for module_name, module in list(sys.modules.items()):
        if module_name == "__main__" or module is None:
            continue
        held = getattr(module, "__dict__", {}).get(name, _NOT_HELD)
        if held is value:
            return True
    return False


_NOT_HELD = object()


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
    unknown = sorted(
        name for name, value in namespace.items()
        if not name.startswith("_") and name not in _KERNEL_NAMES and name not in declared
        and not callable(value) and not isinstance(value, types.ModuleType)
        and not _bound_by_import(name, value)
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

    With ``pair`` the notebook gets the jupytext pairing with its ``.py`` source. Without it
    (the book's build area) the notebook keeps papermill's record of the run (start, end,
    duration, exception, parameters), which the provenance page reads, without its paths.
    """
    record = nb.metadata.pop("papermill", None) or {}
    if not pair:
        nb.metadata["papermill"] = {key: record[key] for key in _RUN_RECORD if key in record}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]  # folded, like the parameters cell
    if pair:
        nb.metadata["jupytext"] = {"formats": PAIRING}
    return nb


# ----------------------------------------------------------------------------------------------
# Incremental builds and the execution record
# ----------------------------------------------------------------------------------------------
def package_fingerprint() -> str:
    """SHA-256 of the package's sources and version: any change to the code chapters call."""
    import hashlib

    from . import __version__

    digest = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _reads_results(source: str) -> bool:
    """Whether a chapter reads the results files other chapters write (chapter 10)."""
    return ".stored_results(" in source


def chapter_hash(root: Path, name: str, parameters: dict[str, Any],
                 package: str | None = None) -> str:
    """What an executed chapter depends on: its source, its parameters and the package, plus
    the results files when it reads them. Equal hashes: nothing to re-execute."""
    import hashlib
    import json

    source = chapter_source(root, name).read_text(encoding="utf-8")
    digest = hashlib.sha256()
    for part in (source, json.dumps(parameters, sort_keys=True, default=str),
                 package or package_fingerprint()):
        digest.update(part.encode() + b"\0")
    if _reads_results(source):
        results_dir = Path(parameters.get("results_dir") or root / "results")
        for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def hash_path(out_dir: Path, name: str) -> Path:
    """The hash kept beside an executed notebook: ``<name>.ipynb.sha256``."""
    return out_dir / f"{name}.ipynb.sha256"


def is_current(out_dir: Path, name: str, digest: str) -> bool:
    """Whether ``out_dir/<name>.ipynb`` was executed from exactly these inputs."""
    stamp = hash_path(out_dir, name)
    return ((out_dir / f"{name}.ipynb").is_file() and stamp.is_file()
            and stamp.read_text(encoding="utf-8").strip() == digest)


def _footer_cell(root: Path, name: str, nb: Any) -> Any:
    """The last cell of a page in the book: when, how long, with what it was executed."""
    import nbformat

    record = nb.metadata.get("papermill", {})
    build = nb.metadata.get("refcocog_tools", {})
    params = record.get("parameters") or {}
    shown = ", ".join(f"`{k}={v!r}`" for k, v in params.items()) or "the defaults"
    status = "failed" if record.get("exception") else "completed"
    seconds = record.get("duration")
    took = f" in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
    text = (f"```{{admonition}} How this page was made\n:class: dropdown\n"
            f"Executed by papermill{took} ({status}), started "
            f"{str(record.get('start_time', '?'))[:19].replace('T', ' ')} UTC, from "
            f"`{SOURCE_DIR.as_posix()}/{name}.py` with refcocog-tools "
            f"{build.get('version', '?')}, commit `{(build.get('commit') or 'unknown')[:12]}`. "
            f"Parameters: {shown}. The record of every chapter is on the page "
            "{doc}`../provenance`.\n```")
    return nbformat.v4.new_markdown_cell(text, metadata={"tags": ["provenance-footer"]})


def execute_all(root: Path, names: Sequence[str], parameters: dict[str, dict[str, Any]],
                out_dir: Path, log: Any = None, incremental: bool = False,
                force: Sequence[str] = (), record: bool = False) -> list[Path]:
    """Execute every chapter in order, each with its ``parameters[name]``; ReportError names
    the first that fails.

    ``incremental``: a chapter whose executed notebook and hash (``chapter_hash``) are current
    is not executed again, unless it is named in ``force``. ``record``: keep papermill's run
    record, the build's commit and version and a footer cell in each executed notebook.
    """
    import nbformat

    from . import __version__
    from .results import git_commit

    log = log or sys.stdout
    package = package_fingerprint()
    commit = git_commit() if record else None
    done = []
    for index, name in enumerate(names, 1):
        path = out_dir / f"{name}.ipynb"
        digest = chapter_hash(root, name, parameters.get(name, {}), package)
        if incremental and name not in force and is_current(out_dir, name, digest):
            print(f"[{index}/{len(names)}] {name}: up to date (source, parameters and "
                  "package unchanged)", file=log, flush=True)
            done.append(path)
            continue
        hash_path(out_dir, name).unlink(missing_ok=True)
        started = time.perf_counter()
        path = execute_chapter(root, name, parameters.get(name, {}), out_dir)
        nb = clean_executed(nbformat.read(path, as_version=4), pair=False)
        if record:
            nb.metadata["refcocog_tools"] = {"version": __version__, "commit": commit,
                                             "hash": digest}
            nb.cells.append(_footer_cell(root, name, nb))
        else:
            nb.metadata.pop("papermill", None)
        nbformat.write(nb, path)
        # Hashed after the run: a chapter that reads results files sees the ones just written.
        hash_path(out_dir, name).write_text(
            chapter_hash(root, name, parameters.get(name, {}), package) + "\n",
            encoding="utf-8")
        print(f"[{index}/{len(names)}] {name}: executed in "
              f"{time.perf_counter() - started:.1f} s", file=log, flush=True)
        done.append(path)
    return done


def on_embedded_defaults(parameters: dict[str, Any]) -> bool:
    """Whether a chapter's parameters select the embedded synthetic data or an untrained
    embedded model (the default ``tiny-*`` backbones and detector)."""
    from .untrained_models import TINY_CLIP_CONFIGS

    data_root = parameters.get("data_root", "")
    if not data_root or dataset_is_synthetic(resolve_data_root(data_root)):
        return True
    clips = str(parameters.get("clip", "tiny-rn")).split(",")
    return (any(c.strip() in TINY_CLIP_CONFIGS for c in clips)
            or str(parameters.get("proposals", "")).startswith("tiny-"))


def write_provenance_page(root: Path, names: Sequence[str], out_dir: Path) -> Path:
    """``book/provenance.md``: the execution record of every chapter of this build."""
    import nbformat

    from . import __version__
    from .results import git_commit

    lines = ["# How this book was built", "",
             f"Built on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from commit "
             f"`{git_commit() or 'unknown (not a git checkout)'}` with refcocog-tools "
             f"{__version__}. Each chapter was executed by papermill from its source in "
             "`notebooks/`; `make book` re-executes a chapter only when its source, its "
             "parameters or the package changed, so a chapter's run can be older than the "
             "build. Parameters not listed are the chapter's defaults.", "",
             "| chapter | status | runtime | executed (UTC) | commit | parameters |",
             "|---|---|---|---|---|---|"]
    for name in names:
        nb = nbformat.read(out_dir / f"{name}.ipynb", as_version=4)
        record = nb.metadata.get("papermill", {})
        build = nb.metadata.get("refcocog_tools", {})
        params = ", ".join(f"`{k}={v!r}`" for k, v in (record.get("parameters") or {}).items())
        seconds = record.get("duration")
        lines.append(
            f"| {{doc}}`chapters/{name}` | "
            f"{'failed' if record.get('exception') else 'completed'} | "
            f"{f'{seconds:.1f} s' if isinstance(seconds, int | float) else '?'} | "
            f"{str(record.get('start_time', '?'))[:19].replace('T', ' ')} | "
            f"`{(build.get('commit') or 'unknown')[:12]}` | {params or 'defaults'} |")
    page = root / "book" / "provenance.md"
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return page


def book_config(root: Path, defaults: bool) -> Path:
    """The book's ``_config.yml`` with this build's banner and footer, written into the build
    area: the announcement when the build ran on the embedded defaults, and the commit,
    version and date at the foot of every page (plus the repository button when the checkout
    has an ``origin`` remote)."""
    import yaml

    from . import __version__
    from .results import git_commit

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    html = config.setdefault("html", {})
    if defaults:
        html["announcement"] = (
            "Built on the embedded defaults (a synthetic dataset; toy weights trained on the "
            "synthetic world or untrained models): no number computed in this book is a "
            "RefCOCOg result. The study's numbers are quoted as reported.")
    commit = git_commit()
    html["extra_footer"] = (
        f"<p>Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with refcocog-tools "
        f"{__version__} from commit <code>{(commit or 'unknown')[:12]}</code>; each chapter's "
        "record is on the page <em>How this book was built</em>.</p>")
    try:
        remote = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root,
                                capture_output=True, text=True, timeout=5, check=True)
        url = remote.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    if url.startswith(("https://", "http://")):
        config["repository"] = {"url": url.removesuffix(".git"), "branch": "main"}
        html["use_repository_button"] = True
        html["use_edit_page_button"] = False
    path = root / CHAPTER_DIR / "_config.build.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def build_book(root: Path, config: Path | None = None) -> None:
    """``jupyter-book build`` of the whole book, warnings as errors, output in book/_build."""
    exe = Path(sys.executable).with_name("jupyter-book")
    command = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"),
               "build", str(root), "--path-output", str(root / "book"), "-W", "--all"]
    if config is not None:
        command += ["--config", str(config)]
    result = subprocess.run(command, cwd=root, check=False)
    if result.returncode != 0:
        raise ReportError(f"jupyter-book build failed (exit {result.returncode}); "
                          "warnings count as errors (-W), see the log above")


def _declared_defaults(root: Path, name: str) -> dict[str, Any]:
    """A chapter's parameter defaults, read from its source (no code runs)."""
    import ast

    nb = source_to_notebook(chapter_source(root, name))
    values = {}
    for node in ast.parse(nb.cells[parameters_cell_index(nb) or 0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            try:
                values[node.target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


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
          book: bool = True, force: bool = False) -> Path:
    """Execute the chapters with ``parameters`` and build the book; return the HTML index.

    Each chapter gets the parameters it declares: ``-p ablations False`` reaches chapter 09
    and no other. A chapter is executed only when its executed notebook is missing or out of
    date (``chapter_hash``), when ``force``, or when it is named in ``chapters`` (with the
    book, the other chapters are brought up to date as usual; without it, only the named
    chapters are considered).
    """
    names = toc_chapters(root)
    unknown_chapters = sorted(set(chapters or ()) - set(names))
    if unknown_chapters:
        raise ReportError(f"no chapter {', '.join(unknown_chapters)} in _toc.yml "
                          f"(chapters: {', '.join(names)})")
    if chapters and not book:
        names = [name for name in names if name in chapters]
    per_chapter = chapter_parameters(root, names, parameters)
    out_dir = root / CHAPTER_DIR
    started = time.perf_counter()
    execute_all(root, names, per_chapter, out_dir, incremental=not force, force=chapters or (),
                record=True)
    if book:
        write_provenance_page(root, names, out_dir)
        defaults = any(on_embedded_defaults({**_declared_defaults(root, n), **per_chapter[n]})
                       for n in names)
        build_book(root, book_config(root, defaults))
    print(f"report built in {time.perf_counter() - started:.1f} s: "
          f"{(root / 'book' / '_build' / 'html' / 'index.html').relative_to(root)}")
    return root / "book" / "_build" / "html" / "index.html"


def regen_baselines(root: Path, chapters: Sequence[str] | None = None) -> list[Path]:
    """Execute with defaults and write the executed notebooks to ``notebooks/`` (paired)."""
    import nbformat

    names = list(chapters) if chapters else toc_chapters(root)
    written = []
    # A baseline must not depend on results files an earlier build left in results/: the
    # chapters write to and read from a fresh folder (named results/, as the page prints it).
    fresh_results = Path(tempfile.mkdtemp(prefix="refcocog-baselines-")) / "results"
    previous = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = str(fresh_results)
    try:
        executed = execute_all(root, names, {name: {} for name in names}, root / CHAPTER_DIR)
    finally:
        if previous is None:
            os.environ.pop(RESULTS_ENV, None)
        else:
            os.environ[RESULTS_ENV] = previous
        shutil.rmtree(fresh_results.parent, ignore_errors=True)
    for path in executed:
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
        """The split of the ``split`` parameter (test when the chapter has none) of the
        ``dataset`` / ``split_by`` parameters' dataset (RefCOCOg umd when it has none),
        expression view."""
        return self.open_split(self.params.get("split", "test"))

    def open_split(self, split: str, view: str = "expression") -> Any:
        """Another split of this chapter's dataset (the ``dataset`` / ``split_by`` parameters),
        e.g. the training split whose expressions red-circle debiases with."""
        from .dataset import RefCOCOg

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
    build_p.add_argument("--force", action="store_true",
                         help="re-execute every chapter, even those whose source, parameters "
                              "and package are unchanged")
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
            build(root, parameters, args.chapters, book=not args.no_book, force=args.force)
        else:
            regen_baselines(root, args.chapters)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

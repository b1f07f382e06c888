"""Building the report: execute every chapter with papermill, then build the Jupyter Book.

``build``

1. reads the chapter list from ``_toc.yml`` (entries under ``book/chapters/``);
2. converts each source to a fresh notebook in ``book/chapters/`` (the build area);
3. executes it there with papermill, with the parameters given on the command line
   (kernel ``python3``, working directory ``notebooks/`` for every chapter, as under nbval),
   skipping a chapter whose source, parameters and package are unchanged (``chapter_hash``);
4. writes the execution record (``book/provenance.md``, a footer on every page) and runs
   ``jupyter-book build . -W`` (warnings are errors; the book never executes anything itself,
   so it shows exactly what step 3 computed).

``regen_baselines`` executes every chapter with its defaults (the embedded synthetic dataset and
the default models) and writes the executed notebooks back to ``notebooks/NN_<idea>.ipynb``,
paired with their ``.py`` sources: those files are the nbval regression baselines of
``make test``. The command line is ``report``'s (``python -m refcocog_tools.report.chapter``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refcocog_tools import __version__
from refcocog_tools.data.dataset import is_synthetic as dataset_is_synthetic
from refcocog_tools.engine.results import git_commit
from refcocog_tools.models.clip_loading import TOY_CLIPS
from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS
from refcocog_tools.report.chapter_files import (
    CHAPTER_DIR,
    KERNEL,
    SOURCE_DIR,
    ReportError,
    chapter_source,
    declared_defaults,
    declared_parameters,
    parameters_cell_index,
    resolve_data_root,
    source_to_notebook,
    toc_chapters,
)
from refcocog_tools.report.execution_cache import (
    RESULTS_ENV,
    changed_inputs,
    chapter_hash,
    chapter_inputs,
    hash_path,
    inputs_path,
    is_current,
    package_fingerprint,
    run_path,
    upstream_runs,
)
from refcocog_tools.report.repository import commit_text, repository_branch, repository_url
from refcocog_tools.report.verdicts import write_verdict_page
from refcocog_tools.toy.verdict_world import VERDICT_IMAGES

PAIRING = "ipynb,py:percent"
# What the book keeps of papermill's record of a run (not its paths).
_RUN_RECORD = ("start_time", "end_time", "duration", "exception", "parameters")
# Deterministic kernels unless the caller (the Makefile) already chose.
_KERNEL_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "YOLO_OFFLINE": "1", "TQDM_DISABLE": "1"}


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
    source = f"{SOURCE_DIR.as_posix()}/{name}.py"
    # The jupytext source is the page's source: a download from the build, and the file in
    # the repository when one is configured.
    url = repository_url(root)
    in_repository = (f" ([in the repository]({url}/blob/{repository_branch(root)}/{source}))"
                     if url else "")
    text = (f"```{{admonition}} How this page was made\n:class: dropdown\n"
            f"Executed by papermill{took} ({status}), started "
            f"{str(record.get('start_time', '?'))[:19].replace('T', ' ')} UTC, from "
            f"{{download}}`{source} <../../{source}>`{in_repository} with refcocog-tools "
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

    log = log or sys.stdout
    package = package_fingerprint()
    commit = git_commit() if record else None
    done = []
    for index, name in enumerate(names, 1):
        path = out_dir / f"{name}.ipynb"
        params = parameters.get(name, {})
        upstream = upstream_runs(root, name, out_dir)
        parts = chapter_inputs(root, name, params, package, upstream)
        digest = chapter_hash(root, name, params, package, upstream)
        if incremental and name not in force and is_current(out_dir, name, digest):
            print(f"[{index}/{len(names)}] {name}: up to date (source, parameters and "
                  "package unchanged)", file=log, flush=True)
            done.append(path)
            continue
        reason = ("named on the command line" if name in force else
                  ", ".join(changed_inputs(out_dir, name, parts)) or "--force")
        hash_path(out_dir, name).unlink(missing_ok=True)
        started = time.perf_counter()
        path = execute_chapter(root, name, params, out_dir)
        nb = clean_executed(nbformat.read(path, as_version=4), pair=False)
        if record:
            nb.metadata["refcocog_tools"] = {"version": __version__, "commit": commit,
                                             "hash": digest}
            nb.cells.append(_footer_cell(root, name, nb))
        else:
            nb.metadata.pop("papermill", None)
        nbformat.write(nb, path)
        run_path(out_dir, name).write_text(uuid.uuid4().hex + "\n", encoding="utf-8")
        # Hashed after the run: a chapter that reads results files sees the ones just written.
        parts = chapter_inputs(root, name, params, package, upstream)
        inputs_path(out_dir, name).write_text(json.dumps(parts, indent=1, sort_keys=True),
                                              encoding="utf-8")
        hash_path(out_dir, name).write_text(
            chapter_hash(root, name, params, package, upstream) + "\n", encoding="utf-8")
        print(f"[{index}/{len(names)}] {name}: executed in "
              f"{time.perf_counter() - started:.1f} s (why: {reason})",
              file=log, flush=True)
        done.append(path)
    return done


def on_embedded_defaults(parameters: dict[str, Any]) -> bool:
    """Whether a chapter's parameters select the embedded synthetic data or an embedded model:
    an untrained ``tiny-*`` backbone or detector, or a toy CLIP trained on the synthetic world
    (``toy-rn``). Either way its numbers are not RefCOCOg results, whatever the data."""
    data_root = parameters.get("data_root", "")
    if not data_root or dataset_is_synthetic(resolve_data_root(data_root)):
        return True
    clips = str(parameters.get("clip", "tiny-rn")).split(",")
    return (any(c.strip() in TINY_CLIP_CONFIGS or c.strip() in TOY_CLIPS for c in clips)
            or str(parameters.get("proposals", "")).startswith("tiny-"))


def write_provenance_page(root: Path, names: Sequence[str], out_dir: Path) -> Path:
    """``book/provenance.md``: the execution record of every chapter of this build."""
    import nbformat

    lines = ["# How this book was built", "",
             f"Built on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from commit "
             f"{commit_text(root, git_commit())} with refcocog-tools "
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
    version and date at the foot of every page (plus the repository button and the commit as a
    link when a repository is configured, ``repository_url``)."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    html = config.setdefault("html", {})
    if defaults:
        html["announcement"] = (
            "Built on the embedded defaults (a synthetic dataset; toy weights trained on the "
            "synthetic world or untrained models): no number computed in this book is a "
            "RefCOCOg result. The study's numbers are quoted as reported.")
    commit = git_commit()
    url = repository_url(root)
    shown = f"<code>{(commit or 'unknown')[:12]}</code>"
    if url and commit:
        shown = f'<a href="{url}/commit/{commit}">{shown}</a>'
    html["extra_footer"] = (
        f"<p>Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with refcocog-tools "
        f"{__version__} from commit {shown}; each chapter's record is on the page "
        "<em>How this book was built</em>.</p>")
    if url:
        config["repository"] = {**(config.get("repository") or {}), "url": url,
                                "branch": repository_branch(root)}
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
    and no other; a chapter declaring ``verdict_images`` gets ``VERDICT_IMAGES`` unless given
    (its defaults, which nbval runs, keep the small embedded dataset).
    A chapter is executed only when its executed notebook is missing or out of
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
    for name, given in per_chapter.items():  # the book's verdicts use the large world
        if "verdict_images" in declared_parameters(root, name):
            given.setdefault("verdict_images", VERDICT_IMAGES)
    out_dir = root / CHAPTER_DIR
    started = time.perf_counter()
    execute_all(root, names, per_chapter, out_dir, incremental=not force, force=chapters or (),
                record=True)
    if book:
        write_provenance_page(root, names, out_dir)
        write_verdict_page(root, out_dir, names)
        defaults = any(on_embedded_defaults({**declared_defaults(root, n), **per_chapter[n]})
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

"""The execution cache of the book: what an executed chapter depends on, and whether it is
current.

``book_build.execute_all`` re-executes a chapter only when ``chapter_hash`` of its inputs
differs from the hash kept beside its executed notebook (``<name>.ipynb.sha256``). The inputs
are the chapter's source, its parameters and the package's sources; for a chapter that reads
other chapters' results files (chapter 10), also those files and the run ids of the chapters
before it that write them (``<name>.ipynb.run``, fresh at every execution), so it runs again
exactly when one of them did. The parts are kept too (``<name>.ipynb.inputs.json``), so the log
says which part changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from refcocog_tools import __version__
from refcocog_tools.report.chapter_files import CHAPTER_DIR, chapter_source, toc_chapters

# A folder for the chapters' results files that overrides results/ of the book root when a
# chapter's results_dir parameter is empty (the nbval runs and baselines use fresh ones).
RESULTS_ENV = "REFCOCOG_TOOLS_RESULTS"


def package_fingerprint() -> str:
    """SHA-256 of the package's sources and version: any change to the code chapters call."""
    digest = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _reads_results(source: str) -> bool:
    """Whether a chapter reads the results files other chapters write (chapter 10)."""
    return ".stored_results(" in source


def _writes_results(source: str) -> bool:
    return ".save_results(" in source


def results_folder(root: Path, parameters: dict[str, Any]) -> Path:
    """The folder a chapter's results files are in, chosen as ``Chapter.results_dir`` chooses
    it: the ``results_dir`` parameter, else ``$REFCOCOG_TOOLS_RESULTS``, else results/."""
    given = parameters.get("results_dir") or os.environ.get(RESULTS_ENV, "")
    return Path(given).expanduser() if given else root / "results"


def run_path(out_dir: Path, name: str) -> Path:
    """A fresh id per execution of a chapter, ``<name>.ipynb.run``: what a chapter that reads
    its results depends on (the id changes when, and only when, the chapter runs again)."""
    return out_dir / f"{name}.ipynb.run"


def upstream_runs(root: Path, name: str, out_dir: Path | None = None) -> dict[str, str]:
    """The run ids of the chapters before ``name`` in ``_toc.yml`` that write results files,
    for a chapter that reads them; {} for any other chapter."""
    if not _reads_results(chapter_source(root, name).read_text(encoding="utf-8")):
        return {}
    out_dir = out_dir or root / CHAPTER_DIR
    names = toc_chapters(root) if (root / "_toc.yml").is_file() else []
    before = names[:names.index(name)] if name in names else []
    runs = {}
    for writer in before:
        if _writes_results(chapter_source(root, writer).read_text(encoding="utf-8")):
            stamp = run_path(out_dir, writer)
            runs[writer] = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else ""
    return runs


def chapter_inputs(root: Path, name: str, parameters: dict[str, Any],
                   package: str | None = None,
                   upstream: dict[str, str] | None = None) -> dict[str, Any]:
    """What an executed chapter depends on, part by part (each a SHA-256): its source, its
    parameters and the package; for a chapter that reads results files, those files (in the
    folder the chapter reads) and the runs of the chapters before it that write them
    (``upstream_runs``, read from the build area when not given). Nothing else goes in: no
    time, no path of this machine, no cache contents."""
    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    source = chapter_source(root, name).read_text(encoding="utf-8")
    parts: dict[str, Any] = {
        "source": sha(source.encode()),
        "parameters": sha(json.dumps(parameters, sort_keys=True, default=str).encode()),
        "package": package or package_fingerprint(),
    }
    if _reads_results(source):
        folder = results_folder(root, parameters)
        parts["results"] = {path.name: sha(path.read_bytes())
                            for path in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
        parts["upstream"] = (upstream if upstream is not None
                             else upstream_runs(root, name))
    return parts


def chapter_hash(root: Path, name: str, parameters: dict[str, Any],
                 package: str | None = None, upstream: dict[str, str] | None = None) -> str:
    """The digest of ``chapter_inputs``. Equal hashes: nothing to re-execute."""
    parts = chapter_inputs(root, name, parameters, package, upstream)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def hash_path(out_dir: Path, name: str) -> Path:
    """The hash kept beside an executed notebook: ``<name>.ipynb.sha256``."""
    return out_dir / f"{name}.ipynb.sha256"


def inputs_path(out_dir: Path, name: str) -> Path:
    """The parts of the hash (``chapter_inputs``), kept to say why a chapter runs again."""
    return out_dir / f"{name}.ipynb.inputs.json"


def is_current(out_dir: Path, name: str, digest: str) -> bool:
    """Whether ``out_dir/<name>.ipynb`` was executed from exactly these inputs."""
    stamp = hash_path(out_dir, name)
    return ((out_dir / f"{name}.ipynb").is_file() and stamp.is_file()
            and stamp.read_text(encoding="utf-8").strip() == digest)


def changed_inputs(out_dir: Path, name: str, parts: dict[str, Any]) -> list[str]:
    """Which parts of a chapter's inputs differ from those of its last execution ("never
    executed" when there is no record)."""
    try:
        before = json.loads(inputs_path(out_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["never executed"]
    if not (out_dir / f"{name}.ipynb").is_file():
        return ["executed notebook missing"]
    changed = []
    for key in sorted(set(parts) | set(before)):
        if key in ("results", "upstream") and isinstance(parts.get(key), dict):
            old = before.get(key) if isinstance(before.get(key), dict) else {}
            keys = sorted(k for k in set(parts[key]) | set(old)
                          if parts[key].get(k) != old.get(k))
            if keys:
                changed.append(f"{key} ({', '.join(keys)})")
        elif parts.get(key) != before.get(key):
            changed.append(key)
    return changed

"""The book's chapters as files: where the book is, which chapters ``_toc.yml`` lists, their
jupytext sources and the parameters each declares.

Chapter sources are jupytext ``py:percent`` files ``notebooks/NN_<idea>.py``; each has one cell
tagged ``parameters`` (papermill's convention) whose type-hinted assignments are the chapter's
parameters. Nothing here executes a chapter (``book_build`` does) or runs inside one
(``report`` does).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refcocog_tools.data.minidata import default_data_root

CHAPTER_DIR = Path("book") / "chapters"  # the build area, relative to the book root
SOURCE_DIR = Path("notebooks")
KERNEL = "python3"


class ReportError(RuntimeError):
    """A chapter is missing or failed, or the book did not build; the message says which."""


def find_root(start: Path | None = None) -> Path:
    """The book root: the nearest directory holding ``_toc.yml``, from ``start`` (cwd) upwards,
    else the checkout this module lives in."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "_toc.yml").is_file():
            return candidate
    package_root = Path(__file__).resolve().parents[2]
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


def declared_parameters(root: Path, name: str) -> dict[str, str]:
    """The parameters a chapter's source declares, name to type, as papermill reads them."""
    from papermill.translators import PythonTranslator

    nb = source_to_notebook(chapter_source(root, name))
    index = parameters_cell_index(nb)
    if index is None:
        raise ReportError(f"chapter {name}: no cell tagged 'parameters' in its source")
    return {p.name: p.inferred_type_name for p in PythonTranslator.inspect(nb.cells[index])}


def declared_defaults(root: Path, name: str) -> dict[str, Any]:
    """A chapter's parameter defaults, read from its source (no code runs)."""
    nb = source_to_notebook(chapter_source(root, name))
    values = {}
    for node in ast.parse(nb.cells[parameters_cell_index(nb) or 0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            try:
                values[node.target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """The data root a chapter uses: the embedded synthetic dataset when empty."""
    if not data_root:
        return default_data_root()
    return Path(data_root).expanduser()

"""The package's structure: no import circle between its modules (the layers contract itself
is import-linter's, run by ``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import networkx

import refcocog_tools


def import_circles(package: str) -> list[list[str]]:
    """Every circle of direct imports between ``package``'s modules."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges = networkx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    return [circle for circle in networkx.simple_cycles(edges) if len(circle) > 1]


def test_no_module_imports_itself_through_others() -> None:
    circles = import_circles("refcocog_tools")
    assert circles == [], f"import circles: {circles[:5]}"


def test_the_check_sees_a_circle(tmp_path, monkeypatch) -> None:
    package = tmp_path / "circular_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circular_pkg import b\n")
    (package / "b.py").write_text("from circular_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    circles = [sorted(circle) for circle in import_circles("circular_pkg")]
    assert circles == [["circular_pkg.a", "circular_pkg.b"]]


def test_every_public_name_is_importable_from_the_package() -> None:
    import refcocog_tools

    for name in refcocog_tools.__all__:
        assert getattr(refcocog_tools, name) is not None, name
    assert refcocog_tools.ground.__module__ == "refcocog_tools.engine.ground"


# The only imports a function may make itself: optional or slow dependencies a light command
# never needs (the book's packages, plotting, tables, the detector, statistics, the browser),
# and torch in core.files, which every command imports and most never need torch for.
LAZY_IMPORTS = {"matplotlib", "pandas", "ultralytics", "nbformat", "papermill", "jupytext",
                "myst_nb", "IPython", "yaml", "scipy", "playwright"}


def function_level_imports(package: Path) -> list[str]:
    """``file:line:module`` of each import inside a function, guarded ones (``try``) aside."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            guarded = {id(sub) for block in ast.walk(node) if isinstance(block, ast.Try)
                       for statement in block.body for sub in ast.walk(statement)}
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and id(sub) not in guarded:
                    module = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                    found.append(f"{path.relative_to(package)}:{sub.lineno}:{module}")
    return found


def test_functions_import_only_optional_or_slow_dependencies() -> None:
    package = Path(refcocog_tools.__file__).parent
    allowed = [f for f in function_level_imports(package)
               if f.split(":")[2].split(".")[0] in LAZY_IMPORTS
               or (f.startswith("core/files.py:") and f.split(":")[2].split(".")[0] in
                   ("torch", "refcocog_tools"))]
    assert sorted(set(function_level_imports(package)) - set(allowed)) == []


def test_the_import_check_sees_a_function_level_import(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    import json\n    return json\n")
    assert function_level_imports(tmp_path) == ["m.py:2:json"]

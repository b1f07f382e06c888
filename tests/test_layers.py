"""The package's structure: no import circle between its modules (the layers contract itself
is import-linter's, run by ``make lint``)."""

from __future__ import annotations

import grimp
import networkx


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

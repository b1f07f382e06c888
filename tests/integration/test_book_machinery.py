"""The book's machinery: parameter checks in a real kernel, the Tips, the execution cache, the
book configuration and the page checker (book_check)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from refcocog_tools.report import book_build
from refcocog_tools.report.chapter_files import (
    declared_parameters,
    parameters_cell_index,
    source_to_notebook,
    toc_chapters,
)

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = toc_chapters(ROOT)
# A misspelt name, and a value of the wrong type for a parameter every chapter declares.
BAD_PARAMETERS = {"limt": ({"limt": 5}, "limt"), "limit ten": ({"limit": "ten"}, "limit")}


def _header_cells(name: str) -> tuple[str, str]:
    """A chapter's parameters cell and its header cell, cut after ``open_chapter(...)`` (if the
    check let a bad parameter through, the rest of the chapter would not run here)."""
    nb = source_to_notebook(ROOT / "notebooks" / f"{name}.py")
    index = parameters_cell_index(nb)
    header = next(c.source for c in nb.cells[index + 1:]
                  if c.cell_type == "code" and "open_chapter(" in c.source)
    lines = header.splitlines()
    cut = next(i for i, line in enumerate(lines) if "open_chapter(" in line)
    return nb.cells[index].source, "\n".join(lines[:cut + 1])


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel imports this checkout's package, whatever the venv has installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def test_every_chapter_refuses_a_bad_parameter_at_its_first_cell_in_a_kernel(
        kernel_env: None) -> None:
    """All twelve chapters, each bad parameter, in one real kernel: the parameters cell, the
    line papermill injects, then the header, which must fail with one line naming the
    parameter (chapter 09 once ran on: its namespace was also sys.modules['__mp_main__'])."""
    from nbclient import NotebookClient
    from papermill.translators import PythonTranslator

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    expected: dict[int, tuple[str, str]] = {}
    for name in CHAPTERS:
        parameters, header = _header_cells(name)
        for case, (injected, parameter) in BAD_PARAMETERS.items():
            nb.cells += [nbformat.v4.new_code_cell("%reset -f\n__annotations__ = {}"),
                         nbformat.v4.new_code_cell(parameters),
                         nbformat.v4.new_code_cell(PythonTranslator.codify(injected)),
                         nbformat.v4.new_code_cell(header)]
            expected[len(nb.cells) - 1] = (f"{name}, {case}", parameter)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=600,
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if index not in expected:
            assert not errors, (index, cell.source[:80], errors)
            continue
        case, parameter = expected[index]
        assert len(errors) == 1, case
        assert errors[0].ename == "ParameterError", case
        assert re.search(rf"\b{parameter}\b", errors[0].evalue), (case, errors[0].evalue)
        assert len(errors[0].traceback) == 1, (case, errors[0].traceback)  # one line


def test_papermill_stops_chapter_09_on_a_misspelt_parameter(kernel_env: None,
                                                            tmp_path: Path) -> None:
    """The issue's command, on chapter 09's parameters and header cells."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb = source_to_notebook(ROOT / "notebooks" / "09_red_circle.py")
    parameters, header = _header_cells("09_red_circle")
    nb.cells = [c for c in nb.cells if c.source == parameters]
    nb.cells.append(nbformat.v4.new_code_cell(header))
    path = tmp_path / "09.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(PapermillExecutionError) as raised:
        papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"),
                                   parameters={"limt": 5}, kernel_name="python3",
                                   cwd=str(ROOT / "notebooks"), progress_bar=False)
    assert raised.value.ename == "ParameterError"
    assert raised.value.evalue.startswith("unknown parameter(s) limt:")
    assert raised.value.traceback == [f"ParameterError: {raised.value.evalue}"]


@pytest.mark.parametrize("name", CHAPTERS)
def test_each_tip_shows_its_own_commands_with_declared_parameters(name: str) -> None:
    source = (ROOT / "notebooks" / f"{name}.py").read_text(encoding="utf-8")
    tip = source.split("# ````{tip}", 1)[1].split("# ````\n", 1)[0]
    notebooks = set(re.findall(r"notebooks/(\w+)\.ipynb", tip))
    assert notebooks == {name}, notebooks
    assert f"make book CHAPTERS={name}\n" in tip
    given = set(re.findall(r"-p (\w+) ", tip))
    assert "data_root" in given and given <= set(declared_parameters(ROOT, name)), given


def test_the_shared_tip_text_names_no_chapter() -> None:
    text = (ROOT / "book" / "_real_data.md").read_text(encoding="utf-8")
    assert not re.search(r"\d\d_\w+", text)


# ----------------------------------------------------------------------------------------------
# The execution cache
# ----------------------------------------------------------------------------------------------
WRITER = '''# %% tags=["parameters"]
results_dir: str = ""

# %%
import json
import pathlib
import time


class Writer:
    def save_results(self, name, document):
        folder = pathlib.Path(results_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(document))


Writer().save_results("w", {"timing": time.time()})
'''
READER = '''# %% tags=["parameters"]
results_dir: str = ""

# %%
import pathlib


class Reader:
    def stored_results(self, name):
        return (pathlib.Path(results_dir) / f"{name}.json").read_text()


Reader().stored_results("w")
'''


def _two_chapter_book(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   "  - file: book/chapters/01_w\n  - file: book/chapters/02_r\n")
    (root / "notebooks" / "01_w.py").write_text(WRITER)
    (root / "notebooks" / "02_r.py").write_text(READER)
    return root


def test_the_hash_holds_no_time_path_or_cache(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = _two_chapter_book(tmp_path / "book")
    results = tmp_path / "results"
    results.mkdir()
    (results / "w.json").write_text("{}")
    params = {"results_dir": str(results)}
    first = {name: book_build.chapter_hash(root, name, params, package="p")
             for name in ("01_w", "02_r")}
    for path in (root / "notebooks" / "01_w.py", results / "w.json"):
        os.utime(path, (1, 1))  # mtimes are not inputs
    monkeypatch.setenv("REFCOCOG_TOOLS_CACHE", str(tmp_path / "another-cache"))
    assert {name: book_build.chapter_hash(root, name, params, package="p")
            for name in ("01_w", "02_r")} == first
    inputs = book_build.chapter_inputs(root, "02_r", params, package="p")
    assert set(inputs) == {"source", "parameters", "package", "results", "upstream"}
    assert inputs["upstream"] == {"01_w": ""}  # the writer has not run in this build area
    assert set(book_build.chapter_inputs(root, "01_w", params, package="p")) == {
        "source", "parameters", "package"}  # a writer does not read results


def test_a_reader_depends_on_the_runs_of_the_writers_before_it(tmp_path: Path,
                                                               monkeypatch) -> None:
    root = _two_chapter_book(tmp_path)
    base = book_build.chapter_hash(root, "02_r", {}, package="p", upstream={"01_w": "a"})
    assert book_build.chapter_hash(root, "02_r", {}, package="p", upstream={"01_w": "b"}) != base
    assert book_build.chapter_hash(root, "01_w", {}, package="p", upstream={"01_w": "b"}) == \
        book_build.chapter_hash(root, "01_w", {}, package="p")  # no reader: no upstream
    # The folder hashed is the one the chapter reads: $REFCOCOG_TOOLS_RESULTS when set.
    monkeypatch.setenv(book_build.RESULTS_ENV, str(tmp_path / "env-results"))
    (tmp_path / "env-results").mkdir()
    before = book_build.chapter_hash(root, "02_r", {}, package="p", upstream={})
    (tmp_path / "env-results" / "w.json").write_text("{}")
    assert book_build.chapter_hash(root, "02_r", {}, package="p", upstream={}) != before


def test_changed_inputs_names_the_part(tmp_path: Path) -> None:
    import json

    root = _two_chapter_book(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    parts = book_build.chapter_inputs(root, "02_r", {}, package="p", upstream={"01_w": "a"})
    assert book_build.changed_inputs(out, "02_r", parts) == ["never executed"]
    book_build.inputs_path(out, "02_r").write_text(json.dumps(parts))
    (out / "02_r.ipynb").write_text("{}")
    assert book_build.changed_inputs(out, "02_r", parts) == []
    moved = {**parts, "package": "q", "upstream": {"01_w": "b"}}
    assert book_build.changed_inputs(out, "02_r", moved) == ["package", "upstream (01_w)"]


def test_a_double_build_executes_nothing_and_a_writer_rerun_reruns_its_reader(
        tmp_path: Path, capsys: pytest.CaptureFixture, kernel_env: None) -> None:
    from refcocog_tools.cli import book as book_command
    root = _two_chapter_book(tmp_path / "book")
    build = ["build", "--root", str(root), "--no-book",
             "-p", "results_dir", str(tmp_path / "results")]

    def executed() -> list[str]:
        out = capsys.readouterr().out
        return re.findall(r"\] (\w+): executed", out)

    assert book_command.main(build) == 0
    assert executed() == ["01_w", "02_r"]
    assert book_command.main(build) == 0
    assert executed() == []  # nothing changed, nothing runs
    assert book_command.main([*build, "--chapters", "01_w"]) == 0
    assert executed() == ["01_w"]
    assert book_command.main(build) == 0
    out = capsys.readouterr().out
    assert re.findall(r"\] (\w+): executed", out) == ["02_r"]
    assert "why: results (w.json), upstream (01_w)" in out
    assert book_command.main(build) == 0
    assert executed() == []


# ----------------------------------------------------------------------------------------------
# The page checker
# ----------------------------------------------------------------------------------------------
_PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4"
          "//8/AAX+Av4N70a4AAAAAElFTkSuQmCC")
_PAGES = {
    "clean.html": f'<p id="top">Text.</p><img src="{_PIXEL}" alt="A bar chart of accuracy">'
                  '<a href="tex.html">next</a> <a href="#top">top</a>'
                  '<div class="cell"><div class="cell_input"><pre>show_table(t)</pre></div>'
                  '<div class="cell_output"><table><tr><td>1</td></tr></table></div></div>',
    "overflow.html": '<table style="width: 3000px"><tr><td>wide</td></tr></table>',
    "codeline.html": '<div style="width: 300px"><pre style="overflow: auto">'
                     + "x = 1  # " + "a long line " * 30 + "</pre></div>",
    "alt.html": f'<img src="{_PIXEL}"><img src="{_PIXEL}" alt="figures/chart.png">',
    "plumbing.html": '<div class="cell"><div class="cell_input"><pre>x = 1</pre></div>'
                     '<div class="cell_output"><pre>1</pre></div></div>',
    "console.html": '<script>console.error("boom")</script><p>Text.</p>',
    "tex.html": r"<p>The rule \(P(i) = 1\) is shown raw.</p>",
    "link.html": '<a href="missing.html">gone</a> <a href="clean.html#nowhere">no anchor</a>',
    "external.html": '<script src="https://cdn.invalid/mathjax.js"></script><p>Text.</p>',
}


def _write_pages(folder: Path) -> Path:
    folder.mkdir()
    for name, body in _PAGES.items():
        (folder / name).write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8">'
                                   f'<title>{name}</title></head><body><main>'
                                   f'<article class="bd-article">{body}</article></main>'
                                   f'</body></html>', encoding="utf-8")
    (folder / "_static").mkdir()
    (folder / "_static" / "asset.html").write_text("<p>\\(not a page\\)</p>")
    return folder


def test_the_checker_reports_each_defect_and_passes_the_clean_page(tmp_path: Path) -> None:
    from refcocog_tools.report import book_check
    chromium = book_check.find_chromium()
    if chromium is None:
        pytest.skip(book_check.INSTALL_HINT)
    folder = _write_pages(tmp_path / "html")
    defects = book_check.check_book(folder, chromium)
    kinds = {(d.page, d.kind) for d in defects}
    assert {page for page, _ in kinds} == set(_PAGES) - {"clean.html"}
    assert {("overflow.html", "overflow"), ("codeline.html", "overflow"),
            ("plumbing.html", "plumbing"),
            ("console.html", "console"), ("tex.html", "tex"), ("link.html", "link"),
            ("external.html", "external")} <= kinds
    alt = sorted(d.detail for d in defects if d.page == "alt.html" and d.kind == "alt")
    assert alt == ["alt text is a file name", "no alt text"]
    links = sorted(d.element for d in defects if d.kind == "link")
    assert links == ["clean.html#nowhere", "missing.html"]


def test_the_checker_without_chromium_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from refcocog_tools.cli import book_check as book_check_command
    from refcocog_tools.report import book_check
    folder = _write_pages(tmp_path / "html")
    monkeypatch.setattr(book_check_command, "find_chromium", lambda: None)
    assert book_check_command.main([str(folder)]) == 2
    assert "apt-get install chromium" in capsys.readouterr().err
    assert [p.name for p in book_check.pages(folder)] == sorted(_PAGES)  # _static left out


# ----------------------------------------------------------------------------------------------
# The book's configuration
# ----------------------------------------------------------------------------------------------
def _config_book(tmp_path: Path, url: str) -> Path:
    import shutil

    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["repository"]["url"] = url
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    return tmp_path


def test_a_configured_repository_links_the_commit_the_source_and_the_button(
        tmp_path: Path) -> None:
    import yaml

    root = _config_book(tmp_path, "https://example.org/group/refcocog-tools.git")
    assert book_build.repository_url(root) == "https://example.org/group/refcocog-tools"
    assert book_build.commit_text(root, "abc123") == (
        "[`abc123`](https://example.org/group/refcocog-tools/commit/abc123)")
    config = yaml.safe_load(book_build.book_config(root, defaults=False).read_text())
    assert config["html"]["use_repository_button"] is True
    assert config["repository"]["url"] == "https://example.org/group/refcocog-tools"
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"duration": 1.0}})
    footer = book_build._footer_cell(root, "09_red_circle", nb).source
    assert "{download}`notebooks/09_red_circle.py <../../notebooks/09_red_circle.py>`" in footer
    assert ("(https://example.org/group/refcocog-tools/blob/main/notebooks/09_red_circle.py)"
            in footer)


def test_without_a_repository_the_commit_is_plain_text(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = _config_book(tmp_path, "")  # tmp_path is no git checkout: no origin remote either
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert book_build.repository_url(root) == ""
    assert book_build.commit_text(root, "abc123") == "`abc123`"
    assert book_build.commit_text(root, None) == "`unknown (not a git checkout)`"
    nb = nbformat.v4.new_notebook(metadata={"papermill": {}})
    footer = book_build._footer_cell(root, "01_dataset", nb).source
    assert "{download}`notebooks/01_dataset.py" in footer and "/blob/" not in footer


def test_maths_offline_and_figures_numbered_per_chapter() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert config["sphinx"]["config"]["numfig"] is True
    assert config["sphinx"]["config"]["numfig_secnum_depth"] == 1
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    numbered = [f["file"] for part in toc["parts"] if part.get("numbered")
                for f in part["chapters"]]
    assert [f.rsplit("/", 1)[1] for f in numbered] == CHAPTERS

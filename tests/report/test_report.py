"""The report builder: chapter list, conversion, baselines, provenance notes, failures."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from refcocog_tools.cli import book as book_command
from refcocog_tools.data.dataset import is_synthetic
from refcocog_tools.data.minidata import write_mini_dataset
from refcocog_tools.engine import results
from refcocog_tools.report import book_build, chapter_files
from refcocog_tools.report import chapter as report
from refcocog_tools.report.book_build import PAIRING, clean_executed
from refcocog_tools.report.chapter import COMMON_PARAMETERS, provenance_note
from refcocog_tools.report.chapter_files import (
    ReportError,
    parameters_cell_index,
    parse_value,
    source_to_notebook,
    toc_chapters,
)

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = toc_chapters(ROOT)


def test_toc_lists_the_executed_chapters_in_order() -> None:
    assert CHAPTERS[0] == "01_dataset"
    assert CHAPTERS == sorted(CHAPTERS)
    for name in CHAPTERS:
        assert (ROOT / "notebooks" / f"{name}.py").is_file(), name


def test_toc_chapters_walks_nested_entries(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n"
        "  - caption: A\n    chapters:\n      - file: book/methods\n"
        "      - file: book/chapters/02_b\n        sections:\n"
        "          - file: book/chapters/03_c.ipynb\n"
        "  - caption: B\n    chapters:\n      - file: book/chapters/01_a\n"
    )
    assert toc_chapters(tmp_path) == ["02_b", "03_c", "01_a"]


def _parameter_names(source: str) -> set[str]:
    return {node.target.id for node in ast.parse(source).body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


@pytest.mark.parametrize("name", CHAPTERS)
def test_conversion_keeps_the_parameters_cell_first(name: str) -> None:
    nb = source_to_notebook(ROOT / "notebooks" / f"{name}.py")
    index = parameters_cell_index(nb)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert index == code_cells[0]
    assert set(COMMON_PARAMETERS) <= _parameter_names(nb.cells[index].source)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert [c["id"] for c in nb.cells] == [f"cell-{i:03d}" for i in range(len(nb.cells))]


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_baseline_matches_its_source(name: str) -> None:
    """notebooks/NN.ipynb must be an executed run of the current notebooks/NN.py."""
    path = ROOT / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        # A new chapter lands as source only; its baseline is generated afterwards, once, with
        # every other chapter's (`make regen-baselines`).
        pytest.skip(f"{name}: no committed baseline yet (make regen-baselines)")
    baseline = nbformat.read(path, as_version=4)
    source = jupytext.read(ROOT / "notebooks" / f"{name}.py", fmt="py:percent")
    assert [(c.cell_type, c.source) for c in baseline.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], "stale baseline: run `make regen-baselines`"
    assert baseline.metadata["jupytext"]["formats"] == PAIRING
    code = [c for c in baseline.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "baseline not executed"
    assert "papermill" not in baseline.metadata
    text = json.dumps(baseline.cells)
    assert str(ROOT) not in text  # no machine paths in committed outputs


def test_parse_value() -> None:
    assert parse_value("0") == 0 and isinstance(parse_value("0"), int)
    assert parse_value("0.5") == 0.5
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("none") is None
    assert parse_value("/data/refcocog") == "/data/refcocog"
    assert parse_value("RN50x16") == "RN50x16"


def test_clean_executed_drops_run_metadata() -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/somewhere/x.ipynb"}
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.metadata["execution"] = {"iopub.status.busy": "2025-01-01"}
    nb.cells.append(cell)
    cleaned = clean_executed(nb, pair=True)
    assert "papermill" not in cleaned.metadata
    assert cleaned.cells[0].metadata == {}
    assert cleaned.metadata["jupytext"] == {"formats": PAIRING}


def test_provenance_on_the_embedded_defaults() -> None:
    note = provenance_note("", backbones_untrained=True, models="tiny-rn")
    text = repr(note)
    assert note.kind == "warning"
    assert "synthetic" in text and "untrained" in text and "not a RefCOCOg result" in text
    assert "tiny-rn" in text
    assert note._repr_markdown_().startswith("```{admonition}")
    assert ":class: warning" in note._repr_markdown_()


def test_provenance_names_a_generated_dataset_synthetic(tmp_path: Path) -> None:
    root = write_mini_dataset(tmp_path / "mini", n_images=3)
    assert is_synthetic(root)
    note = provenance_note(str(root), backbones_untrained=False)
    assert note.kind == "warning" and "synthetic" in repr(note)


def _real_looking_root(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"info": {"description": "COCO"}, "images": [], "annotations": [],
                    "categories": []}))
    return root


def test_provenance_on_real_data(tmp_path: Path) -> None:
    root = _real_looking_root(tmp_path)
    assert not is_synthetic(root)
    pretrained = provenance_note(str(root), backbones_untrained=False, models="RN50x16")
    assert pretrained.kind == "note"
    assert "pretrained" in repr(pretrained) and "synthetic" not in repr(pretrained)
    untrained = provenance_note(str(root), backbones_untrained=True)
    assert untrained.kind == "warning" and "untrained" in repr(untrained)
    no_model = provenance_note(str(root), backbones_untrained=None)
    assert no_model.kind == "note" and "No model" in repr(no_model)


def _toy_book(tmp_path: Path, chapter_source: str) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/chapters/99_toy\n")
    (tmp_path / "notebooks" / "99_toy.py").write_text(chapter_source)
    return tmp_path


def test_a_chapter_without_parameters_cell_is_refused(tmp_path: Path) -> None:
    root = _toy_book(tmp_path, "# %%\nx = 1\n")
    with pytest.raises(ReportError, match="99_toy: no cell tagged 'parameters'"):
        book_build.execute_chapter(root, "99_toy", {}, root / "book" / "chapters")


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    root = _toy_book(tmp_path, "")
    (root / "notebooks" / "99_toy.py").unlink()
    assert book_command.main(["regen-baselines", "--root", str(root)]) == 1


def test_failing_chapter_stops_the_build_with_its_name(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = _toy_book(
        tmp_path,
        '# %% tags=["parameters"]\nlimit: int = 0\n\n# %%\nraise ValueError(f"boom {limit}")\n',
    )
    code = book_command.main(["build", "--root", str(root), "-p", "limit", "7", "--no-book"])
    assert code == 1
    err = capsys.readouterr().err
    assert "chapter 99_toy failed" in err and "ValueError: boom 7" in err


def test_reproduce_path_runs_a_real_chapter_with_parameters(tmp_path: Path, mini_data: Path,
                                                            isolated_cache: Path) -> None:
    """`make reproduce` = `report build -p ...`: a real chapter, run with the parameters a user
    would pass for RefCOCOg, here pointed at a generated dataset and the tiny models."""
    import json

    source = ROOT / "notebooks" / "02_baseline.py"
    root = _toy_book(tmp_path, "")
    (root / "notebooks" / "99_toy.py").write_text(source.read_text())
    code = book_command.main(["build", "--root", str(root), "--no-book",
                        "-p", "data_root", str(mini_data), "-p", "clip", "tiny-rn",
                        "-p", "proposals", "gt", "-p", "device", "cpu", "-p", "limit", "6"])
    assert code == 0
    executed = json.loads((root / "book" / "chapters" / "99_toy.ipynb").read_text())
    injected = [c for c in executed["cells"]
                if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(injected) == 1 and str(mini_data) in "".join(injected[0]["source"])
    text = json.dumps(executed["cells"])
    assert "not a RefCOCOg result" in text  # the generated dataset is recognised as synthetic
    assert ("this build: synthetic dataset (test), tiny-rn (untrained), proposals gt "
            "(ground-truth boxes: an upper bound, not the study's detector setting)"
            ) in text.replace("\\'", "'")
    # The page's one provenance statement is chosen from the run's models, not the default's.
    assert results.provenance_note(True, backbones_untrained=True).title in text
    assert "toy weights trained on the synthetic world" not in text


def _namespace(**params: object) -> dict[str, object]:
    """A chapter's namespace after its parameters cell: values and their type hints."""
    hints = {"data_root": "str", "clip": "str", "proposals": "str", "seed": "int",
             "limit": "int", "lr": "Optional[float]", "variants": "list[str]"}
    values = {"data_root": "", "clip": "tiny-rn", "proposals": "gt", "seed": 0, "limit": 0,
              "lr": None, "variants": ["blur"]}
    values.update(params)
    return {"__annotations__": {k: hints[k] for k in hints}, "__name__": "__main__",
            "In": [], "get_ipython": print, "report": report, **values}


def test_open_chapter_states_what_ran(mini_data: Path, isolated_cache: Path) -> None:
    chapter = report.open_chapter(_namespace(data_root=str(mini_data)))
    assert chapter.dataset.split == "test" and len(chapter.dataset) > 0
    assert [b.name for b in chapter.backbones] == ["tiny-rn"]
    assert chapter.params["limit"] == 0 and chapter.params["clip"] == "tiny-rn"
    assert chapter.run_label == "this build: synthetic dataset, CLIP tiny-rn (untrained)"
    assert chapter.note.kind == "warning" and "CLIP tiny-rn; proposals gt" in chapter.note.body
    no_models = report.open_chapter(_namespace(data_root=str(mini_data)), models=())
    assert no_models.backbones == [] and no_models.proposer is None
    assert "No model is used on this page." in no_models.note.body


@pytest.mark.parametrize(("params", "message"), [
    ({"limt": 5}, "unknown parameter(s) limt"),
    ({"limit": "ten"}, "parameter limit must be int, got 'ten' (str)"),
    ({"limit": True}, "parameter limit must be int"),
    ({"lr": "fast"}, "parameter lr must be Optional[float]"),
    ({"variants": "blur"}, "parameter variants must be list[str]"),
])
def test_open_chapter_refuses_unknown_names_and_wrong_types(params: dict, message: str) -> None:
    with pytest.raises(ReportError, match=re.escape(message)):
        report.open_chapter(_namespace(**params))


def test_imported_constants_are_not_parameters() -> None:
    """A constant the header imported is the module's own object; nbval keeps no ``In``."""
    from refcocog_tools.report.reported import STUDY

    assert "STUDY" not in report.check_parameters(_namespace(STUDY=STUDY))
    with pytest.raises(ReportError, match=re.escape("unknown parameter(s) STUDY")):
        report.check_parameters(_namespace(STUDY=STUDY.upper()))  # same name, not the import


def test_check_parameters_accepts_what_papermill_passes() -> None:
    namespace = _namespace(lr=1, variants=("blur", "gray"), limit=3)
    namespace["__annotations__"].update(variants=list[str], limit=int)  # evaluated hints
    values = report.check_parameters(namespace)
    assert values["lr"] == 1 and values["limit"] == 3  # an int is a float; a tuple a list


def test_every_chapter_parameter_is_typed_for_papermill() -> None:
    """`papermill --help-notebook` lists every parameter with its type (none "Unknown")."""
    for name in CHAPTERS:
        source = (ROOT / "notebooks" / f"{name}.py").read_text()
        declared = chapter_files.declared_parameters(ROOT, name)
        nb = source_to_notebook(ROOT / "notebooks" / f"{name}.py")
        assigned = _parameter_names(nb.cells[parameters_cell_index(nb)].source)
        assert set(declared) == assigned, (name, set(declared) ^ assigned)
        assert "None" not in declared.values(), (name, declared)
        assert source.count("```{include} ../_real_data.md") == 1, name


def test_build_refuses_a_parameter_no_chapter_declares(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = _toy_book(tmp_path, '# %% tags=["parameters"]\nlimit: int = 0\n\n# %%\nlimit\n')
    assert book_command.main(["build", "--root", str(root), "-p", "limt", "7", "--no-book"]) == 1
    assert "unknown parameter(s) limt" in capsys.readouterr().err
    assert not (root / "book" / "chapters").exists()  # refused before anything ran


def test_a_second_build_executes_nothing_until_an_input_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Incremental builds: the hash beside the executed notebook covers source, parameters and
    package; an unchanged chapter is not executed again (kernel start-ups: about 10 s)."""
    root = _toy_book(tmp_path, '# %% tags=["parameters"]\nlimit: int = 0\n\n# %%\nlimit * 2\n')
    out = root / "book" / "chapters"
    assert book_command.main(["build", "--root", str(root), "--no-book"]) == 0
    assert "99_toy: executed" in capsys.readouterr().out
    stamp = book_build.hash_path(out, "99_toy")
    assert stamp.read_text().strip() == book_build.chapter_hash(root, "99_toy", {})
    assert book_command.main(["build", "--root", str(root), "--no-book"]) == 0
    assert "99_toy: up to date" in capsys.readouterr().out
    assert book_command.main(["build", "--root", str(root), "--no-book", "-p", "limit", "3"]) == 0
    assert "99_toy: executed" in capsys.readouterr().out
    executed = nbformat.read(out / "99_toy.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"] == {"limit": 3}
    assert "input_path" not in executed.metadata["papermill"]  # no machine paths
    assert executed.cells[-1].metadata["tags"] == ["provenance-footer"]
    assert "`limit=3`" in executed.cells[-1].source
    page = book_build.write_provenance_page(root, ["99_toy"], out)
    assert "| {doc}`chapters/99_toy` | completed |" in page.read_text()


def test_hash_covers_source_parameters_and_results_read(tmp_path: Path) -> None:
    root = _toy_book(tmp_path, '# %% tags=["parameters"]\nlimit: int = 0\n')
    first = book_build.chapter_hash(root, "99_toy", {}, package="p")
    assert book_build.chapter_hash(root, "99_toy", {"limit": 1}, package="p") != first
    assert book_build.chapter_hash(root, "99_toy", {}, package="q") != first
    (root / "results").mkdir()
    (root / "results" / "baseline.json").write_text("{}")
    assert book_build.chapter_hash(root, "99_toy", {}, package="p") == first  # does not read them
    (root / "notebooks" / "99_toy.py").write_text(
        '# %% tags=["parameters"]\nlimit: int = 0\n\n# %%\nchapter.stored_results("x")\n')
    reader = book_build.chapter_hash(root, "99_toy", {}, package="p")
    (root / "results" / "baseline.json").write_text('{"changed": 1}')
    assert book_build.chapter_hash(root, "99_toy", {}, package="p") != reader


def test_the_book_config_carries_banner_footer_and_keeps_the_rest(tmp_path: Path) -> None:
    import shutil

    import yaml

    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    path = book_build.book_config(tmp_path, defaults=True)
    assert path.parent == tmp_path / "book" / "chapters"
    config = yaml.safe_load(path.read_text())
    assert "embedded defaults" in config["html"]["announcement"]
    assert "refcocog-tools" in config["html"]["extra_footer"]
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    assert "announcement" not in yaml.safe_load(
        book_build.book_config(tmp_path, defaults=False).read_text())["html"]


def test_results_folder_comes_from_the_parameter_then_the_environment(tmp_path, monkeypatch):
    """The nbval runs and the baselines give the chapters a fresh results folder through
    $REFCOCOG_TOOLS_RESULTS, so two runs at once (or an earlier build's files) never mix."""
    from refcocog_tools.report.book_build import RESULTS_ENV
    from refcocog_tools.report.chapter import Chapter
    from refcocog_tools.report.chapter_files import find_root

    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert Chapter({}, tmp_path, [], None, None).results_dir == find_root() / "results"
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "env" / "results"))
    assert Chapter({}, tmp_path, [], None, None).results_dir == tmp_path / "env" / "results"
    given = Chapter({"results_dir": str(tmp_path / "mine")}, tmp_path, [], None, None)
    assert given.results_dir == tmp_path / "mine"


def test_every_chapter_runs_the_toy_clip_by_default() -> None:
    """The book's numbers come from toy-rn (trained on the synthetic world) unless a run says
    otherwise; the untrained tiny-rn stays reachable as a parameter value (the smoke test of
    test_reproduce_path_runs_a_real_chapter_with_parameters)."""
    defaults = {name: chapter_files.declared_defaults(ROOT, name).get("clip") for name in CHAPTERS}
    assert set(defaults.values()) == {"toy-rn"}, defaults


@pytest.mark.parametrize(("clip", "banner"), [
    ("tiny-rn", True), ("toy-rn", True), ("RN50,toy-rn", True), ("RN50", False),
    ("ViT-B/32,RN50", False)])
def test_the_book_banner_on_real_data_follows_the_models(tmp_path: Path, clip: str,
                                                         banner: bool) -> None:
    """Real-looking data with an embedded model (untrained or toy) still gets the banner."""
    root = _real_looking_root(tmp_path)
    assert book_build.on_embedded_defaults({"data_root": str(root), "clip": clip,
                                            "proposals": "gt"}) is banner

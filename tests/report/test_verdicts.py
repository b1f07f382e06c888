"""The chapters' verdicts (glued, collected, written for the intro), the runner and the
experiments chapters 09 and 10 call, and the verdict world's interval width."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from refcocog_tools.engine.uncertainty import Interval
from refcocog_tools.proposals.proposers import make_proposer
from refcocog_tools.report import ablations, verdicts
from refcocog_tools.report.chapter import Chapter
from refcocog_tools.report.method_runs import (
    MethodRunner,
    StoredMethod,
    of_expression_type,
    paired,
    stored_or_computed,
    verdict_sentence,
)


def _executed(tmp_path: Path, name: str, code: str) -> Path:
    """A one-cell notebook executed in a real kernel, as papermill would (outputs kept)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


GLUE_A_VERDICT = """
from refcocog_tools.engine.uncertainty import Interval
from refcocog_tools.report import glue_verdict
glue_verdict("Does A beat B?", "A does not beat B | sometimes.", "The study said yes.",
             difference=Interval(-0.1, -0.15, -0.05), compared="A - B, accuracy@0.5")
"""


def test_a_glued_verdict_is_collected_from_the_executed_notebook(tmp_path: Path) -> None:
    _executed(tmp_path, "09_red_circle", GLUE_A_VERDICT)
    _executed(tmp_path, "10_results", "x = 1")  # no verdict: left out
    found = verdicts.collect_verdicts(tmp_path, ["09_red_circle", "10_results", "11_missing"])
    assert [v.chapter for v in found] == ["09_red_circle"]
    verdict = found[0]
    assert (verdict.question, verdict.answer, verdict.study) == (
        "Does A beat B?", "A does not beat B | sometimes.", "The study said yes.")
    assert verdict.difference == Interval(-0.1, -0.15, -0.05)
    assert verdict.compared == "A - B, accuracy@0.5"


def test_the_verdict_page_holds_a_table_and_a_figure(tmp_path: Path) -> None:
    out = tmp_path / "chapters"
    out.mkdir()
    _executed(out, "12_toy_world", GLUE_A_VERDICT)
    page = verdicts.write_verdict_page(tmp_path, out, ["12_toy_world"])
    text = page.read_text(encoding="utf-8")
    assert "{doc}`chapters/12_toy_world`" in text
    assert "A does not beat B \\| sometimes." in text  # a pipe would end the cell
    assert verdicts.headline("A beats B: +0.1 [0.05, 0.2] (n = 9). On the world.") == (
        "A beats B: +0.1 [0.05, 0.2] (n = 9).")
    assert "```{figure} _verdicts.png" in text and ":alt:" in text
    assert (tmp_path / verdicts.VERDICT_FIGURE).read_bytes().startswith(b"\x89PNG")


def test_no_verdict_no_figure(tmp_path: Path) -> None:
    (tmp_path / "book").mkdir()
    stale = tmp_path / verdicts.VERDICT_FIGURE
    stale.write_bytes(b"old")
    page = verdicts.write_verdict_page(tmp_path, tmp_path, ["01_dataset"])
    assert "No chapter" in page.read_text(encoding="utf-8")
    assert not stale.exists()


@pytest.fixture(scope="module")
def runner(mini_data: Path, tiny_rn) -> MethodRunner:
    return MethodRunner.on_root(mini_data, [tiny_rn], make_proposer("gt"), limit=12)


def test_the_runner_evaluates_a_configuration_once(runner: MethodRunner) -> None:
    first = runner.run("red-circle", n_debias=10)
    assert runner.run("red-circle", n_debias=10) is first
    other = runner.run("red-circle", n_debias=0)
    assert other is not first
    assert other["config"]["method"]["n_debias"] == 0
    assert len(runner.done) == 2


def test_ablations_change_one_setting_and_name_the_pages(runner: MethodRunner) -> None:
    options = {"n_debias": 10, "blur_radius": 20.0}
    rows = ablations.run_ablations(runner, options,
                                   [("blur radius", "blur_radius", [0.0, 20.0])])
    assert list(rows) == ["this page's parameters", "blur radius = 0.0",
                          "blur radius = 20.0 (page's setting)"]
    assert rows["blur radius = 20.0 (page's setting)"] is rows["this page's parameters"]
    assert rows["blur radius = 0.0"]["config"]["method"]["blur_radius"] == 0.0
    table = ablations.paired_table(rows, "this page's parameters")
    assert table["accuracy minus reference"].iloc[0] == "reference"
    assert table["accuracy minus reference"].iloc[2].startswith("+0.000")


def test_mask_prompt_rows_draw_the_true_masks(runner: MethodRunner) -> None:
    with_masks = make_proposer("gt", masks=True)
    rows = ablations.run_prompt_shapes(runner, {"n_debias": 10}, with_masks)
    assert list(rows)[0] == ablations.STUDY_PROMPT
    mask = rows["no marker, blur outside the mask (FGVP's blur reverse mask)"]
    assert mask["config"]["method"]["window"] == "mask"
    assert mask["config"]["proposals"] == {"proposer": "gt", "masks": True}
    assert {len(doc["predictions"]) for doc in rows.values()} == {12}


def test_the_debiasing_example_agrees_with_the_study_form(runner: MethodRunner) -> None:
    method = runner.make("red-circle", n_debias=20)
    example = ablations.debiasing_example(method, runner.dataset, runner.proposer, 12)
    assert example.forms_agree
    assert example.raw.shape == example.debiased.shape
    assert example.raw.shape[0] == example.n_expressions
    assert not bool((example.raw == example.debiased).all())  # something was subtracted


def test_stored_or_computed_reads_what_it_wrote(runner: MethodRunner, mini_data: Path,
                                                tmp_path: Path) -> None:
    chapter = Chapter({"results_dir": str(tmp_path), "limit": 12, "split": "test"}, mini_data,
                      runner.backbones, runner.proposer, None)
    methods = {"floor": StoredMethod("largest"), "crop": StoredMethod("baseline")}
    first, computed = stored_or_computed(chapter, runner, methods)
    assert sorted(computed) == ["baseline", "largest"]
    assert (tmp_path / "baseline.json").is_file()
    again, recomputed = stored_or_computed(chapter, MethodRunner(runner.built, limit=12),
                                           methods)
    assert recomputed == []
    assert again["crop"]["predictions"] == first["crop"]["predictions"]


def test_a_verdict_sentence_uses_the_words_and_a_subset(runner: MethodRunner) -> None:
    a, b = runner.run("baseline"), runner.run("largest")
    sentence, comparison = verdict_sentence("crop", "largest", a, b)
    assert sentence.endswith(".") and "McNemar" in sentence
    assert comparison.n == len(a["predictions"])
    position = paired(a, b, of_expression_type("position"))
    assert 0 < position.n < comparison.n


def test_the_verdict_world_reaches_the_half_width(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The book's principal difference (red-circle - crop baseline, accuracy, paired) has a 95%
    interval at most 0.05 either side on the verdict world with toy-rn."""
    from refcocog_tools.models.clip_loading import load_clips
    from refcocog_tools.toy.verdict_world import (
        TARGET_HALF_WIDTH,
        VERDICT_IMAGES,
        half_width,
        verdict_world_root,
    )

    monkeypatch.setenv("REFCOCOG_TOOLS_CACHE", str(tmp_path))
    root = verdict_world_root(VERDICT_IMAGES)
    assert verdict_world_root(VERDICT_IMAGES) == root  # cached: written once
    world = MethodRunner.on_root(root, load_clips("toy-rn"), make_proposer("gt"))
    comparison = paired(world.run("red-circle"), world.run("baseline"))
    assert comparison.n > 500
    assert half_width(comparison.accuracy.low, comparison.accuracy.high) <= TARGET_HALF_WIDTH

"""Data the tool must not trust (issue 22, items 3 and 5): repeated ids, files that are not
regular files, JSON nested too deep, a method without its checkpoint, and an image that cannot
be decoded in a DataLoader worker.

Each case checks a one-line error naming the file and the field (never a traceback), or, with
``--warn-data-problems``, the warning and the results' ``problems`` entry. Anything that could
block on a FIFO runs in a thread or a subprocess with a time limit, so a regression fails
instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from annotation_files import read_instances, read_refs, write_instances, write_refs

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.annotations import INSTANCES_FILE, DatasetError, DuplicateIdError
from refcocog_tools.data.dataset import REFS_FILE, RefCOCOg, load_rgb_image, validate

ROOT = Path(__file__).resolve().parents[2]
DEEP = "[" * 100_000 + "]" * 100_000


def _evaluate(root: Path, out: Path, *extra: str, method: str = "baseline") -> int:
    return cli_main(["evaluate", "--data-root", str(root), "--method", method,
                     "--clip", "tiny-rn", "--proposals", "gt", "--out", str(out), "--quiet",
                     *extra])


def _one_line_error(err: str) -> str:
    """The error line of a refused command; fails on a traceback or a second error line."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("refcocog-tools: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _two_refs_of_one_test_image(root: Path) -> tuple[int, int]:
    """Indices in the refs file of two test refs of the same image."""
    refs = read_refs(root)
    seen: dict[int, int] = {}
    for i, ref in enumerate(refs):
        if ref["split"] == "test":
            if ref["image_id"] in seen:
                return seen[ref["image_id"]], i
            seen[ref["image_id"]] = i
    raise AssertionError("the embedded dataset has no test image with two refs")


def _returns_within(call: Callable[[], Any], fifo: Path, seconds: float = 60) -> Any:
    """``call()``'s result or exception, failing (not hanging) if it blocks on ``fifo``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        # Release the reader blocked on the FIFO, so the thread ends with the test.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail(f"blocked on the FIFO {fifo} for {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _cli(*argv: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command line in a fresh process, killed after ``timeout`` seconds."""
    env = {**os.environ, "REFCOCOG_TOOLS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-m", "refcocog_tools", *argv], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"refcocog-tools {' '.join(argv[:1])} still running after {timeout} s "
                    "(blocked on a FIFO?)")


# ----------------------------------------------------------------------------------------------
# 1. Repeated ids: listed by validate, refused by evaluate, or the first record kept
# ----------------------------------------------------------------------------------------------
def test_repeated_ref_id_is_listed_refused_and_never_changes_another_answer(
        data, tmp_path, isolated_cache, capsys) -> None:
    first, second = _two_refs_of_one_test_image(data)
    refs = read_refs(data)
    kept_id, dropped_id = refs[first]["ref_id"], refs[second]["ref_id"]
    dropped_sent_ids = {s["sent_id"] for s in refs[second]["sentences"]}
    red_circle = ("--n-debias", "0", "--debias-at-zero", "own-prompts")  # debiased per ref
    assert _evaluate(data, tmp_path / "clean.json", *red_circle, method="red-circle") == 0
    clean = json.loads((tmp_path / "clean.json").read_text())["predictions"]
    capsys.readouterr()

    refs[second]["ref_id"] = kept_id
    write_refs(data, refs)
    expected = f"{data / 'annotations' / REFS_FILE}: ref_id {kept_id} appears 2 times " \
               f"(refs[{first}], refs[{second}])"
    assert expected in validate(data, check_images=False)
    with pytest.raises(DuplicateIdError, match=r"ref_id \d+ appears 2 times"):
        RefCOCOg(data)

    out = tmp_path / "r.json"
    assert _evaluate(data, out, *red_circle, method="red-circle") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert expected in line and "--warn-data-problems" in line and not out.exists()

    assert _evaluate(data, out, *red_circle, "--warn-data-problems", method="red-circle") == 0
    assert expected in capsys.readouterr().err  # the warning
    results = json.loads(out.read_text())
    assert any(expected in p and "first record" in p for p in results["problems"])
    rows = results["predictions"]
    # The later record is dropped whole; every other answer is the clean run's.
    assert not {r["sent_id"] for r in rows} & dropped_sent_ids
    assert rows == [r for r in clean if r["ref_id"] != dropped_id]


def test_repeated_sent_id_is_listed_refused_and_the_later_sentence_dropped(
        data, tmp_path, isolated_cache, capsys) -> None:
    first, second = _two_refs_of_one_test_image(data)
    refs = read_refs(data)
    repeated = refs[first]["sentences"][0]["sent_id"]
    lost = refs[second]["sentences"][0]["sent"]
    refs[second]["sentences"][0]["sent_id"] = repeated
    write_refs(data, refs)
    expected = (f"{data / 'annotations' / REFS_FILE}: field 'sentences[].sent_id' {repeated} "
                f"appears 2 times (ref_id {refs[first]['ref_id']}, "
                f"ref_id {refs[second]['ref_id']})")
    assert expected in validate(data, check_images=False)

    out = tmp_path / "r.json"
    assert _evaluate(data, out) == 2
    assert expected in _one_line_error(capsys.readouterr().err) and not out.exists()

    kept = RefCOCOg(data, keep_first_duplicates=True)
    assert any(expected in p for p in kept.problems)
    sentences = [item.sentence for item in kept if item.ref_id == refs[second]["ref_id"]]
    assert lost not in sentences and len(sentences) == len(refs[second]["sentences"]) - 1
    assert [item.sent_id for item in kept].count(repeated) == 1

    assert _evaluate(data, out, "--warn-data-problems") == 0
    results = json.loads(out.read_text())
    assert any(expected in p for p in results["problems"])
    assert [r["sent_id"] for r in results["predictions"]].count(repeated) == 1
    assert results["metrics"]["n"] == len(kept)


def test_repeated_image_and_annotation_ids_are_refused_by_evaluate(
        data, tmp_path, isolated_cache, capsys) -> None:
    instances = read_instances(data)
    instances["images"].append({**instances["images"][1], "id": instances["images"][0]["id"]})
    instances["annotations"].append(dict(instances["annotations"][0]))
    write_instances(data, instances)
    path = data / "annotations" / INSTANCES_FILE
    image_problem = (f"{path}: images[{len(instances['images']) - 1}]: field 'id' "
                     f"{instances['images'][0]['id']} duplicates images[0]")
    annotation_problem = (f"{path}: annotations[{len(instances['annotations']) - 1}]: field "
                          f"'id' {instances['annotations'][0]['id']} duplicates annotations[0]")
    problems = validate(data, check_images=False)
    assert image_problem in problems and annotation_problem in problems

    out = tmp_path / "r.json"
    assert _evaluate(data, out) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert image_problem in line and "(and 1 more" in line and not out.exists()

    assert _evaluate(data, out, "--limit", "4", "--warn-data-problems") == 0
    listed = json.loads(out.read_text())["problems"]
    assert any(image_problem in p for p in listed)
    assert any(annotation_problem in p for p in listed)


def test_other_problems_are_still_refused_with_the_flag(data, tmp_path, isolated_cache,
                                                        capsys) -> None:
    refs = read_refs(data)
    refs[1]["ref_id"] = refs[0]["ref_id"]
    refs[2]["split"] = "nowhere"  # not a repeated id: --warn-data-problems does not cover it
    write_refs(data, refs)
    assert _evaluate(data, tmp_path / "r.json", "--warn-data-problems") == 2
    assert "field 'split' is 'nowhere'" in _one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------
# 2. Files that are not regular files are refused before they are opened
# ----------------------------------------------------------------------------------------------
def _fifo_in_place_of(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def test_fifo_image_is_refused_without_blocking(data) -> None:
    image = data / "images" / read_instances(data)["images"][0]["file_name"]
    fifo = _fifo_in_place_of(image)
    with pytest.raises(DatasetError, match="image unreadable: a named pipe"):
        _returns_within(lambda: load_rgb_image(fifo), fifo)
    problems = _returns_within(lambda: validate(data), fifo)
    assert f"{fifo}: image unreadable: a named pipe (FIFO), not a regular file" in problems


def test_fifo_image_and_folder_image_in_the_command_line(data, tmp_path, isolated_cache) -> None:
    groups = {item.image_path: None for item in RefCOCOg(data)}  # test images, in run order
    fifo, folder = list(groups)[:2]
    _fifo_in_place_of(fifo)
    folder.unlink()
    folder.mkdir()
    checked = _cli("validate", "--data-root", str(data), cache=isolated_cache)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert f"{fifo}: image unreadable: a named pipe (FIFO)" in checked.stdout
    assert f"{folder}: image unreadable: a folder, not a regular file" in checked.stdout
    out = tmp_path / "r.json"
    run = _cli("evaluate", "--data-root", str(data), "--method", "baseline", "--clip",
               "tiny-rn", "--out", str(out), "--workers", "2", cache=isolated_cache)
    assert run.returncode == 2 and not out.exists()
    assert "image problem" in _one_line_error(run.stderr)
    assert f"{fifo}: image unreadable: a named pipe" in run.stderr and str(folder) in run.stderr


def test_fifo_annotation_files_are_refused_without_blocking(data) -> None:
    from refcocog_tools.data.dataset import is_synthetic

    fifo = _fifo_in_place_of(data / "annotations" / INSTANCES_FILE)
    assert _returns_within(lambda: validate(data), fifo) == [
        f"{fifo}: annotation file is a named pipe (FIFO), not a regular file"]
    assert _returns_within(lambda: is_synthetic(data), fifo) is False
    refs_fifo = _fifo_in_place_of(data / "annotations" / REFS_FILE)
    with pytest.raises(DatasetError, match="annotation file is a named pipe"):
        _returns_within(lambda: RefCOCOg(data), refs_fifo)


def test_fifo_detections_results_and_checkpoints_are_refused(tmp_path) -> None:
    from refcocog_tools.core.files import UnreadableFileError, load_torch_file
    from refcocog_tools.engine.results import ResultsError, read_results
    from refcocog_tools.methods.regressor.training import RegressorError, load_checkpoint
    from refcocog_tools.proposals.detections import DetectionsError, load_detections

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DetectionsError, match=r"pipe: cannot read the detections file \(a "
                       r"named pipe \(FIFO\), not a regular file\)"):
        _returns_within(lambda: load_detections(fifo), fifo)
    with pytest.raises(ResultsError, match="named pipe"):
        _returns_within(lambda: read_results(fifo), fifo)
    with pytest.raises(UnreadableFileError, match="pipe: a named pipe"):
        _returns_within(lambda: load_torch_file(fifo), fifo)
    with pytest.raises(RegressorError, match="named pipe"):
        _returns_within(lambda: load_checkpoint(fifo, "cpu"), fifo)


# ----------------------------------------------------------------------------------------------
# 3. JSON nested too deep: one line naming the file
# ----------------------------------------------------------------------------------------------
def test_deeply_nested_instances_json_is_one_line(data, tmp_path, isolated_cache,
                                                  capsys) -> None:
    path = data / "annotations" / INSTANCES_FILE
    path.write_text(DEEP)
    problems = validate(data)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")
    assert "nested too deep" in problems[0]
    assert _evaluate(data, tmp_path / "r.json") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(path) in line and "nested too deep" in line


def test_deeply_nested_detections_and_results_files_are_one_line(mini_data, tmp_path,
                                                                 isolated_cache,
                                                                 capsys) -> None:
    from refcocog_tools.engine.results import ResultsError, read_results

    dets = tmp_path / "dets.json"
    dets.write_text(DEEP)
    assert _evaluate(mini_data, tmp_path / "r.json", "--proposals", f"dets:{dets}") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"{dets}: not a readable detections file: JSON nested too deep" in line
    with pytest.raises(ResultsError, match="dets.json: not a readable results file: JSON "
                       "nested too deep"):
        read_results(dets)


# ----------------------------------------------------------------------------------------------
# 4. A method without the file it needs fails before any work
# ----------------------------------------------------------------------------------------------
def test_regressor_without_checkpoint_is_a_usage_error(tmp_path, monkeypatch, capsys) -> None:
    # No dataset and no cache exist: an error about anything else would show work.
    monkeypatch.setenv("REFCOCOG_TOOLS_CACHE", str(tmp_path / "never"))
    out = tmp_path / "r.json"
    assert cli_main(["evaluate", "--method", "regressor", "--out", str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--method regressor needs --checkpoint" in line
    assert not (tmp_path / "never").exists() and not out.exists()
    assert cli_main(["bench", "--method", "regressor"]) == 2
    assert "needs --checkpoint" in _one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------
# 5. An image that cannot be decoded, in the main process or a DataLoader worker
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_image_is_skipped_with_the_flag(data, tmp_path, isolated_cache, capsys,
                                                  workers) -> None:
    dataset = RefCOCOg(data)
    first = dataset[0]
    truncated = first.image_path
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[:len(whole) * 2 // 3])
    limit = 8
    lost = sum(1 for i in range(limit) if dataset[i].image_id == first.image_id)
    out = tmp_path / "r.json"
    argv = ("--limit", str(limit), "--workers", str(workers), "--batch-size", "16")
    assert _evaluate(data, out, *argv) == 2
    err = capsys.readouterr().err
    assert "image problem" in _one_line_error(err)
    assert f"{truncated}: image unreadable" in err and "--warn-data-problems" in err

    assert _evaluate(data, out, *argv, "--warn-data-problems") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "could not be decoded and were skipped" in err
    results = json.loads(out.read_text())
    skipped = [p for p in results["problems"] if str(truncated) in p]
    assert len(skipped) == 1 and "image unreadable" in skipped[0]
    assert f"its {lost} expression(s) were not evaluated" in skipped[0]
    assert results["metrics"]["n"] == limit - lost
    assert first.image_id not in {r["image_id"] for r in results["predictions"]}


def test_engine_names_an_image_a_worker_cannot_decode(data, tiny_rn) -> None:
    from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
    from refcocog_tools.methods.registry import make_method
    from refcocog_tools.proposals.proposers import GroundTruthProposer

    groups = group_by_image(RefCOCOg(data), limit=6)
    broken = groups[1][0].image_path
    broken.write_bytes(b"not an image")
    method = make_method("baseline", [tiny_rn])
    # Without a place to record it, the problem ends the run as a DatasetError of one line.
    with pytest.raises(DatasetError) as info:
        evaluate_groups(groups, method, GroundTruthProposer(), workers=2, batch_size=8)
    assert str(info.value).startswith(f"{broken}: image unreadable")
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    skipped: dict[int, str] = {}
    rows = evaluate_groups(groups, method, GroundTruthProposer(), workers=2, batch_size=8,
                           skipped=skipped)
    assert list(skipped) == [1] and skipped[1].startswith(f"{broken}: image unreadable")
    plain = evaluate_groups(groups, method, GroundTruthProposer(), skipped={})
    assert rows == plain and len(rows) == sum(len(g) for g in groups) - len(groups[1])

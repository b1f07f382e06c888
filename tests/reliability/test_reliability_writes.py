"""Writes that cannot destroy (issue 22, item 2 and the train-regressor cases).

Each test reproduces one way a command used to lose a file: an existing results file
overwritten without ``--force``, an ``--out`` naming one of the run's own inputs, a
``train-regressor --force`` that deleted the earlier run before finding a bad argument, two runs
into one folder, a run killed half-way. Every file that must survive is compared byte for byte
(and by modification time) with what it held before.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import refcocog_tools
from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.core.output_paths import lock_path, output_lock, recover_interrupted_swap
from refcocog_tools.data.annotations import INSTANCES_FILE
from refcocog_tools.data.dataset import REFS_FILE

PACKAGE_ROOT = Path(refcocog_tools.__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _evaluate(root: Path, out: Path, *extra: str) -> int:
    return cli_main(["evaluate", "--data-root", str(root), "--method", "baseline",
                     "--clip", "tiny-rn", "--proposals", "gt", "--limit", "2", "--quiet",
                     "--out", str(out), *extra])


def _train(root: Path, out: Path, emb: Path, *extra: str) -> int:
    return cli_main(["train-regressor", "--data-root", str(root), "--clip", "tiny-rn",
                     "--epochs", "1", "--embedding-cache", str(emb), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_rn,
            mini_data: Path) -> tuple[Path, Path]:
    """One earlier training run (1 epoch, tiny-rn) and the embedding cache it filled."""
    base = tmp_path_factory.mktemp("earlier-run")
    cache = Path(shutil.copytree(session_cache, base / "cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REFCOCOG_TOOLS_CACHE", str(cache))
        assert _train(mini_data, base / "run", base / "emb") == 0
    return base / "run", base / "emb"


@pytest.fixture
def earlier(trained: tuple[Path, Path], tmp_path: Path, isolated_cache: Path
            ) -> tuple[Path, Path, dict[str, tuple[bytes, int]]]:
    """A copy of the earlier run in this test's folder, its embedding cache and its snapshot."""
    run = Path(shutil.copytree(trained[0], tmp_path / "run"))
    return run, trained[1], _snapshot(run)


# ----------------------------------------------------------------------------------------------
# evaluate / bench --out: an existing file needs --force; an input never is an output
# ----------------------------------------------------------------------------------------------
def test_existing_results_file_is_untouched_without_force(mini_data, tmp_path, isolated_cache,
                                                          capsys) -> None:
    out = tmp_path / "results.json"
    out.write_text('{"earlier": "results"}\n')
    before = _file_state(out)
    started = time.perf_counter()
    assert _evaluate(mini_data, out) == 2
    err = capsys.readouterr().err
    assert f"{out}: a results file is already there; pass --force" in err
    assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - started < 5  # refused before any model was loaded
    assert _file_state(out) == before
    assert _evaluate(mini_data, out, "--force") == 0
    assert out.read_bytes() != before[0] and b'"metrics"' in out.read_bytes()
    assert not lock_path(out).exists()  # the run's lock file went with the run


def test_bench_out_needs_force_too(mini_data, tmp_path, isolated_cache, capsys) -> None:
    out = tmp_path / "bench.json"
    out.write_text("{}\n")
    before = _file_state(out)
    assert cli_main(["bench", "--data-root", str(mini_data), "--method", "largest", "--clip",
                     "", "--limit", "1", "--out", str(out)]) == 2
    assert f"{out}: a bench report is already there; pass --force" in capsys.readouterr().err
    assert _file_state(out) == before


def _own_inputs(data: Path, tmp_path: Path, isolated_cache: Path) -> dict[str, tuple[Path, Path,
                                                                                    list[str]]]:
    """name -> (the --out given, the input file it would destroy, extra arguments)."""
    instances = data / "annotations" / INSTANCES_FILE
    refs = data / "annotations" / REFS_FILE
    dets = tmp_path / "dets.json"
    dets.write_text("[]\n")
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"a regressor checkpoint")
    clip_file = tmp_path / "my-clip.pt"
    clip_file.write_bytes(b"a CLIP checkpoint")
    symlink = tmp_path / "link.json"
    symlink.symlink_to(instances)
    hard_link = tmp_path / "hard-link.json"
    os.link(refs, hard_link)
    cached = isolated_cache / "embeddings" / "image.json"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("{}")
    return {
        "instances": (instances, instances, []),
        "refs": (refs, refs, []),
        "dets": (dets, dets, ["--method", "largest", "--clip", "", "--proposals",
                              f"dets:{dets}"]),
        "symlink-to-instances": (symlink, instances, []),
        "hard-link-to-refs": (hard_link, refs, []),
        "checkpoint": (checkpoint, checkpoint, ["--method", "regressor", "--checkpoint",
                                                str(checkpoint)]),
        "clip-file": (clip_file, clip_file, ["--clip", str(clip_file)]),
        "in-images-folder": (data / "images" / "results.json", instances, []),
        "cache-file": (cached, cached, []),
    }


@pytest.mark.parametrize("case", ["instances", "refs", "dets", "symlink-to-instances",
                                  "hard-link-to-refs", "checkpoint", "clip-file",
                                  "in-images-folder", "cache-file"])
def test_an_own_input_is_never_the_output_even_with_force(case, data, tmp_path, isolated_cache,
                                                          capsys) -> None:
    out, source, extra = _own_inputs(data, tmp_path, isolated_cache)[case]
    before, data_before = _file_state(source), _snapshot(data)
    assert _evaluate(data, out, *extra, "--force") == 2
    err = capsys.readouterr().err
    assert f"{out}: refused, even with --force" in err and len(err.strip().splitlines()) == 1
    assert _file_state(source) == before and _snapshot(data) == data_before
    assert not (data / "images" / "results.json").exists()


def test_toy_clip_out_never_replaces_the_embedded_weights(tmp_path, isolated_cache,
                                                          capsys) -> None:
    packed = Path(refcocog_tools.__file__).parent / "weights" / "toy-rn.pt.gz"
    before = _file_state(packed)
    assert cli_main(["train-toy-clip", "--out", str(packed), "--force", "--steps", "1"]) == 2
    assert "refused, even with --force" in capsys.readouterr().err
    assert _file_state(packed) == before


# ----------------------------------------------------------------------------------------------
# make-mini-dataset --force: only over a dataset it wrote
# ----------------------------------------------------------------------------------------------
def test_make_mini_dataset_force_never_overwrites_a_real_data_root(tmp_path, data,
                                                                  capsys) -> None:
    real = tmp_path / "real"
    (real / "annotations").mkdir(parents=True)
    (real / "images").mkdir()
    (real / "annotations" / INSTANCES_FILE).write_text('{"images": [], "annotations": []}')
    (real / "images" / "COCO_train2014_000000000009.jpg").write_bytes(b"a photo")
    before = _snapshot(real)
    assert cli_main(["make-mini-dataset", str(real), "--images", "3", "--force"]) == 2
    assert "make-mini-dataset did not write" in capsys.readouterr().err
    assert _snapshot(real) == before
    # A folder it wrote, even edited by hand, is its to overwrite.
    (data / "annotations" / INSTANCES_FILE).write_text("{} ")
    assert cli_main(["make-mini-dataset", str(data), "--images", "3", "--force"]) == 0


def test_make_mini_dataset_never_writes_into_the_cache(isolated_cache, capsys) -> None:
    root = isolated_cache / "mini-refcocog"
    assert cli_main(["make-mini-dataset", str(root), "--images", "3", "--force"]) == 2
    assert "refused, even with --force" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# train-regressor --force: the earlier run goes only when the new one is complete
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--clip", "tiny-rnn"], ["--data-root", "MISSING"]])
def test_force_with_a_bad_argument_keeps_the_earlier_run(bad, earlier, mini_data, tmp_path,
                                                         capsys) -> None:
    run, emb, before = earlier
    bad = [str(tmp_path / "no-such-root") if arg == "MISSING" else arg for arg in bad]
    started = time.perf_counter()
    assert _train(mini_data, run, emb, *bad, "--force") == 2
    err = capsys.readouterr().err
    assert ("tiny-rnn" in err) if "--clip" in bad else ("no-such-root" in err)
    assert time.perf_counter() - started < 10  # found before any model or embedding
    assert _snapshot(run) == before


def test_force_refuses_a_folder_holding_other_files(earlier, mini_data, capsys) -> None:
    run, emb, _ = earlier
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    assert _train(mini_data, run, emb, "--force") == 2
    assert f"{run / 'notes.txt'}: refused" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_run_folder_may_not_hold_or_be_an_input(data, tmp_path, isolated_cache, capsys) -> None:
    before = _snapshot(data)
    for out in (data / "annotations", data, tmp_path / "emb" / "run"):
        assert _train(data, out, tmp_path / "emb", "--force") == 2
        assert "refused, even with --force" in capsys.readouterr().err
    assert _snapshot(data) == before


def test_force_replaces_the_earlier_run_whole(earlier, mini_data, tmp_path, capsys) -> None:
    run, emb, before = earlier
    assert _train(mini_data, run, emb, "--force", "--epochs", "0") == 0
    # Zero epochs write no checkpoint: nothing of the earlier run may remain beside the new.
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


# ----------------------------------------------------------------------------------------------
# The run-folder lock
# ----------------------------------------------------------------------------------------------
def _lock_holder(path: Path) -> subprocess.Popen:
    """A process holding ``output_lock(path)`` until killed."""
    code = ("import sys; from pathlib import Path; "
            "from refcocog_tools.core.output_paths import output_lock\n"
            f"with output_lock(Path({str(path)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_a_held_folder_is_refused_naming_the_pid(earlier, mini_data,
                                                                   capsys) -> None:
    run, emb, before = earlier
    holder = _lock_holder(run)
    try:
        for extra in (["--force"], ["--resume"]):
            assert _train(mini_data, run, emb, *extra) == 2
            err = capsys.readouterr().err
            assert f"another run (pid {holder.pid}) is writing" in err, err
            assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The kernel dropped the lock with the killed process: the next run goes ahead.
    assert _train(mini_data, run, emb, "--resume", "--epochs", "2") == 0
    assert not lock_path(run).exists()


def test_evaluate_holds_its_results_file_lock(mini_data, tmp_path, isolated_cache,
                                              capsys) -> None:
    out = tmp_path / "r.json"
    with output_lock(out, "results file"):
        assert _evaluate(mini_data, out) == 2
    assert f"another run (pid {os.getpid()}) is writing" in capsys.readouterr().err
    assert not out.exists()


def test_a_killed_force_run_leaves_the_earlier_run(earlier, mini_data, tmp_path,
                                                   isolated_cache) -> None:
    run, emb, before = earlier
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "REFCOCOG_TOOLS_CACHE":
           str(isolated_cache), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-u", "-m", "refcocog_tools", "train-regressor", "--data-root",
         str(mini_data), "--clip", "tiny-rn", "--epochs", "100000", "--embedding-cache",
         str(emb), "--out", str(run), "--force"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            seen.append(line)
            if line.startswith("epoch 3/") or not line:
                break
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".run.refcocog-new-")]
        assert staged and (staged[0] / "last.pt").is_file(), "".join(seen)  # mid-way
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert _snapshot(run) == before
    # The next run clears what the killed one left and replaces the earlier run whole.
    assert _train(mini_data, run, emb, "--force") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    assert _snapshot(run) != before


def test_a_swap_cut_between_its_renames_is_undone(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"the earlier run")
    before = _snapshot(run)
    aside, staged = tmp_path / ".run.refcocog-old-4242", tmp_path / ".run.refcocog-new-4242"
    run.rename(aside)
    staged.mkdir()
    (staged / "last.pt").write_bytes(b"half a new run")
    recover_interrupted_swap(run)
    assert _snapshot(run) == before and not aside.exists() and not staged.exists()
    # Both there: the swap finished and the set-aside folder is the old run's remains.
    aside.mkdir()
    recover_interrupted_swap(run)
    assert _snapshot(run) == before and not aside.exists()

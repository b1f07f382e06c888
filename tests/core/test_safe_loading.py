"""No file the tool loads may run code: a hostile checkpoint at every entry point is refused.

The hostile file is a real ``torch.save`` archive whose pickle, when loaded the unsafe way,
creates a marker file. Every test asserts a clear refusal (or, for caches, a recomputation with
a warning) and that the marker never appears.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.core.files import UnsafeFileError, load_torch_file


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: the file appears as a side effect."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_hostile(path: Path, marker: Path) -> Path:
    """A torch archive that looks like a checkpoint and runs code when loaded unsafely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "state_dict": {"w": torch.zeros(2)}}, path)
    return path


def test_the_planted_payload_is_live(tmp_path: Path, marker: Path) -> None:
    """Control: the file really runs its payload when loaded without weights_only."""
    path = plant_hostile(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_torch_file_refuses_and_names_the_reference(tmp_path: Path, marker: Path) -> None:
    path = plant_hostile(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeFileError, match="refused") as info:
        load_torch_file(path)
    assert str(path) in str(info.value) and "open" in str(info.value)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()


def _evaluate(data: Path, out: Path, *extra: str) -> int:
    return cli_main(["evaluate", "--data-root", str(data), "--method", "baseline",
                     "--clip", "tiny-rn", "--proposals", "gt", "--limit", "2",
                     "--out", str(out), *extra])


def _assert_refused(code: int, capsys: pytest.CaptureFixture[str], path: Path,
                    marker: Path) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err and "refused" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not marker.exists()
    return err


def test_hostile_clip_checkpoint(tmp_path, mini_data, isolated_cache, marker, capsys) -> None:
    evil = plant_hostile(tmp_path / "clip.pt", marker)
    code = _evaluate(mini_data, tmp_path / "r.json", "--clip", str(evil))
    _assert_refused(code, capsys, evil, marker)
    assert not (tmp_path / "r.json").exists()


def test_hostile_yolo_path(tmp_path, mini_data, isolated_cache, marker, capsys) -> None:
    evil = plant_hostile(tmp_path / "det.pt", marker)
    code = _evaluate(mini_data, tmp_path / "r.json", "--proposals", str(evil))
    _assert_refused(code, capsys, evil, marker)


def test_hostile_yolo_cached_name(tmp_path, mini_data, isolated_cache, marker, capsys) -> None:
    evil = plant_hostile(isolated_cache / "yolo" / "yolov8s.pt", marker)
    code = _evaluate(mini_data, tmp_path / "r.json", "--proposals", "yolov8s")
    _assert_refused(code, capsys, evil, marker)


def test_ultralytics_is_imported_with_safe_loading(tmp_path: Path) -> None:
    """In a fresh process the project sets ULTRALYTICS_SAFE_LOAD before Ultralytics reads it,
    and the embedded detector still loads under the restriction."""
    env = {**os.environ, "REFCOCOG_TOOLS_CACHE": str(tmp_path), "ULTRALYTICS_SAFE_LOAD": "0"}
    code = ("from refcocog_tools.models.yolo_models import load_yolo\n"
            "model = load_yolo('tiny-yolov8s')\n"
            "from ultralytics.nn import tasks\n"
            "assert tasks.SAFE_LOAD is True, tasks.SAFE_LOAD\n"
            "print(len(model.names))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "80"


def test_hostile_regressor_checkpoint(tmp_path, mini_data, isolated_cache, marker,
                                      capsys) -> None:
    evil = plant_hostile(tmp_path / "best.pt", marker)
    code = _evaluate(mini_data, tmp_path / "r.json", "--method", "regressor",
                     "--checkpoint", str(evil))
    _assert_refused(code, capsys, evil, marker)


def test_hostile_training_state_on_resume(tmp_path, mini_data, isolated_cache, marker,
                                          capsys) -> None:
    out = tmp_path / "run"
    evil = plant_hostile(out / "last.pt", marker)
    code = cli_main(["train-regressor", "--data-root", str(mini_data), "--epochs", "1",
                     "--embedding-cache", str(tmp_path / "emb"), "--out", str(out),
                     "--resume"])
    _assert_refused(code, capsys, evil, marker)


def test_hostile_embedding_cache_files_are_recomputed(tmp_path, mini_data, isolated_cache,
                                                      marker, tiny_rn) -> None:
    folder = isolated_cache / "embeddings" / tiny_rn.checksum[:16]
    planted = [plant_hostile(folder / name, marker)
               for name in ("image.pt", "text.pt", "image.rank1.pt")]
    with pytest.warns(UserWarning, match="refused"):
        assert _evaluate(mini_data, tmp_path / "r.json") == 0
    assert not marker.exists()
    # The run's own files were rewritten with plain data; another shard's stays refused.
    for path in planted[:2]:
        assert isinstance(load_torch_file(path), dict)


def test_hostile_regressor_embedding_cache_is_recomputed(tmp_path, mini_data, tiny_rn,
                                                         marker) -> None:
    from refcocog_tools.data.dataset import RefCOCOg
    from refcocog_tools.models.split_embeddings import cache_path, split_embeddings

    dataset = RefCOCOg(mini_data, split="val", view="expression")
    path = plant_hostile(cache_path(tiny_rn, dataset, tmp_path / "emb"), marker)
    with pytest.warns(UserWarning, match="refused"):
        embeddings = split_embeddings(dataset, tiny_rn, cache_root=tmp_path / "emb")
    assert not marker.exists()
    assert len(embeddings.image_ids) > 0 and path.is_file()


def test_yolo_file_is_vetted_when_ultralytics_was_imported_unsafely(
        tmp_path, marker, monkeypatch) -> None:
    """Ultralytics imported before this package (flag unread): the file is checked with its
    restricted loader first."""
    from ultralytics.nn import tasks

    from refcocog_tools.models.backbones import BackboneError
    from refcocog_tools.models.yolo_models import load_yolo

    monkeypatch.setattr(tasks, "SAFE_LOAD", False)
    evil = plant_hostile(tmp_path / "det.pt", marker)
    with pytest.raises(BackboneError, match="refused"):
        load_yolo(str(evil), cache=tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Regressor checkpoints: every problem is one clear message, never a torch traceback
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    from refcocog_tools.methods.regressor.data import RegressionData
    from refcocog_tools.methods.regressor.training import TrainConfig, train_regressor

    def data(n: int, seed: int) -> RegressionData:
        g = torch.Generator().manual_seed(seed)
        xy = torch.rand(n, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], dim=1)
        return RegressionData.from_features(torch.randn(n, 8, generator=g),
                                            torch.randn(n, 8, generator=g), boxes,
                                            torch.full((n, 2), 100.0))

    out = tmp_path_factory.mktemp("regressor")
    clip = [{"name": "fake", "checksum": "a" * 64, "untrained": True}]
    train_regressor(data(32, 0), data(8, 1), TrainConfig(epochs=1), out_dir=out, clip=clip)
    return out / "best.pt"


@pytest.mark.parametrize("problem", ["missing", "foreign", "truncated", "empty", "hostile",
                                     "damaged"])
def test_bad_regressor_checkpoints_are_clear_errors(problem, tmp_path, trained_checkpoint,
                                                    marker) -> None:
    from refcocog_tools.methods.regressor.training import RegressorError, load_checkpoint

    path = tmp_path / "best.pt"
    if problem == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif problem == "truncated":
        path.write_bytes(trained_checkpoint.read_bytes()[:2000])
    elif problem == "empty":
        path.write_bytes(b"")
    elif problem == "hostile":
        plant_hostile(path, marker)
    elif problem == "damaged":
        payload = torch.load(trained_checkpoint, weights_only=True)
        payload["state_dict"] = {"0.weight": torch.zeros(1)}
        torch.save(payload, path)
    with pytest.raises(RegressorError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "weights_only" not in message
    expected = {"missing": "not found", "foreign": "not a refcocog-tools regressor",
                "truncated": "not a readable", "empty": "not a readable",
                "hostile": "refused", "damaged": "damaged"}[problem]
    assert expected in message
    assert not marker.exists()


def test_regressor_checkpoint_of_other_backbones_is_a_clear_cli_error(
        tmp_path, mini_data, isolated_cache, trained_checkpoint, capsys) -> None:
    code = _evaluate(mini_data, tmp_path / "r.json", "--method", "regressor",
                     "--checkpoint", str(trained_checkpoint))
    err = capsys.readouterr().err
    assert code == 2 and "checksums differ" in err and "Traceback" not in err

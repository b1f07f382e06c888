"""Shared fixtures: the embedded dataset and the embedded backbones, built once per session.

The session gets its own cache directory, so tests never read a developer's real cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["YOLO_OFFLINE"] = "1"
# Any test that imports ultralytics directly must not write its settings into the home folder.
_ULTRALYTICS_CONFIG = tempfile.mkdtemp(prefix="refcocog-tests-ultralytics-")
os.environ["YOLO_CONFIG_DIR"] = _ULTRALYTICS_CONFIG


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("refcocog-cache")


@pytest.fixture(scope="session")
def mini_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refcocog_tools.data.minidata import write_mini_dataset

    return write_mini_dataset(tmp_path_factory.mktemp("mini-data"), n_images=12, seed=0)


@pytest.fixture(scope="session")
def tiny_rn(session_cache: Path):
    from refcocog_tools.models.clip_loading import load_clip

    return load_clip("tiny-rn", cache=session_cache)


@pytest.fixture(scope="session")
def tiny_vit(session_cache: Path):
    from refcocog_tools.models.clip_loading import load_clip

    return load_clip("tiny-vit", cache=session_cache)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_cache: Path,
                   tiny_rn, tiny_vit) -> Path:
    """Point REFCOCOG_TOOLS_CACHE at a fresh folder that already holds the tiny checkpoints."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(session_cache, cache, dirs_exist_ok=True)
    monkeypatch.setenv("REFCOCOG_TOOLS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def test_split(mini_data: Path):
    """The embedded dataset's test split, expression view."""
    from refcocog_tools.data.dataset import RefCOCOg

    return RefCOCOg(mini_data, "test")


@pytest.fixture
def data(mini_data: Path, tmp_path: Path) -> Path:
    """A private copy of the embedded dataset that a test may damage."""
    import shutil

    return Path(shutil.copytree(mini_data, tmp_path / "data"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a planted code-running payload would create: it must never appear."""
    return tmp_path / "PWNED"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is marked ``integration`` (slow, end to end):
    ``pytest -m "not integration"`` runs the fast ones alone; ``make test`` runs all."""
    integration = Path(__file__).parent / "integration"
    for item in items:
        if integration in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)

"""A data root's annotation files read and rewritten by tests that damage a copy of them.

Importable from every test folder: pytest puts this folder (conftest.py's) on ``sys.path``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from refcocog_tools.data.annotations import INSTANCES_FILE
from refcocog_tools.data.dataset import REFS_FILE


def read_instances(root: Path) -> dict:
    return json.loads((root / "annotations" / INSTANCES_FILE).read_text())


def write_instances(root: Path, data: dict) -> None:
    (root / "annotations" / INSTANCES_FILE).write_text(json.dumps(data))


def read_refs(root: Path) -> list[dict]:
    # The test's own file, written by the generator: the tool itself never uses pickle.loads.
    return pickle.loads((root / "annotations" / REFS_FILE).read_bytes())


def write_refs(root: Path, refs: list[dict]) -> None:
    (root / "annotations" / REFS_FILE).write_bytes(pickle.dumps(refs, protocol=2))

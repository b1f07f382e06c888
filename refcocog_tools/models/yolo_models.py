"""YOLO detectors (Ultralytics), loaded offline from a local cache, and never running code.

Specs (``load_yolo``): an Ultralytics weights name (``"yolov8s"`` -> ``<cache>/yolo/yolov8s.pt``,
``"yolov8s-seg"`` for the segmentation model), a local ``.pt`` path, or ``"tiny-yolov8s"`` /
``"tiny-yolov8s-seg"``, untrained ``yolov8s.yaml`` / ``yolov8s-seg.yaml`` models generated once
(``untrained_models``). Ultralytics is put offline and quiet, with its configuration inside the
cache, and loads checkpoints with ``torch.load(weights_only=True)`` and an allow-list of model
classes; a named file that is missing is fetched only with ``REFCOCOG_TOOLS_DOWNLOAD=1``, like a
CLIP model (``backbones``).

Only detection and segmentation checkpoints load, and a name says which it must be: a name
ending in ``-seg`` a segmentation model, any other name a detector; a file of the other kind
is refused (a ``.pt`` path may hold either).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refcocog_tools.core.files import sha256_file
from refcocog_tools.core.torchscript_archive import is_torchscript_archive
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.clip_loading import fetch_or_fail, resolve_cache, untrained_marker
from refcocog_tools.models.untrained_models import (
    EMBEDDED_YOLO,
    EMBEDDED_YOLOS,
    TINY_YOLO_CONFIGS,
    UNTRAINED_KEY,
    tiny_yolo_checkpoint,
)

if TYPE_CHECKING:
    from ultralytics import YOLO

SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"


def _ultralytics_loads_safely() -> bool:
    """Whether the imported Ultralytics restricts checkpoint loading to plain data."""
    from ultralytics.nn import tasks

    return bool(getattr(tasks, "SAFE_LOAD", False)) and tasks._SafeLoad.SUPPORTED


def _ultralytics_env(cache: Path) -> None:
    """Offline, quiet Ultralytics: must run before the first ``import ultralytics``."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache / "ultralytics"))
    # Ultralytics' own progress/log lines would print machine paths; keep it to errors.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # Checkpoints are loaded with torch.load(weights_only=True) and an allow-list of model
    # classes: a .pt file can never run code. Ultralytics reads this once, at import.
    os.environ[SAFE_LOAD_ENV] = "1"


# What each task's model gives, in words for the refusals.
YOLO_TASKS = {"detect": "a detection model (boxes only)",
              "segment": "a segmentation model (a box and a mask per detection)"}


def expected_task(spec: str) -> str | None:
    """The task a spec names: ``"segment"`` for a name ending in ``-seg``, ``"detect"`` for
    any other name, None for a path (its file says)."""
    spec = str(spec).strip()
    if spec in TINY_YOLO_CONFIGS:
        return TINY_YOLO_CONFIGS[spec][1]
    path = Path(spec).expanduser()
    if path.parent != Path(".") or path.is_file():
        return None
    return "segment" if path.name.removesuffix(".pt").endswith("-seg") else "detect"


def _yolo_path(spec: str, cache: Path) -> Path:
    if spec in EMBEDDED_YOLOS:
        _ultralytics_env(cache)  # before the maker's first import of Ultralytics
        return tiny_yolo_checkpoint(cache, spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():  # a FIFO, a device, a folder: never opened
        raise BackboneError(f"{path}: the YOLO checkpoint is not a regular file")
    if path.parent != Path("."):
        # A path, not a name: never reinterpret it as something to look up.
        raise BackboneError(f"{path}: YOLO checkpoint not found")
    filename = path.name if path.suffix == ".pt" else f"{path.name}.pt"
    directory = cache / "yolo"
    local = directory / filename
    if not local.is_file():
        fetch_or_fail(f"YOLO model {spec!r}",
                       f"https://github.com/ultralytics/assets/releases/download/v8.3.0/{filename}",
                       local)
    return local


def _vet_checkpoint_file(path: Path) -> None:
    """Refuse, before Ultralytics sees it, any file it would load by running code or cannot
    read: only a ``.pt`` torch zip that is not TorchScript goes on to its restricted loader."""
    if path.suffix != ".pt":
        # YOLO() hands any other file to AutoBackend, which calls torch.jit.load on a
        # .torchscript export and other runtimes on the rest.
        raise BackboneError(f"{path}: refused, only Ultralytics .pt checkpoints are loaded (a "
                            f"{path.suffix or 'suffix-less'} file is an export that would be "
                            "loaded by running its code or another runtime)")
    if is_torchscript_archive(path):
        raise BackboneError(f"{path}: refused, a TorchScript archive (torch.jit.load would run "
                            "its code), not an Ultralytics checkpoint")
    if not zipfile.is_zipfile(path):
        # Every torch.save since PyTorch 1.6 is a zip: this is an empty, truncated or text file.
        raise BackboneError(f"{path}: not a loadable Ultralytics checkpoint (not a torch zip "
                            "archive: empty, truncated or another kind of file)")


def load_yolo(
    spec: str = EMBEDDED_YOLO, device: str | torch.device = "cpu", cache: str | Path | None = None
) -> YOLO:
    """An Ultralytics YOLO from a name in ``<cache>/yolo``, a local ``.pt`` or the tiny default.

    Ultralytics itself never downloads: it is put offline (``YOLO_OFFLINE=1``) and only ever
    gets an existing file path; a missing named file is fetched only with
    ``REFCOCOG_TOOLS_DOWNLOAD=1``. ``model.task`` is ``"detect"`` or ``"segment"``: a
    checkpoint of another task, or of the other one than its name says, is refused.
    """
    cache = resolve_cache(cache)
    _ultralytics_env(cache)
    spec = str(spec).strip()
    path = _yolo_path(spec, cache)
    _vet_checkpoint_file(path)
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    try:
        if not _ultralytics_loads_safely():
            # Ultralytics was imported before this package could set ULTRALYTICS_SAFE_LOAD:
            # check the file with its restricted loader first, so nothing in it can run.
            torch_safe_load(str(path), safe_only=True)
        model = YOLO(str(path))  # a .pt file: its model says its task
    except (TypeError, RuntimeError, ModuleNotFoundError, AttributeError, KeyError, ValueError,
            EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        lines = str(err).replace("ERROR ❌️ ", "").strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        raise BackboneError(f"{path}: refused, not a loadable Ultralytics checkpoint "
                            f"({reason})") from None
    task, expected = _model_task(model), expected_task(spec)
    if task not in YOLO_TASKS:
        raise BackboneError(f"{path}: refused, a YOLO model of task {task!r}; proposals need "
                            "a detection or segmentation checkpoint")
    if expected is not None and task != expected:
        other = "yolov8s" if task == "detect" else "yolov8s-seg"
        raise BackboneError(f"{path}: {YOLO_TASKS[task]}, but {spec!r} names "
                            f"{YOLO_TASKS[expected]}: give the right file, a name like "
                            f"{other!r}, or the file's path")
    model.to(torch.device(device))
    return model


def _model_task(model: YOLO) -> str | None:
    """The model's task, from its architecture where Ultralytics' guess can be wrong.

    Ultralytics takes a checkpoint's task from its ``train_args``, and a checkpoint without
    them reads as ``"detect"``: a segmentation model would then run as a detector, its mask
    head's outputs misread as boxes. Its class says what it is.
    """
    from ultralytics.nn.tasks import SegmentationModel

    task = getattr(model, "task", None)
    if isinstance(getattr(model, "model", None), SegmentationModel) and task != "segment":
        task = model.task = "segment"
        model.overrides["task"] = task
    return task


def _yolo_ckpt_path(model_or_spec: Any, cache: str | Path | None = None) -> Path:
    if isinstance(model_or_spec, (str, Path)):
        return _yolo_path(str(model_or_spec), resolve_cache(cache))
    path = getattr(model_or_spec, "ckpt_path", None)
    if not path:
        raise BackboneError("this YOLO model was not loaded from a checkpoint file")
    return Path(path)


def yolo_untrained(model: YOLO) -> bool:
    """True for the embedded tiny model, or a checkpoint marked by a ``<ckpt>.json`` sidecar."""
    meta = (getattr(model, "ckpt", None) or {}).get(UNTRAINED_KEY) or {}
    if meta.get("untrained"):
        return True
    path = getattr(model, "ckpt_path", None)
    return untrained_marker(Path(path)) if path else False


def yolo_checksum(model_or_spec: YOLO | str | Path, cache: str | Path | None = None) -> str:
    """SHA-256 of the YOLO checkpoint file (of a loaded model, or of what a spec resolves to)."""
    return sha256_file(_yolo_ckpt_path(model_or_spec, cache))

"""YOLO detectors (Ultralytics), loaded offline from a local cache, and never running code.

Specs (``load_yolo``): an Ultralytics weights name (``"yolov8s"`` -> ``<cache>/yolo/yolov8s.pt``),
a local ``.pt`` path, or ``"tiny-yolov8s"``, an untrained ``yolov8s.yaml`` model generated once
(``untrained_models``). Ultralytics is put offline and quiet, with its configuration inside the
cache, and loads checkpoints with ``torch.load(weights_only=True)`` and an allow-list of model
classes; a named file that is missing is fetched only with ``REFCOCOG_TOOLS_DOWNLOAD=1``, like a
CLIP model (``backbones``).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .backbones import BackboneError, fetch_or_fail, resolve_cache, untrained_marker
from .io_utils import sha256_file
from .torchscript_archive import is_torchscript_archive
from .untrained_models import EMBEDDED_YOLO, UNTRAINED_KEY, tiny_yolo_checkpoint

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


def _yolo_path(spec: str, cache: Path) -> Path:
    if spec == EMBEDDED_YOLO:
        _ultralytics_env(cache)  # before the maker's first import of Ultralytics
        return tiny_yolo_checkpoint(cache)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
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
    ``REFCOCOG_TOOLS_DOWNLOAD=1``.
    """
    cache = resolve_cache(cache)
    _ultralytics_env(cache)
    path = _yolo_path(str(spec).strip(), cache)
    _vet_checkpoint_file(path)
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    try:
        if not _ultralytics_loads_safely():
            # Ultralytics was imported before this package could set ULTRALYTICS_SAFE_LOAD:
            # check the file with its restricted loader first, so nothing in it can run.
            torch_safe_load(str(path), safe_only=True)
        model = YOLO(str(path), task="detect")
    except (TypeError, RuntimeError, ModuleNotFoundError, AttributeError, KeyError, ValueError,
            EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        lines = str(err).replace("ERROR ❌️ ", "").strip().splitlines()
        reason = lines[0] if lines else type(err).__name__
        raise BackboneError(f"{path}: refused, not a loadable Ultralytics checkpoint "
                            f"({reason})") from None
    model.to(torch.device(device))
    return model


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

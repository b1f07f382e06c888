"""CLIP backbones, loaded offline from a local cache.

CLIP specs (``load_clip``):

* a ``clip.available_models()`` name (``"RN50x16"``, ``"ViT-B/32"`` ...): the OpenAI file must
  already be in ``<cache>/clip``; nothing is ever downloaded, a missing file fails at once with
  a message naming the file and the directory;
* a path to a local checkpoint: a plain ``state_dict`` (what ``clip.load`` cannot read, see
  openai/CLIP#396) or an OpenAI TorchScript archive, read as data by ``torchscript_archive``
  (never ``torch.jit.load``, which runs the archive's code);
* ``"tiny-rn"`` / ``"tiny-vit"``: small, *untrained*, deterministic models of the real
  ``clip.model.CLIP`` class, generated once into ``<cache>/clip`` (``untrained_models``) and
  then loaded through the same local-checkpoint route as a user's file. They make every code
  path runnable offline; numbers computed with them say nothing about CLIP.
* ``"toy-rn"``: a small ``clip.model.CLIP`` *trained* by ``refcocog-tools train-toy-clip`` on the
  train split of a generated embedded world (``toy_clip``). It ships inside the package
  (compressed, with its sha256 and training configuration), is unpacked once into
  ``<cache>/clip`` and loaded through the same route. Its numbers are about the synthetic world:
  toy weights, never a RefCOCOg result.

YOLO detectors are loaded by ``yolo_models``, with the same cache and download rules.

``<cache>`` is ``$REFCOCOG_TOOLS_CACHE`` (see ``io_utils.cache_dir``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.core.files import (
    CACHE_ENV,
    UnreadableFileError,
    atomic_write_bytes,
    atomic_write_json,
    cache_dir,
    load_weights_file,
    read_json,
    sha256_file,
)
from refcocog_tools.models.backbones import BackboneError, ClipBackbone, prepare_for_device
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.models.untrained_models import (
    EMBEDDED_CLIPS,
    TINY_CLIP_CONFIGS,
    tiny_clip_checkpoint,
)

# ----------------------------------------------------------------------------------------------
# Embedded models: the untrained ones (untrained_models) and the shipped toy CLIP
# ----------------------------------------------------------------------------------------------
# Trained toy models shipped in ``refcocog_tools/weights``: name -> packed file.
TOY_CLIPS: dict[str, str] = {"toy-rn": "toy-rn.pt.gz"}


def resolve_cache(cache: str | Path | None) -> Path:
    return Path(cache) if cache is not None else cache_dir()


def _sidecar(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``<checkpoint>.json`` sidecar ({} when there is none)."""
    sidecar = Path(str(checkpoint) + ".json")
    if not sidecar.is_file():
        return {}
    meta = read_json(sidecar, "sidecar JSON", BackboneError)
    if not isinstance(meta, dict):
        raise BackboneError(f"{sidecar}: the sidecar JSON must be an object")
    return meta


def untrained_marker(checkpoint: Path) -> bool:
    """A sidecar ``<checkpoint>.json`` with ``{"untrained": true}`` marks random weights."""
    return bool(_sidecar(checkpoint).get("untrained", False))


def _toy_marker(checkpoint: Path) -> bool:
    """A sidecar with ``{"toy": true}`` (what train-toy-clip writes) marks toy weights."""
    return bool(_sidecar(checkpoint).get("toy", False))


def toy_metadata(name: str) -> dict[str, Any]:
    """The shipped toy model's metadata: sha256, training configuration, loss history."""
    packed = resources.files("refcocog_tools") / "weights" / TOY_CLIPS[name]
    meta_file = packed.parent / (TOY_CLIPS[name].removesuffix(".pt.gz") + ".json")
    return json.loads(meta_file.read_text(encoding="utf-8"))


def _toy_checkpoint(name: str, cache: Path) -> Path:
    """The shipped toy model unpacked into ``<cache>/clip`` (again whenever its sha256 differs)."""
    path = cache / "clip" / f"{name}.pt"
    meta = toy_metadata(name)
    if not path.is_file() or sha256_file(path) != meta["sha256"]:
        packed = resources.files("refcocog_tools") / "weights" / TOY_CLIPS[name]
        data = gzip.decompress(packed.read_bytes())
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["sha256"]:
            raise BackboneError(f"the packaged {TOY_CLIPS[name]} unpacks to sha256 {digest}, "
                                f"not the recorded {meta['sha256']}: the installation is damaged")
        atomic_write_bytes(path, data)
    atomic_write_json(Path(str(path) + ".json"), {**meta, "toy": True, "untrained": False})
    return path


# ----------------------------------------------------------------------------------------------
# Loading CLIP
# ----------------------------------------------------------------------------------------------
DOWNLOAD_ENV = "REFCOCOG_TOOLS_DOWNLOAD"


def _missing_message(what: str, filename: str, directory: Path, source: str) -> str:
    return (
        f"{what} is not in the local cache: put the file "
        f"{filename} ({source}) into the directory {directory}/ . That directory is "
        f"${CACHE_ENV}/{directory.name} (set {CACHE_ENV} to use another cache), "
        f"or pass the path of a local checkpoint instead, or set {DOWNLOAD_ENV}=1 to let "
        f"refcocog-tools download it on a machine with network access."
    )


def fetch_or_fail(what: str, url: str, path: Path) -> None:
    """Download ``url`` to ``path`` only when the user opted in; otherwise fail at once.

    Opt-in keeps offline machines (CI, clusters without network) from hanging on a timeout.
    """
    if os.environ.get(DOWNLOAD_ENV, "") not in ("1", "true", "yes"):
        raise BackboneError(_missing_message(what, path.name, path.parent, url))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
        os.replace(tmp, path)
    except Exception as err:  # noqa: BLE001 - any failure becomes the same clear instruction
        tmp.unlink(missing_ok=True)
        raise BackboneError(f"download of {url} failed ({err}). "
                            + _missing_message(what, path.name, path.parent, url)) from err


def _model_from_file(path: Path) -> clip.model.CLIP:
    """A CLIP from a plain state_dict or an OpenAI TorchScript archive, both read as data."""
    # CLIP.__init__ draws a random initialisation that the checkpoint then overwrites: keep
    # that draw off the global RNG, so loading a model never changes a seeded experiment.
    with torch.random.fork_rng(devices=[]):
        model = _read_model(path)
    # build_model converts to fp16; CPU inference needs float32 (and GPU uses autocast).
    return model.float().eval()


def _read_model(path: Path) -> clip.model.CLIP:
    """``clip.model.build_model`` on the file's weights: what ``clip.load(path, jit=False)``
    builds, without ``torch.jit.load`` (which runs a TorchScript archive's code)."""
    try:
        # A TorchScript archive comes back as the state_dict torch.jit.load(...).state_dict()
        # gives (with input_resolution/context_length/vocab_size, which build_model drops).
        state: Any = load_weights_file(path)
    except UnreadableFileError as err:  # also UnsafeFileError: refused, never retried laxer
        raise BackboneError(f"{err} (CLIP checkpoint)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    is_state_dict = isinstance(state, dict) and len(state) > 0 and all(
        isinstance(v, torch.Tensor) for v in state.values()
    )
    if not is_state_dict:
        raise BackboneError(f"{path}: not a CLIP checkpoint (neither a state_dict of tensors "
                            "nor an OpenAI CLIP TorchScript archive)")
    try:
        # build_model deletes keys from its argument: give it a copy.
        return clip.model.build_model(dict(state))
    except (KeyError, RuntimeError, AssertionError, ValueError, IndexError, TypeError) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BackboneError(
            f"{path}: not a CLIP state_dict ({type(err).__name__}: {detail})"
        ) from None


def _backbone_from_file(
    path: Path, name: str, device: torch.device, untrained: bool | None = None,
    toy: bool | None = None,
) -> ClipBackbone:
    model = prepare_for_device(_model_from_file(path), device)
    return ClipBackbone(
        name=name,
        model=model,
        preprocess=clip.clip._transform(model.visual.input_resolution),
        device=device,
        checksum=sha256_file(path),
        checkpoint=path,
        untrained=untrained_marker(path) if untrained is None else untrained,
        toy=_toy_marker(path) if toy is None else toy,
    )


def load_clip(
    spec: str, device: str | torch.device = "cpu", cache: str | Path | None = None
) -> ClipBackbone:
    """One CLIP backbone: an official name, a local checkpoint path or an embedded tiny model."""
    device = torch.device(device)
    spec = str(spec).strip()
    cache = resolve_cache(cache)
    if spec in TINY_CLIP_CONFIGS:
        return _backbone_from_file(tiny_clip_checkpoint(spec, cache), spec, device, untrained=True)
    if spec in TOY_CLIPS:
        return _backbone_from_file(_toy_checkpoint(spec, cache), spec, device, untrained=False,
                                   toy=True)
    if spec in clip.available_models():
        url = clip.clip._MODELS[spec]
        filename = os.path.basename(url)
        directory = cache / "clip"
        path = directory / filename
        if not path.is_file():
            fetch_or_fail(f"CLIP model {spec!r}", url, path)
        checksum = sha256_file(path)
        expected = url.split("/")[-2]
        if checksum != expected:
            # clip.load would try to re-download a file with the wrong checksum: fail instead.
            raise BackboneError(
                f"{path}: SHA-256 {checksum} differs from the published {expected}; the file is "
                f"damaged or not {spec!r}. Replace it with {filename} from {url}."
            )
        # Built from the verified file's weights as clip.load(name, jit=False) builds them,
        # without a second hash of the file, any chance of a download, or torch.jit.load.
        return _backbone_from_file(path, spec, device, untrained=untrained_marker(path))
    path = Path(spec).expanduser()
    if path.is_file():
        return _backbone_from_file(path, path.name, device)
    if path.exists():  # a FIFO, a device, a folder: never opened
        raise BackboneError(f"{path}: the CLIP checkpoint is not a regular file")
    raise BackboneError(
        f"unknown CLIP spec {spec!r}: not a file, not one of {clip.available_models()} "
        f"and not an embedded model {[*EMBEDDED_CLIPS, *TOY_CLIPS]}"
    )


def load_clips(
    specs: str | Sequence[str], device: str | torch.device = "cpu", cache: str | Path | None = None
) -> list[ClipBackbone]:
    """Load several backbones; ``"tiny-rn,tiny-vit"`` gives two (ensembles average later)."""
    if isinstance(specs, str):
        specs = specs.split(",")
    names = [s.strip() for s in specs if s and s.strip()]
    if not names:
        raise BackboneError("no CLIP backbone given")
    return [load_clip(name, device=device, cache=cache) for name in names]

"""A command's inputs, named from its options, so the output door (``core.output_paths``) can
refuse to write over one of them, and a cheap check that they are there before a run starts."""

from __future__ import annotations

import os
from pathlib import Path

from refcocog_tools.core.files import cache_dir
from refcocog_tools.core.output_paths import ProtectedPaths
from refcocog_tools.data.annotations import INSTANCES_FILE, DatasetError, _annotation_files
from refcocog_tools.data.layouts import Layout
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.clip_loading import TOY_CLIPS
from refcocog_tools.models.openai_clip import clip as openai_clip
from refcocog_tools.models.untrained_models import EMBEDDED_CLIPS, TINY_CLIP_CONFIGS

# The tool's own folders in the cache: weights, embeddings and the embedded data root.
CACHE_FOLDERS = ("clip", "yolo", "embeddings", "regressor-embeddings", "mini-refcocog")


def command_inputs(data_root: Path | None = None, refs_file: str | None = None,
                   clip: str = "", proposals: str = "", checkpoint: Path | None = None,
                   embedding_cache: Path | None = None) -> ProtectedPaths:
    """The inputs of a command from its options (``None`` / empty: the option is not given).

    Always protected: the tool's cache folders (``CACHE_FOLDERS`` under ``cache_dir()``) and the
    embedded weights shipped in the package.
    """
    inputs = ProtectedPaths()
    if data_root is not None:
        root = Path(data_root).expanduser()
        inputs.add_file(root / "annotations" / INSTANCES_FILE, "data root's instances file")
        if refs_file:
            inputs.add_file(root / "annotations" / refs_file, "data root's refs file")
        inputs.add_folder(root / "annotations", "data root's annotations folder")
        inputs.add_folder(root / "images", "data root's images folder")
    for spec in (s.strip() for s in clip.split(",")):
        if spec and _is_a_file(spec):
            inputs.add_file(spec, "--clip checkpoint")
            if _is_a_file(spec + ".json"):
                inputs.add_file(spec + ".json", "--clip checkpoint's sidecar")
    proposals = proposals.strip()
    if proposals.startswith("dets:"):
        inputs.add_file(proposals[len("dets:"):], "--proposals detections file")
    elif proposals and _is_a_file(proposals):
        inputs.add_file(proposals, "--proposals detector checkpoint")
    inputs.add_file(checkpoint, "--checkpoint")
    inputs.add_folder(embedding_cache, "embedding cache folder")
    cache = cache_dir()
    for name in CACHE_FOLDERS:
        inputs.add_folder(cache / name, f"tool's cache folder ({name})")
    inputs.add_folder(Path(__file__).resolve().parents[1] / "weights",
                      "package's embedded weights folder")
    return inputs


def _is_a_file(spec: str) -> bool:
    """A model spec that names an existing file (``ViT-B/32`` names a model, not a path). A
    spec naming no file cannot be overwritten: loading it fails before anything is written."""
    try:
        return Path(spec).expanduser().is_file()
    except OSError:
        return False


def check_run_inputs(data_root: Path, layout: Layout, clip: str) -> None:
    """The data root's annotation files are there and readable, and every ``clip`` spec names
    a model this tool can load; checked without loading anything, so that a run that replaces
    an earlier one fails on a misspelt name or a missing folder before it starts."""
    for path in _annotation_files(Path(data_root).expanduser(), layout):
        if not os.access(path, os.R_OK):
            raise DatasetError(f"{path}: annotation file not readable (permission denied)")
    names = [s.strip() for s in clip.split(",") if s.strip()]
    if not names:
        raise BackboneError("no CLIP backbone given")
    known = {*TINY_CLIP_CONFIGS, *TOY_CLIPS, *openai_clip.available_models()}
    for spec in names:
        if spec not in known and not _is_a_file(spec):
            raise BackboneError(f"unknown CLIP spec {spec!r}: not a file, not one of "
                                f"{openai_clip.available_models()} and not an embedded model "
                                f"{[*EMBEDDED_CLIPS, *TOY_CLIPS]}")


# ----------------------------------------------------------------------------------------------
# The lock a writer holds
# ----------------------------------------------------------------------------------------------

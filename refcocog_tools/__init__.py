"""refcocog-tools: training-free visual grounding with CLIP on RefCOCOg.

What a user calls is importable from here, each name from one place (the layer that defines it
is imported on first use, so ``import refcocog_tools`` stays light)::

    from refcocog_tools import RefCOCOg, ground, evaluate, load_clips, make_method, make_proposer

Chapters import what they call from ``refcocog_tools.report``.
"""

import importlib
import os
from typing import Any

# No checkpoint may run code: Ultralytics reads this flag once, when it is first imported, and
# then loads .pt files with torch.load(weights_only=True) and an allow-list of model classes.
os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"

from refcocog_tools.data.dataset import RefCOCOg, RefItem, collate_items, validate  # noqa: E402

__version__ = "0.1.0"

# The public names of the higher layers: name -> the module that defines it.
_PUBLIC = {
    "RunSpec": "refcocog_tools.engine.run",
    "build_run": "refcocog_tools.engine.run",
    "evaluate": "refcocog_tools.engine.evaluate",
    "ground": "refcocog_tools.engine.ground",
    "load_clip": "refcocog_tools.models.clip_loading",
    "load_clips": "refcocog_tools.models.clip_loading",
    "make_method": "refcocog_tools.methods.registry",
    "make_proposer": "refcocog_tools.proposals.proposers",
    "write_mini_dataset": "refcocog_tools.data.minidata",
}

__all__ = ["RefCOCOg", "RefItem", "collate_items", "validate", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'refcocog_tools' has no attribute {name!r}")

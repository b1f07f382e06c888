"""refcocog-tools: training-free visual grounding with CLIP on RefCOCOg."""

import os

# No checkpoint may run code: Ultralytics reads this flag once, when it is first imported, and
# then loads .pt files with torch.load(weights_only=True) and an allow-list of model classes.
os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"

from refcocog_tools.data.dataset import RefCOCOg, RefItem, collate_items, validate

__version__ = "0.1.0"

__all__ = ["RefCOCOg", "RefItem", "collate_items", "validate", "__version__"]

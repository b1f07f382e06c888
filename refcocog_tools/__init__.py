"""refcocog-tools: training-free visual grounding with CLIP on RefCOCOg."""

from .dataset import RefCOCOg, RefItem, collate_items, validate

__version__ = "0.1.0"

__all__ = ["RefCOCOg", "RefItem", "collate_items", "validate", "__version__"]

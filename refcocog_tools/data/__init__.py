"""The data layer: RefCOCO-family layouts, annotation files, the dataset, the embedded
synthetic generator and the language analysis of expressions.

May import: ``core``.
"""

from refcocog_tools.data.dataset import RefCOCOg, RefItem, collate_items, validate

__all__ = ["RefCOCOg", "RefItem", "collate_items", "validate"]

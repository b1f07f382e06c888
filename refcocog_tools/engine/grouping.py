"""Expressions grouped by image: the unit the engine decodes, proposes and encodes once."""

from __future__ import annotations

from refcocog_tools.data.dataset import RefCOCOg, RefItem


def group_by_image(dataset: RefCOCOg, limit: int = 0) -> list[list[RefItem]]:
    """Expression items grouped by image, in dataset order; ``limit`` > 0 keeps the first N.

    Computed once per run: the check before the run and the engine take the same groups."""
    if dataset.view != "expression":
        raise ValueError("the engine evaluates one prediction per expression: use "
                         "view='expression'")
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    groups: dict[int, list[RefItem]] = {}
    for index in range(count):
        item = dataset[index]
        groups.setdefault(item.image_id, []).append(item)
    return list(groups.values())

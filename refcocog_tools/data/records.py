"""What the annotation files become: an image's COCO instances and the refs that point at them,
with boxes as xyxy pixels, and the errors a malformed file gives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Box = tuple[float, float, float, float]


class DatasetError(ValueError):
    """A RefCOCOg file is missing or malformed; the message names the file and the field."""


class DuplicateIdError(DatasetError):
    """The only problems of the annotation files are repeated ids (see ``duplicate_ids``)."""


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO ``[x, y, width, height]`` to ``(x1, y1, x2, y2)``."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


@dataclass(frozen=True)
class Instance:
    """One COCO instance of an image: a possible answer, or a distractor."""

    ann_id: int
    category_id: int
    category: str
    box: Box
    # instances.json's raw ``segmentation`` (polygons or RLE), kept as read and decoded only
    # when a method asks for masks (``masks``), so a box-only run never pays for it.
    segmentation: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RefRecord:
    """Everything about one referred object except its pixels."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    category: str
    split: str
    image_path: Path
    image_size: tuple[int, int]
    box: Box
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]
    instances: tuple[Instance, ...]

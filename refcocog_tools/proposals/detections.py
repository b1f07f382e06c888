"""Detection files as proposals: the JSON detections that MAttNet and ReCLIP read.

``--proposals dets:PATH`` reads any of the three shapes these files take in the field:

1. MAttNet's ``<net>_<imdb>_<tag>_dets.json`` (lichengunc/MAttNet ``tools/run_detect.py``; the
   Mask R-CNN detections most RefCOCO/+/g papers evaluate "with detected boxes" on, and the
   file ReCLIP's ``--detector_file`` takes): a JSON list of detections, each an object::

       {"det_id": 0, "image_id": 581857, "box": [x, y, w, h],
        "category_id": 1, "category_name": "person", "score": 0.98}

2. The same list wrapped as ``{"dets": [...]}`` (the refer toolkit's detections folder).
3. ReCLIP's per-image form (allenai/reclip ``main.py``): a JSON object from image id (a
   decimal string, as JSON keys are) to that image's boxes, each ``[x, y, w, h]``, or each a
   detection object as in 1 without ``image_id``.

Fields: ``image_id`` (integer) and ``box`` (four finite numbers, COCO ``xywh`` in pixels, width
and height > 0) are required; ``score`` (number), ``category_id`` (integer), ``category_name``
(string) and ``det_id`` (integer, unique) are optional, and other fields (MAttNet's ``h5_id``)
are ignored. A box's label is its ``category_name``, else the COCO name of its
``category_id``. An image the file has no detection for gets the whole image as its only
proposal, as in ReCLIP.

A detection may carry its mask as ``segmentation``, in COCO's format (polygons, or RLE
``{"size": [h, w], "counts": ...}`` compressed or not; Mask R-CNN's files hold RLE). It is read
only when masks are asked for (``masks=True``); then a detection without one gets its box as
mask (counted in ``Proposals.masks_from_boxes``), and a file without any is refused.

The file is JSON, read with ``json``: loading it runs no code. Every entry is checked when the
file is read, and every box (and, with masks, every mask) against its image's size before an
evaluation starts (``check_dataset``); each problem names the file, the entry and the field.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from refcocog_tools.core.files import read_json, sha256_file
from refcocog_tools.core.masks import MaskError, as_rle, with_box_fallback
from refcocog_tools.core.masks import decode as decode_mask
from refcocog_tools.data.annotations import DatasetError, RefRecord
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.proposals.structures import Proposals

__all__ = ["COCO_CATEGORIES", "Detection", "DetectionsError", "DetectionsProposer",
           "load_detections"]

# The 80 COCO category ids and names: RefCOCO, RefCOCO+ and RefCOCOg all annotate COCO objects.
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

_IMAGE_KEY = re.compile(r"[0-9]+")


class DetectionsError(DatasetError):
    """A detections file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Detection:
    """One detected box of one image."""

    box: tuple[float, float, float, float]  # xyxy pixels
    score: float | None
    label: str | None
    segmentation: Any = None  # COCO polygons / RLE as in the file; None: no mask


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _parse_entry(entry: Any, where: str, seen_det_ids: dict[int, str]) -> Detection:
    if isinstance(entry, list):  # ReCLIP's per-image form: a bare [x, y, w, h]
        entry = {"box": entry}
    if not isinstance(entry, dict):
        raise DetectionsError(f"{where}: expected an object with a 'box', got "
                              f"{type(entry).__name__}")
    if "box" not in entry:
        raise DetectionsError(f"{where}: field 'box' missing")
    box = entry["box"]
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise DetectionsError(f"{where}: field 'box' must be four numbers [x, y, w, h], got "
                              f"{box!r}")
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise DetectionsError(f"{where}: field 'box' {box} has zero or negative width/height")
    score = entry.get("score")
    if score is not None and not _number(score):
        raise DetectionsError(f"{where}: field 'score' has type {type(score).__name__}")
    det_id = entry.get("det_id")
    if det_id is not None:
        if not _integer(det_id):
            raise DetectionsError(f"{where}: field 'det_id' has type {type(det_id).__name__}")
        if det_id in seen_det_ids:
            raise DetectionsError(f"{where}: field 'det_id' {det_id} repeats "
                                  f"{seen_det_ids[det_id]}")
        seen_det_ids[det_id] = where.rsplit(": ", 1)[-1]
    label = entry.get("category_name")
    if label is not None and not isinstance(label, str):
        raise DetectionsError(f"{where}: field 'category_name' has type {type(label).__name__}")
    category_id = entry.get("category_id")
    if category_id is not None:
        if not _integer(category_id):
            raise DetectionsError(f"{where}: field 'category_id' has type "
                                  f"{type(category_id).__name__}")
        if label is None:
            if category_id not in COCO_CATEGORIES:
                raise DetectionsError(f"{where}: field 'category_id' {category_id} is not a "
                                      "COCO category id, and no 'category_name' says what it is")
            label = COCO_CATEGORIES[category_id]
    segmentation = entry.get("segmentation")
    if segmentation is not None and not isinstance(segmentation, (list, dict)):
        raise DetectionsError(f"{where}: field 'segmentation' has type "
                              f"{type(segmentation).__name__} (COCO polygons or RLE)")
    return Detection((x, y, x + w, y + h), None if score is None else float(score), label,
                     segmentation)


def _entries(data: Any, path: Path) -> Iterable[tuple[int, Any, str]]:
    """(image id, entry, where) for every detection of the file, in the file's order."""
    if isinstance(data, dict) and "dets" in data:
        data = data["dets"]
        if not isinstance(data, list):
            raise DetectionsError(f"{path}: field 'dets' must be a list of detections")
    if isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{path}: detection [{i}]"
            if not isinstance(entry, dict):
                raise DetectionsError(f"{where}: expected an object, got {type(entry).__name__}")
            if "image_id" not in entry:
                raise DetectionsError(f"{where}: field 'image_id' missing")
            if not _integer(entry["image_id"]):
                raise DetectionsError(f"{where}: field 'image_id' has type "
                                      f"{type(entry['image_id']).__name__}")
            yield entry["image_id"], entry, where
        return
    if isinstance(data, dict):
        for key, boxes in data.items():
            if not _IMAGE_KEY.fullmatch(key):
                raise DetectionsError(f"{path}: key {key!r} is not an image id (the per-image "
                                      "form maps decimal image ids to lists of boxes)")
            if not isinstance(boxes, list):
                raise DetectionsError(f"{path}: image {key}: expected a list of boxes, got "
                                      f"{type(boxes).__name__}")
            for j, entry in enumerate(boxes):
                yield int(key), entry, f"{path}: image {key} detection [{j}]"
        return
    raise DetectionsError(f"{path}: expected a JSON list of detections, an object with 'dets', "
                          f"or an object from image id to boxes; got {type(data).__name__}")


def load_detections(path: str | Path) -> dict[int, list[Detection]]:
    """Read and check a detections file; return each image id's detections in file order."""
    path = Path(path)
    # NaN / Infinity are refused as invalid JSON; a FIFO or a 100,000-deep nesting is named.
    data = read_json(path, "detections file", DetectionsError, parse_constant=_reject_constant)
    by_image: dict[int, list[Detection]] = {}
    seen_det_ids: dict[int, str] = {}
    for image_id, entry, where in _entries(data, path):
        if isinstance(entry, dict) and "image_id" in entry and entry["image_id"] != image_id:
            raise DetectionsError(f"{where}: field 'image_id' {entry['image_id']!r} differs "
                                  f"from the image {image_id} it is listed under")
        by_image.setdefault(image_id, []).append(_parse_entry(entry, where, seen_det_ids))
    if not by_image:
        raise DetectionsError(f"{path}: the file holds no detections")
    return by_image


class DetectionsProposer:
    """The detections a file lists for each image (see the module docstring for the format).

    ``masks``: each detection's ``segmentation`` decoded as its mask (a file holding none is
    refused: its masks would all be boxes).
    """

    untrained = False

    def __init__(self, path: str | Path, masks: bool = False) -> None:
        self.path = Path(path)
        self.detections = load_detections(self.path)
        self.masks = bool(masks)
        if self.masks and not any(d.segmentation is not None
                                  for dets in self.detections.values() for d in dets):
            raise DetectionsError(f"{self.path}: no detection has a 'segmentation': the file "
                                  "gives boxes only, and mask proposals need masks")
        self.checksum: str = sha256_file(self.path)
        self.name: str = f"dets:{self.path.name}"
        self._boxes = {image_id: torch.tensor([d.box for d in dets], dtype=torch.float32)
                       for image_id, dets in self.detections.items()}

    def check_dataset(self, records: Sequence[RefRecord]) -> None:
        """Check the file against a split's images before any long work.

        Raises when no image of the split has a detection (the file is for other images) or a
        box lies wholly outside its image; warns about images without detections (they get the
        whole image) and boxes past an image's edge by more than a pixel (they are clipped).
        """
        sizes = {r.image_id: r.image_size for r in records}
        missing = [image_id for image_id in sizes if image_id not in self.detections]
        if sizes and len(missing) == len(sizes):
            raise DetectionsError(f"{self.path}: none of the {len(sizes)} images of this split "
                                  f"has a detection (first image id {missing[0]}): is it the "
                                  "detections file of this dataset?")
        past_edge = 0
        for image_id, (width, height) in sizes.items():
            for k, (x1, y1, x2, y2) in enumerate(self._boxes.get(image_id, torch.empty(0, 4))
                                                 .tolist()):
                if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
                    raise DetectionsError(
                        f"{self.path}: image {image_id} detection [{k}]: field 'box' "
                        f"{[x1, y1, x2 - x1, y2 - y1]} lies outside the {width}x{height} image")
                past_edge += min(x1, y1) < -1 or x2 > width + 1 or y2 > height + 1
                if self.masks:
                    self._mask(image_id, k, (width, height), check_only=True)
        if missing:
            warnings.warn(f"{self.path}: {len(missing)} of {len(sizes)} images of this split have "
                          "no detection and get the whole image as their only proposal",
                          stacklevel=2)
        if past_edge:
            warnings.warn(f"{self.path}: {past_edge} box(es) extend more than a pixel past their "
                          "image and are clipped to it", stacklevel=2)

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals:
        """``image`` is accepted for the common interface; the file needs no pixels."""
        dets = self.detections.get(item.image_id)
        if not dets:
            return Proposals.whole_image(item.image_size)
        width, height = item.image_size
        boxes = self._boxes[item.image_id].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(empty.any()):
            k = int(empty.nonzero()[0])
            raise DetectionsError(f"{self.path}: image {item.image_id} detection [{k}]: field "
                                  f"'box' lies outside the {width}x{height} image")
        scores = [d.score for d in dets]
        masks, from_boxes = None, 0
        if self.masks:
            masks, from_boxes = with_box_fallback(
                [self._mask(item.image_id, k, item.image_size) for k in range(len(dets))],
                boxes, item.image_size)
        return Proposals(boxes, [d.label for d in dets],
                         None if None in scores else torch.tensor(scores),
                         masks=masks, masks_from_boxes=from_boxes)

    def _mask(self, image_id: int, k: int, size: tuple[int, int],
              check_only: bool = False) -> torch.Tensor | None:
        """Detection ``k`` of an image as a mask (None without one); a DetectionsError naming
        the file and the detection when it cannot be decoded or is not the image's size."""
        segmentation = self.detections[image_id][k].segmentation
        try:
            if check_only:
                as_rle(segmentation, size)
                return None
            return decode_mask(segmentation, size)
        except MaskError as err:
            raise DetectionsError(f"{self.path}: image {image_id} detection [{k}]: field "
                                  f"'segmentation': {err}") from None

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]:
        return [self(item) for item in items]

    def config(self) -> dict[str, Any]:
        """JSON-able description, recorded with results."""
        return {"proposer": "dets", "file": str(self.path), "checksum": self.checksum,
                "images": len(self.detections),
                "detections": sum(len(d) for d in self.detections.values()),
                **({"masks": True} if self.masks else {})}

    @property
    def gives_masks(self) -> bool:
        return self.masks

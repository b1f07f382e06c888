"""Object masks: COCO segmentations decoded, boxes rasterised, masks encoded, all with
``pycocotools.mask`` (no rasteriser of our own).

A COCO ``segmentation`` takes three forms: polygons (a list of ``[x1, y1, x2, y2, ...]``, each
at least three points), uncompressed RLE (``{"size": [h, w], "counts": [ints]}``) and
compressed RLE (``counts`` a string, as pycocotools writes it). ``as_rle`` checks any of them
and turns it into one compressed RLE of the image's size; ``decode`` gives the boolean
``(H, W)`` mask. Missing and empty segmentations are ``None`` (the caller falls back to the
box, and counts it: ``with_box_fallback``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask
import torch

# pycocotools 2.0.x's RLE container predates numpy 2's ``copy`` keyword; numpy warns on every
# decode, about pycocotools' code, not ours (the result is the same).
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy",
                        category=DeprecationWarning, module="pycocotools")

__all__ = ["MASKS_FROM_BOXES", "MaskError", "as_rle", "box_masks", "decode", "encode",
           "instance_mask_problems", "mask_fallbacks", "rle_box", "segmentation_problem",
           "with_box_fallback"]

Size = tuple[int, int]  # (width, height), as PIL and the annotations give image sizes


class MaskError(ValueError):
    """A segmentation that cannot be decoded; the caller prefixes the file and the field."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_rle(rle: dict[str, Any], size: Size) -> dict[str, Any]:
    """An RLE dict checked for shape and, where it is cheap, for consistency."""
    width, height = size
    rle_size = rle.get("size")
    if not (isinstance(rle_size, list) and len(rle_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in rle_size)):
        raise MaskError("RLE 'size' must be [height, width]")
    if rle_size != [height, width]:
        raise MaskError(f"RLE size {rle_size} (height, width) differs from the "
                        f"{width}x{height} image")
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise MaskError("RLE 'counts' must be non-negative integers")
        # pycocotools trusts the runs: a total short of the image leaves pixels undefined.
        if sum(counts) != width * height:
            raise MaskError(f"RLE 'counts' cover {sum(counts)} pixels, the image has "
                            f"{width * height}")
        return coco_mask.frPyObjects(rle, height, width)
    if isinstance(counts, (str, bytes)):
        compressed = {"size": rle_size, "counts": counts.encode() if isinstance(counts, str)
                      else counts}
        try:
            pixels = coco_mask.decode(compressed)
        except ValueError as err:  # runs past the image's end
            raise MaskError(f"RLE 'counts' cannot be decoded ({err})") from None
        # A string whose runs stop short of the image decodes the rest from undefined memory:
        # the decoded pixels then disagree with the area the runs say.
        if pixels.max(initial=0) > 1 or int(pixels.sum()) != int(coco_mask.area(compressed)):
            raise MaskError("RLE 'counts' do not cover the image")
        return compressed
    raise MaskError("RLE 'counts' must be a list of integers or a compressed string")


def as_rle(segmentation: Any, size: Size) -> dict[str, Any] | None:
    """One compressed RLE of the image ``size`` for a COCO segmentation; None when there is
    none (missing, or an empty polygon list). MaskError when it is malformed."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None
    width, height = size
    if isinstance(segmentation, dict):
        return _checked_rle(segmentation, size)
    if not isinstance(segmentation, list):
        raise MaskError(f"expected polygons or an RLE object, got {type(segmentation).__name__}")
    for k, polygon in enumerate(segmentation):
        # pycocotools would read a four-number polygon as a box: insist on three points.
        if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                and all(_number(v) and np.isfinite(v) for v in polygon)):
            raise MaskError(f"polygon [{k}] must be an even number (>= 6) of finite "
                            "coordinates [x1, y1, x2, y2, ...]")
    return coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))


def decode(segmentation: Any, size: Size) -> torch.Tensor | None:
    """The ``(H, W)`` boolean mask of a COCO segmentation; None when there is none or it
    covers no pixel."""
    rle = as_rle(segmentation, size)
    if rle is None:
        return None
    pixels = torch.from_numpy(np.ascontiguousarray(coco_mask.decode(rle), dtype=bool))
    return pixels if bool(pixels.any()) else None


def box_masks(boxes: torch.Tensor, size: Size) -> torch.Tensor:
    """``(P, H, W)`` boolean masks of xyxy ``boxes`` (pycocotools' box rasterisation)."""
    width, height = size
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return torch.zeros(0, height, width, dtype=torch.bool)
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    rles = coco_mask.frPyObjects(np.ascontiguousarray(xywh.numpy()), height, width)
    pixels = coco_mask.decode(rles)  # (H, W, P)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(bool))


def with_box_fallback(masks: Sequence[torch.Tensor | None], boxes: torch.Tensor,
                      size: Size) -> tuple[torch.Tensor, int]:
    """Stack per-proposal masks, each missing one replaced by its box rasterised; return the
    ``(P, H, W)`` masks and how many came from boxes."""
    width, height = size
    missing = [k for k, mask in enumerate(masks) if mask is None]
    filled = box_masks(boxes[missing], size) if missing else None
    out = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for k, mask in enumerate(masks):
        if mask is not None:
            if tuple(mask.shape) != (height, width):
                raise MaskError(f"mask {k} is {tuple(mask.shape)}, not the image's "
                                f"{(height, width)}")
            out[k] = mask
    if filled is not None:
        out[missing] = filled
    return out, len(missing)


def encode(mask: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """A boolean ``(H, W)`` mask as COCO compressed RLE, JSON-able (``counts`` a string)."""
    pixels = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = coco_mask.encode(pixels)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_box(rle: dict[str, Any]) -> tuple[float, float, float, float]:
    """The xyxy box of an RLE's pixels (pixel ``x`` spans ``[x, x + 1)``)."""
    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    return (x, y, x + w, y + h)


def segmentation_problem(segmentation: Any, box: Sequence[float], size: Size, where: str,
                         tolerance: float = 2.0) -> str | None:
    """What is wrong with an annotation's segmentation, or None: one that cannot be decoded,
    or pixels outside its xyxy ``box`` by more than ``tolerance`` (rasterisation) pixels."""
    try:
        rle = as_rle(segmentation, size)
    except MaskError as err:
        return f"{where}: field 'segmentation' cannot be decoded: {err}"
    if rle is None or float(coco_mask.area(rle)) == 0:
        return None  # no mask: the box stands in for it
    x1, y1, x2, y2 = rle_box(rle)
    bx1, by1, bx2, by2 = box
    if (x1 < bx1 - tolerance or y1 < by1 - tolerance or x2 > bx2 + tolerance
            or y2 > by2 + tolerance):
        return (f"{where}: field 'segmentation' reaches {[x1, y1, x2, y2]} (xyxy), outside "
                f"its box {[round(v, 2) for v in box]} by more than {tolerance:g} px")
    return None


def instance_mask_problems(records: Sequence[Any], instances_path: Any) -> list[str]:
    """``segmentation_problem`` of every instance the ``records`` (``annotations.RefRecord``)
    hold, once each, in record order, named by ``instances_path`` and annotation id."""
    seen: set[int] = set()
    problems = []
    for record in records:
        for inst in record.instances:
            if inst.ann_id in seen:
                continue
            seen.add(inst.ann_id)
            problem = segmentation_problem(inst.segmentation, inst.box, record.image_size,
                                           f"{instances_path}: annotation id {inst.ann_id}")
            if problem:
                problems.append(problem)
    return problems


# The key of an evaluation row's per-image count (``evaluate`` writes and removes it).
MASKS_FROM_BOXES = "masks_from_boxes"


def mask_fallbacks(rows: list[dict[str, Any]]) -> dict[str, int] | None:
    """Remove the rows' per-image mask counts; return the run's: proposals with masks and how
    many of them are boxes (no mask known); None when the run had no masks."""
    per_image: dict[int, tuple[int, int]] = {}
    for row in rows:
        if MASKS_FROM_BOXES in row:
            per_image[row["image_id"]] = (row["n_proposals"], row.pop(MASKS_FROM_BOXES))
    if not per_image:
        return None
    return {"proposals_with_masks": sum(n for n, _ in per_image.values()),
            "masks_from_boxes": sum(k for _, k in per_image.values())}

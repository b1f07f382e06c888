"""Grounding expressions in one's own photo: ``ground(image, expressions, ...)``.

The photo becomes one record (``data.annotations.RefRecord``) and the run is built by the run
builder (``engine.run``) as ``evaluate`` builds its own, so a method, its options and its
needs (a CLIP, masks) mean the same here. Proposals come from YOLO, a detections file (its
entries for the photo's image id) or boxes given by the caller (``GivenBoxes``). Each
expression is grounded on its own, as one referred object: ``evaluate`` asks a method once per
ref, and a one-photo data root whose refs hold one expression each gives the same choices.

Debiasing (red-circle, and relations scored by red-circle) draws its prompts from a train
split's expressions. One photo has none: unless ``debias_from`` names a data root whose train
split to draw from, the sample is off (``n_debias`` 0), and ``Grounding.debias`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from refcocog_tools.core.boxes import as_boxes
from refcocog_tools.data.annotations import RefRecord
from refcocog_tools.data.dataset import RefItem, load_rgb_image
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout
from refcocog_tools.engine.results import clip_provenance, honesty_label
from refcocog_tools.engine.run import RunSpec, RunSpecError, build_proposer, build_run
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.registry import canonical_method, resolved_options, without_debiasing
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.proposals.structures import Proposals, Proposer

NO_DEBIAS_NOTE = ("no debiasing: one photo has no training split to draw debias prompts from "
                  "(--debias-from DATA_ROOT draws them from that data root's train split)")
# Methods that do not ground zero-shot: a regressor is trained on a split's boxes.
NOT_ZERO_SHOT = frozenset({"regressor"})


class GroundError(RunSpecError):
    """Bad input to ``ground`` (an empty expression, a box outside the photo); one line."""


class GivenBoxes:
    """Proposals given by the caller (``--box``): the same boxes for the photo, no labels."""

    name = "boxes"
    untrained = False
    checksum: str | None = None
    gives_masks = False

    def __init__(self, boxes: Any) -> None:
        self.boxes = as_boxes(boxes, torch.float32)
        if len(self.boxes) == 0:
            raise GroundError("--box: no boxes given")

    def check_dataset(self, records: Sequence[RefRecord]) -> None:
        """Every box has a positive size and lies inside its image (1 px of slack)."""
        for record in records:
            width, height = record.image_size
            for k, (x1, y1, x2, y2) in enumerate(self.boxes.tolist(), start=1):
                if not (x2 > x1 and y2 > y1):
                    raise GroundError(f"--box {k} ({x1:g},{y1:g},{x2:g},{y2:g}): x2 must "
                                      "exceed x1 and y2 exceed y1")
                if min(x1, y1) < -1 or x2 > width + 1 or y2 > height + 1:
                    raise GroundError(f"--box {k} ({x1:g},{y1:g},{x2:g},{y2:g}) lies outside "
                                      f"the {width}x{height} image {record.image_path}")

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals:
        width, height = item.image_size
        boxes = self.boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return Proposals(boxes, [None] * len(boxes))

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]:
        return [self(item) for item in items]

    def config(self) -> dict[str, Any]:
        return {"proposer": "boxes", "boxes": self.boxes.tolist()}


@dataclass
class Grounding:
    """What ``ground_photo`` found: one prediction per expression (each with its runner-up)
    over the photo's proposals, and how it was made."""

    image: Image.Image
    image_path: Path | None
    expressions: list[str]
    proposals: Proposals
    predictions: list[Prediction]
    method: GroundingMethod
    proposer: Proposer
    backbones: list[ClipBackbone]
    debias: str
    label: str  # the honesty label (untrained or toy weights), "" for pretrained models

    def rows(self) -> list[dict[str, Any]]:
        """Per expression: the chosen box and its score, the runner-up's (None when none)."""
        out = []
        for expression, prediction in zip(self.expressions, self.predictions, strict=True):
            chosen = int(prediction.chosen[0])
            row: dict[str, Any] = {
                "expression": expression,
                "box": [round(float(v), 2) for v in prediction.boxes[0]],
                "chosen": chosen,
                "score": _score(prediction, chosen),
                "runner_up": None, "runner_up_box": None, "runner_up_score": None}
            runner_up = -1 if prediction.runner_up is None else int(prediction.runner_up[0])
            if runner_up >= 0:
                row.update(runner_up=runner_up,
                           runner_up_box=[round(float(v), 2)
                                          for v in prediction.runner_up_boxes[0]],
                           runner_up_score=_score(prediction, runner_up))
            out.append(row)
        return out


def _score(prediction: Prediction, index: int) -> float | None:
    if not 0 <= index < prediction.scores.shape[1]:
        return None  # a box of the method's own (Grad-CAM), not a proposal's
    value = float(prediction.scores[0, index])
    return round(value, 6) if value == value and abs(value) != float("inf") else None


def _photo(image: str | Path | Image.Image) -> tuple[Image.Image, Path | None]:
    if isinstance(image, Image.Image):
        return image.convert("RGB"), None
    path = Path(image)
    return load_rgb_image(path), path  # EXIF orientation applied; unreadable: one line


def photo_record(image_path: Path | None, size: tuple[int, int], image_id: int = 0) -> RefRecord:
    """The photo as one record: no annotations, the whole image as its (unused) box."""
    width, height = size
    return RefRecord(ref_id=0, ann_id=0, image_id=image_id, category_id=0, category="",
                     split="photo", image_path=image_path or Path("<image>"),
                     image_size=(width, height), box=(0.0, 0.0, float(width), float(height)),
                     sentences=(), sent_ids=(), instances=())


def _checked_expressions(expressions: Sequence[str] | str) -> list[str]:
    if isinstance(expressions, str):
        expressions = [expressions]
    out = [str(e).strip() for e in expressions]
    if not out:
        raise GroundError("no expression given")
    for k, expression in enumerate(out, start=1):
        if not expression:
            raise GroundError(f"expression {k} is empty")
    return out


def _image_id(proposer: Proposer, given: int | None) -> int:
    """The detections file's image id for the photo: ``given``, else the file's only one."""
    detections = getattr(proposer, "detections", None)
    if detections is None:
        return 0 if given is None else given
    if given is None:
        if len(detections) != 1:
            raise GroundError(f"{proposer.name}: the file holds detections of "
                              f"{len(detections)} images; name the photo's with --image-id")
        return next(iter(detections))
    if given not in detections:
        raise GroundError(f"{proposer.name}: no detection has image_id {given}")
    return given


def ground_photo(
    image: str | Path | Image.Image,
    expressions: Sequence[str] | str,
    method: str = "red-circle",
    *,
    clip: str | Sequence[ClipBackbone] = "toy-rn",
    proposals: str = "yolov8s",
    boxes: Any = None,
    options: Any = None,
    detector: dict[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    debias_from: str | Path | None = None,
    layout: Layout = DEFAULT_LAYOUT,
    image_id: int | None = None,
    cache_dir: Path | None = None,
) -> Grounding:
    """Ground each expression in the photo; see the module docstring. ``clip``: a spec
    (``"toy-rn"``, ``"RN50x16"``, comma-separated to ensemble) or loaded backbones.
    ``proposals``: a ``make_proposer`` spec (YOLO name, ``dets:PATH``), unused when ``boxes``
    (``(N, 4)`` xyxy pixels) are given. ``options``: the method's options object.
    ``debias_from``: a data root whose train split (``layout``) red-circle draws from."""
    expressions = _checked_expressions(expressions)
    name = canonical_method(method)
    if name in NOT_ZERO_SHOT:
        raise GroundError(f"method {name} is trained on a split's boxes, not zero-shot; "
                          "ground runs the zero-shot methods")
    options = resolved_options(name, options)
    debias = ""
    if debias_from is None:
        stripped = without_debiasing(name, options)
        debias, options = (NO_DEBIAS_NOTE if stripped != options else ""), stripped
    picture, path = _photo(image)
    given = boxes is not None
    if not given and proposals == "gt":
        raise GroundError("--proposals gt: a photo has no ground-truth boxes; give --box "
                          "x1,y1,x2,y2 (repeatable) instead")
    loaded = None if isinstance(clip, str) else list(clip)
    spec = RunSpec(data_root=None if debias_from is None else Path(debias_from), layout=layout,
                   method=name, options=options, proposals="boxes" if given else proposals,
                   detector=dict(detector or {}), clip=clip if isinstance(clip, str) else "",
                   device=device, seed=seed, cache_dir=cache_dir)
    proposer = GivenBoxes(boxes) if given else build_proposer(spec)
    record = photo_record(path, picture.size, _image_id(proposer, image_id))
    run = build_run(spec, backbones=loaded, proposer=proposer, records=[record])
    item = RefItem(record, tuple(expressions), tuple(range(len(expressions))))
    found = run.proposer.propose_many([item], [picture])[0]
    # One expression per call: each its own referred object (evaluate asks once per ref).
    predictions = [run.method.predict(picture, [expression], found)
                   for expression in expressions]
    run.cache.save()
    if not debias and hasattr(run.method, "debias_description"):
        debias = run.method.debias_description()
    untrained = (any(b.untrained for b in run.backbones)
                 or bool(getattr(run.proposer, "untrained", False)))
    label = honesty_label({"untrained": untrained, "synthetic_data": False,
                           "clip": clip_provenance(run.backbones)})
    return Grounding(picture, path, expressions, found, predictions, run.method, run.proposer,
                     run.backbones, debias, label.strip()[1:-1])  # without its brackets


def ground(
    image: str | Path | Image.Image,
    expressions: Sequence[str] | str,
    method: str = "red-circle",
    *,
    clip: str | Sequence[ClipBackbone] = "toy-rn",
    proposals: str = "yolov8s",
    boxes: Any = None,
    options: Any = None,
    device: str = "cpu",
    **settings: Any,
) -> list[Prediction]:
    """One ``Prediction`` per expression (its box, scores over the proposals, runner-up) of
    ``method`` in the photo ``image``; ``settings``: the other ``ground_photo`` arguments."""
    return ground_photo(image, expressions, method, clip=clip, proposals=proposals,
                        boxes=boxes, options=options, device=device, **settings).predictions


__all__ = ["NO_DEBIAS_NOTE", "GivenBoxes", "GroundError", "Grounding", "ground",
           "ground_photo", "photo_record"]

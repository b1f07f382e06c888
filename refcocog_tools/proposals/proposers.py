"""Box proposals: the candidate regions a grounding method chooses from.

Two proposers: the ground-truth COCO boxes of the image (``"gt"``, an upper bound on what a
detector could offer) and an Ultralytics YOLO detector. Neither ever returns an empty set: with
nothing to propose, the whole image is the only candidate.

Masks come only when asked for (``masks=True``), so a box-only run never decodes one: the
ground truth decodes each instance's ``segmentation``, a YOLO segmentation model
(``yolov8s-seg``, the embedded ``tiny-yolov8s-seg``) gives its own. A proposal without a mask
(an instance without a segmentation, the whole-image fallback) gets its box rasterised, and
``Proposals.masks_from_boxes`` counts them. A source that gives no mask at all is refused
instead (a detection checkpoint, ``masks=True``): its "masks" would all be boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from refcocog_tools.core.masks import MaskError, with_box_fallback
from refcocog_tools.core.masks import decode as decode_mask
from refcocog_tools.data.annotations import INSTANCES_FILE, DatasetError, Instance, RefRecord
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.untrained_models import EMBEDDED_YOLO
from refcocog_tools.models.yolo_models import load_yolo, yolo_checksum, yolo_untrained
from refcocog_tools.proposals.detections import DetectionsProposer
from refcocog_tools.proposals.structures import Proposals, Proposer

if TYPE_CHECKING:
    from ultralytics.engine.results import Results

__all__ = [
    "STUDY_DETECTOR_SETTINGS",
    "GroundTruthProposer",
    "Proposals",
    "Proposer",
    "YoloProposer",
    "make_proposer",
    "study_detector_settings",
]


def _instances_file(record: RefRecord) -> Path:
    """``<root>/annotations/instances.json`` of a record (its image lies under
    ``<root>/images``, perhaps in a sub-folder)."""
    for folder in record.image_path.parents:
        if folder.name == "images":
            return folder.parent / "annotations" / INSTANCES_FILE
    return Path(INSTANCES_FILE)


class GroundTruthProposer:
    """Every annotated COCO instance of the item's image, labelled with its category.

    ``masks``: also each instance's mask, decoded from its ``segmentation`` (polygons or RLE)
    per image; an instance without one gets its box (counted in ``masks_from_boxes``).
    """

    name = "gt"
    untrained = False
    checksum: str | None = None

    def __init__(self, masks: bool = False) -> None:
        self.masks = bool(masks)

    @property
    def gives_masks(self) -> bool:
        return self.masks

    def check_dataset(self, records: Sequence[RefRecord]) -> None:
        """With masks: every instance's segmentation decodes, checked before any long work
        (a DatasetError naming the file and the annotation id)."""
        if not self.masks:
            return
        seen: set[int] = set()
        for record in records:
            for inst in record.instances:
                if inst.ann_id not in seen:
                    seen.add(inst.ann_id)
                    self._decode(inst, record)

    def _decode(self, inst: Instance, record: RefRecord) -> torch.Tensor | None:
        try:
            return decode_mask(inst.segmentation, record.image_size)
        except MaskError as err:
            raise DatasetError(f"{_instances_file(record)}: annotation id {inst.ann_id}: "
                               f"field 'segmentation' cannot be decoded: {err}") from None

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals:
        """``image`` is accepted for the common interface; annotations need no pixels."""
        if not item.instances:
            return Proposals.whole_image(item.image_size, masks=self.masks)
        boxes = torch.tensor([inst.box for inst in item.instances], dtype=torch.float32)
        labels = [inst.category for inst in item.instances]
        if not self.masks:
            return Proposals(boxes, labels)
        masks, from_boxes = with_box_fallback(
            [self._decode(inst, item.record) for inst in item.instances], boxes,
            item.image_size)
        return Proposals(boxes, labels, masks=masks, masks_from_boxes=from_boxes)

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]:
        return [self(item) for item in items]

    def config(self) -> dict[str, Any]:
        """JSON-able description, recorded with results."""
        return {"proposer": "gt", "masks": True} if self.masks else {"proposer": "gt"}


# The study ran each detector with its library's defaults and never changed them: YOLOv8s
# through Ultralytics' ``predict`` (conf 0.25, NMS IoU 0.7, at most 300 boxes) and, for the
# baseline and the earlier ideas, torch hub's ``yolov5s`` AutoShape (conf 0.25, NMS IoU 0.45, at
# most 1000 boxes). That anchor-based hub model cannot be loaded offline; a YOLOv5 name here
# (e.g. ``yolov5su``, Ultralytics' anchor-free retraining) gets the hub model's thresholds.
STUDY_DETECTOR_SETTINGS: dict[str, dict[str, float | int]] = {
    "yolov8": {"conf": 0.25, "iou": 0.7, "max_det": 300},
    "yolov5": {"conf": 0.25, "iou": 0.45, "max_det": 1000},
}


def study_detector_settings(name: str) -> dict[str, float | int]:
    """The study's conf / iou / max_det for a detector name (YOLOv5 names get the hub
    YOLOv5s defaults, every other model the YOLOv8 ones)."""
    family = "yolov5" if Path(name).name.lower().startswith("yolov5") else "yolov8"
    return dict(STUDY_DETECTOR_SETTINGS[family])


class YoloProposer:
    """Detections of an Ultralytics YOLO model (see ``yolo_models.load_yolo`` for specs).

    ``conf``, ``iou`` (NMS) and ``max_det`` default to the study's settings for the detector
    (``study_detector_settings``). ``masks``: each detection's mask too, from a segmentation
    checkpoint (``yolov8s-seg``, ``tiny-yolov8s-seg``; Ultralytics' ``retina_masks``, at the
    image's size); a detection checkpoint is refused. Without ``masks`` a segmentation
    checkpoint's boxes are used alone.
    """

    def __init__(
        self,
        spec: str = EMBEDDED_YOLO,
        device: str | torch.device = "cpu",
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        imgsz: int = 640,
        batch_size: int = 16,
        cache: str | Path | None = None,
        masks: bool = False,
    ) -> None:
        self.spec = str(spec)
        self.device = torch.device(device)
        spec_path = Path(self.spec)
        self.name: str = spec_path.name if spec_path.parent != Path(".") else self.spec
        study = study_detector_settings(self.name)
        self.conf = float(study["conf"] if conf is None else conf)
        self.iou = float(study["iou"] if iou is None else iou)
        self.max_det = int(study["max_det"] if max_det is None else max_det)
        if not (0.0 <= self.conf <= 1.0 and 0.0 <= self.iou <= 1.0) or self.max_det < 1:
            raise ValueError(f"detector settings out of range: conf {self.conf} and iou "
                             f"{self.iou} must lie in [0, 1], max_det {self.max_det} >= 1")
        self.imgsz = int(imgsz)
        self.batch_size = int(batch_size)
        self.model = load_yolo(self.spec, device=self.device, cache=cache)
        self.task: str = str(self.model.task)
        self.masks = bool(masks)
        if self.masks and self.task != "segment":
            raise BackboneError(f"{self.name}: a detection model gives no masks; mask "
                                "proposals need a segmentation checkpoint (yolov8s-seg, "
                                "tiny-yolov8s-seg)")
        self.names: dict[int, str] = dict(self.model.names)
        self.checksum: str = yolo_checksum(self.model)
        self.untrained: bool = yolo_untrained(self.model)

    @property
    def gives_masks(self) -> bool:
        return self.masks

    def _to_proposals(self, result: Results, size: tuple[int, int]) -> Proposals:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Proposals.whole_image(size, masks=self.masks)
        xyxy = boxes.xyxy.detach().float().cpu()
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # drop zero-area boxes
        if not bool(keep.any()):
            return Proposals.whole_image(size, masks=self.masks)
        classes = boxes.cls.detach().cpu().long()[keep].tolist()
        masks = None
        if self.masks:
            width, height = size
            # retina_masks: the masks are at the original image's size already.
            masks = result.masks.data.detach().cpu()[keep] > 0.5
            if tuple(masks.shape[1:]) != (height, width):
                raise ValueError(f"{self.name}: masks of {tuple(masks.shape[1:])} for a "
                                 f"{width}x{height} image")
        return Proposals(
            xyxy[keep],
            [self.names.get(c) for c in classes],
            boxes.conf.detach().float().cpu()[keep],
            masks=masks,
        )

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]:
        """Detect on the items' images, ``batch_size`` images per forward pass.

        ``images``: the items' images already decoded (else each is decoded here).
        """
        if images is not None and len(images) != len(items):
            raise ValueError(f"{len(images)} images for {len(items)} items")
        out: list[Proposals] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            pixels = (list(images[start:start + self.batch_size]) if images is not None
                      else [item.image for item in chunk])
            results = self.model.predict(
                pixels,
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_det,
                imgsz=self.imgsz,
                device=str(self.device),
                verbose=False,
                save=False,
                **({"retina_masks": True} if self.masks else {}),
            )
            out.extend(self._to_proposals(r, item.image_size)
                       for r, item in zip(results, chunk, strict=True))
        return out

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals:
        return self.propose_many([item], None if image is None else [image])[0]

    def config(self) -> dict[str, Any]:
        """JSON-able description, recorded with results."""
        return {
            "proposer": "yolo",
            "model": self.name,
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
            "imgsz": self.imgsz,
            "checksum": self.checksum,
            "untrained": self.untrained,
            **({"masks": True} if self.masks else {}),
        }


def make_proposer(spec: str, device: str | torch.device = "cpu", **options: Any) -> Proposer:
    """``"gt"``, ``"dets:<path>"`` (a detections file, see ``detections``), or a YOLO spec
    (``"yolo"`` means the default, ``"yolo:<spec>"`` is accepted). ``masks=True`` (every
    proposer): masks with the boxes."""
    spec = str(spec).strip()
    if spec == "gt" or spec.startswith("dets:"):
        masks = bool(options.pop("masks", False))
        if options:
            raise TypeError(f"the {spec.split(':')[0]} proposer takes no options but masks, "
                            f"got {sorted(options)}")
        if spec == "gt":
            return GroundTruthProposer(masks=masks)

        return DetectionsProposer(spec[len("dets:"):], masks=masks)
    if spec == "yolo":
        spec = EMBEDDED_YOLO
    elif spec.startswith("yolo:"):
        spec = spec[len("yolo:"):]
    return YoloProposer(spec, device=device, **options)

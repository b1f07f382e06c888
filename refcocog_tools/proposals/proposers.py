"""Box proposals: the candidate regions a grounding method chooses from.

Two proposers: the ground-truth COCO boxes of the image (``"gt"``, an upper bound on what a
detector could offer) and an Ultralytics YOLO detector. Neither ever returns an empty set: with
nothing to propose, the whole image is the only candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from PIL import Image

from refcocog_tools.core.boxes import as_boxes
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.models.untrained_models import EMBEDDED_YOLO
from refcocog_tools.models.yolo_models import load_yolo, yolo_checksum, yolo_untrained

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


@dataclass
class Proposals:
    """Candidate boxes of one image."""

    boxes: torch.Tensor  # (P, 4) float32 xyxy pixels, P >= 1
    labels: list[str | None]  # class name per box when the proposer has one
    scores: torch.Tensor | None = None  # (P,) detector confidence

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes, torch.float32)
        if len(self.boxes) == 0:
            raise ValueError("Proposals must hold at least one box (use Proposals.whole_image)")
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{len(self.labels)} labels for {len(self.boxes)} boxes")
        if self.scores is not None:
            self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
            if len(self.scores) != len(self.boxes):
                raise ValueError(f"{len(self.scores)} scores for {len(self.boxes)} boxes")

    @classmethod
    def whole_image(cls, size: tuple[int, int]) -> Proposals:
        """One box covering the image ``(width, height)``, without a label."""
        width, height = size
        return cls(torch.tensor([[0.0, 0.0, float(width), float(height)]]), [None])

    def __len__(self) -> int:
        return len(self.boxes)


@runtime_checkable
class Proposer(Protocol):
    """Anything that turns a dataset item into proposals."""

    name: str
    untrained: bool

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals: ...

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]: ...


class GroundTruthProposer:
    """Every annotated COCO instance of the item's image, labelled with its category."""

    name = "gt"
    untrained = False
    checksum: str | None = None

    def __call__(self, item: RefItem, image: Image.Image | None = None) -> Proposals:
        """``image`` is accepted for the common interface; annotations need no pixels."""
        if not item.instances:
            return Proposals.whole_image(item.image_size)
        return Proposals(
            torch.tensor([inst.box for inst in item.instances], dtype=torch.float32),
            [inst.category for inst in item.instances],
        )

    def propose_many(self, items: Sequence[RefItem],
                     images: Sequence[Image.Image] | None = None) -> list[Proposals]:
        return [self(item) for item in items]

    def config(self) -> dict[str, Any]:
        """JSON-able description, recorded with results."""
        return {"proposer": "gt"}


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
    (``study_detector_settings``).
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
        self.names: dict[int, str] = dict(self.model.names)
        self.checksum: str = yolo_checksum(self.model)
        self.untrained: bool = yolo_untrained(self.model)

    def _to_proposals(self, result: Results, size: tuple[int, int]) -> Proposals:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Proposals.whole_image(size)
        xyxy = boxes.xyxy.detach().float().cpu()
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # drop zero-area boxes
        if not bool(keep.any()):
            return Proposals.whole_image(size)
        classes = boxes.cls.detach().cpu().long()[keep].tolist()
        return Proposals(
            xyxy[keep],
            [self.names.get(c) for c in classes],
            boxes.conf.detach().float().cpu()[keep],
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
        }


def make_proposer(spec: str, device: str | torch.device = "cpu", **options: Any) -> Proposer:
    """``"gt"``, ``"dets:<path>"`` (a detections file, see ``detections``), or a YOLO spec
    (``"yolo"`` means the default, ``"yolo:<spec>"`` is accepted)."""
    spec = str(spec).strip()
    if spec == "gt" or spec.startswith("dets:"):
        if options:
            raise TypeError(f"the {spec.split(':')[0]} proposer takes no options, got "
                            f"{sorted(options)}")
        if spec == "gt":
            return GroundTruthProposer()
        from refcocog_tools.proposals.detections import (
            DetectionsProposer,  # it builds on Proposals, defined here
        )

        return DetectionsProposer(spec[len("dets:"):])
    if spec == "yolo":
        spec = EMBEDDED_YOLO
    elif spec.startswith("yolo:"):
        spec = spec[len("yolo:"):]
    return YoloProposer(spec, device=device, **options)

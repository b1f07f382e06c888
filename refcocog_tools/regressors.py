"""Box-regression heads on top of frozen CLIP (sections 1 and 2 of the study).

A head reads the concatenation of the CLIP embedding of the whole image and the CLIP embedding of
one expression, and outputs one box. There are no proposals: this is the study's "can a small
network on top of CLIP solve the task directly?" experiment. Embeddings come from
:mod:`refcocog_tools.split_embeddings`, so CLIP runs once per backbone and split, and every
training run reuses them (the study stored them in a CSV file for the same reason).

Heads (``d`` = the backbone's embedding size, summed over backbones when several are given):

* ``bottleneck``: ``2d -> d -> d/2 -> 128 -> 4`` with ReLU (the study's ``RegressorModel``);
* ``large``: ``2d -> 4d -> 2d -> d -> d/2 -> d/8 -> 4`` with ReLU and dropout 0.5 after every hidden
  layer (the study's ``LargeRegressorModel``).

Box parameterisation. The study read the four outputs directly as ``(x1, y1, x2, y2)``, so nothing
kept ``x2 >= x1``; an IoU loss on such boxes is undefined. Here the four outputs are read as
``(cx, cy, w, h)`` with ``w = softplus(.)`` and ``h = softplus(.)``, then turned into corners
(:func:`decode_boxes`), so every predicted box is valid and every loss is differentiable
everywhere. MSE is still computed on the ``(x1, y1, x2, y2)`` corners, as in the study.

Targets are pixels (the study's choice; the MSE then grows with the image scale and dominates the
``mix`` loss) or, with ``normalize_targets``, corners divided by the image width and height. Mean
IoU is always measured in pixels, on boxes clipped to the image, with ``torchvision.ops.box_iou``.

Training set. The study trained on the first expression of each ref per step; here every
(image, expression) pair of the split is a sample (the dataset's "expression" view), which uses all
annotations and makes an epoch of the same size as the evaluation.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)

from .dataset import DatasetError, RefCOCOg
from .embedding_files import EmbeddingCacheError
from .io_utils import (
    UnreadableFileError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_torch_file,
    sha256_file,
)
from .options import (
    device_type,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from .results import clip_provenance, honesty_label, provenance, results_document
from .split_embeddings import SplitEmbeddings, split_embeddings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEADS = ("bottleneck", "large")
LOSSES = ("mse", "iou", "mix")
IOU_VARIANTS = ("iou", "giou", "diou", "ciou")
# The study's learning rates: 0.01 for the bottleneck, 0.001 for the large head.
STUDY_LR = {"bottleneck": 1e-2, "large": 1e-3}
CHECKPOINT_FORMAT = "refcocog-tools-regressor/1"
EVALUATED_CHECKPOINTS = ("best", "last")


class RegressorError(ValueError):
    """A checkpoint or resume state does not fit the requested run (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------
def head_widths(kind: str, embed_dim: int) -> list[int]:
    """Layer widths from input to output for a head on embeddings of size ``embed_dim``."""
    d = embed_dim
    if kind == "bottleneck":
        return [2 * d, d, d // 2, 128, 4]
    if kind == "large":
        return [2 * d, 4 * d, 2 * d, d, d // 2, d // 8, 4]
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


def make_head(kind: str, embed_dim: int, dropout: float = 0.5) -> nn.Sequential:
    """The ``bottleneck`` or ``large`` head as an ``nn.Sequential`` (dropout only in ``large``)."""
    if embed_dim < 8:
        raise ValueError(f"embedding size {embed_dim} is too small for the heads (need >= 8)")
    widths = head_widths(kind, embed_dim)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:  # no activation after the output layer
            layers.append(nn.ReLU())
            if kind == "large" and dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def decode_boxes(raw: torch.Tensor) -> torch.Tensor:
    """Head outputs ``(cx, cy, w, h)`` (w, h through softplus) to valid ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = raw.unbind(-1)
    w, h = F.softplus(w), F.softplus(h)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def clip_to_image(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Clamp xyxy pixel boxes (N, 4) into their images; ``sizes`` is (N, 2) as (width, height)."""
    limits = torch.cat([sizes, sizes], dim=1).to(boxes)
    return torch.minimum(boxes.clamp(min=0), limits)


def pair_iou(pred: torch.Tensor, target: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """IoU of each predicted box with its own target, via ``torchvision.ops.box_iou``.

    A non-finite predicted box (a diverged head) overlaps nothing: its IoU is 0, not NaN.
    """
    out = [box_iou(p, t).diagonal() for p, t in zip(pred.split(chunk), target.split(chunk),
                                                     strict=True)]
    return torch.nan_to_num(torch.cat(out), nan=0.0) if out else pred.new_zeros(0)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def plain_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-box ``1 - IoU`` for valid xyxy boxes (no reduction).

    What changed vs the study's ``iou_loss``: the study took the intersection's far corner as
    ``max(x2_pred, x2_gt), max(y2_pred, y2_gt)``. That corner must be the *minimum*: with ``max``
    the "intersection" grows to reach the farther of the two boxes, so two boxes that merely share
    a near corner count as overlapping and a box that contains the target is not penalised for
    being too large (the study noticed its regressor "usually produces much larger bounding boxes
    than the ground truth ones"). It also clamped the loss to [0, 1] and replaced a NaN mean by a
    constant 1, which hides invalid boxes and stops their gradient. Here the far corner is the
    minimum, boxes are valid by construction (:func:`decode_boxes`), and no clamping is needed:
    the result equals ``1 - torchvision.ops.box_iou`` (the tests check it).
    """
    x1 = torch.maximum(pred[:, 0], target[:, 0])
    y1 = torch.maximum(pred[:, 1], target[:, 1])
    x2 = torch.minimum(pred[:, 2], target[:, 2])
    y2 = torch.minimum(pred[:, 3], target[:, 3])
    intersection = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_target = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    return 1 - intersection / (area_pred + area_target - intersection + eps)


def study_iou_loss_with_corner_bug(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The study's ``iou_loss``, per box and *with its bug*, kept only to show what it computed.

    Never train with it. It takes ``max`` for the intersection's far corner (the correct corner
    is the minimum, see :func:`plain_iou_loss`) and clamps the loss into [0, 1]. The study's
    NaN fallback (a constant 1 for a NaN mean) belongs to the reduction and is left out here.
    """
    x1 = torch.max(pred[:, 0], target[:, 0])
    y1 = torch.max(pred[:, 1], target[:, 1])
    x2 = torch.max(pred[:, 2], target[:, 2])  # the bug: should be torch.min
    y2 = torch.max(pred[:, 3], target[:, 3])  # the bug: should be torch.min
    intersection = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_target = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = area_pred + area_target - intersection
    return (1.0 - intersection / (union + 1e-6)).clamp(min=0.0, max=1.0)


_IOU_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "iou": lambda p, t: plain_iou_loss(p, t),
    "giou": lambda p, t: generalized_box_iou_loss(p, t, reduction="none"),
    "diou": lambda p, t: distance_box_iou_loss(p, t, reduction="none"),
    "ciou": lambda p, t: complete_box_iou_loss(p, t, reduction="none"),
}


def iou_loss(pred: torch.Tensor, target: torch.Tensor, variant: str = "giou") -> torch.Tensor:
    """Mean IoU-family loss of valid xyxy boxes.

    ``giou`` (default) keeps a gradient when the boxes do not overlap at all, which plain ``iou``
    does not (its gradient is zero there) - the usual case at the start of training.
    """
    if variant not in _IOU_LOSSES:
        raise ValueError(f"iou variant must be one of {IOU_VARIANTS}, got {variant!r}")
    return _IOU_LOSSES[variant](pred, target).mean()


@dataclass(frozen=True)
class BoxLoss:
    """``mse``, ``iou`` or ``mix`` = ``mse_weight * MSE + iou_weight * IoU`` (study: 0.7, 1.0)."""

    kind: str = "mse"
    iou_variant: str = "giou"
    mse_weight: float = 0.7
    iou_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.kind!r}")
        if self.iou_variant not in IOU_VARIANTS:
            raise ValueError(f"iou variant must be one of {IOU_VARIANTS}, "
                             f"got {self.iou_variant!r}")

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return F.mse_loss(pred, target)
        if self.kind == "iou":
            return iou_loss(pred, target, self.iou_variant)
        return (self.mse_weight * F.mse_loss(pred, target)
                + self.iou_weight * iou_loss(pred, target, self.iou_variant))


# ----------------------------------------------------------------------------------------------
# Data: cached embeddings + boxes, one row per (image, expression) pair
# ----------------------------------------------------------------------------------------------
@dataclass
class RegressionData:
    """Samples for a head. Features are gathered per batch from the embedding tables, so the
    (N, 2d) input matrix is never materialised."""

    image_embeddings: torch.Tensor  # (I, d)
    text_embeddings: torch.Tensor  # (S, d)
    image_index: torch.Tensor  # (N,) long rows of image_embeddings
    text_index: torch.Tensor  # (N,) long rows of text_embeddings
    boxes: torch.Tensor  # (N, 4) xyxy pixels
    sizes: torch.Tensor  # (N, 2) image (width, height)
    rows: list[dict[str, Any]] = field(default_factory=list)  # ref_id, sent_id, image_id, sentence

    def __post_init__(self) -> None:
        n = len(self.image_index)
        if not (len(self.text_index) == len(self.boxes) == len(self.sizes) == n):
            raise ValueError("image_index, text_index, boxes and sizes must have the same length")
        if self.image_embeddings.shape[1] != self.text_embeddings.shape[1]:
            raise ValueError("image and text embeddings must have the same size")

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def embed_dim(self) -> int:
        return int(self.image_embeddings.shape[1])

    def features(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 2d): the image embedding, then the expression embedding."""
        return torch.cat([self.image_embeddings[self.image_index[index]],
                          self.text_embeddings[self.text_index[index]]], dim=1)

    def targets(self, index: torch.Tensor, normalize: bool) -> torch.Tensor:
        boxes = self.boxes[index]
        if normalize:
            sizes = self.sizes[index]
            boxes = boxes / torch.cat([sizes, sizes], dim=1)
        return boxes

    def first(self, n: int) -> RegressionData:
        """The first ``n`` samples (all of them when ``n`` <= 0), sharing the embedding tables."""
        if n <= 0 or n >= len(self):
            return self
        return RegressionData(self.image_embeddings, self.text_embeddings, self.image_index[:n],
                              self.text_index[:n], self.boxes[:n], self.sizes[:n],
                              self.rows[:n])

    def to(self, device: str | torch.device) -> RegressionData:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return RegressionData(**moved)

    @classmethod
    def from_features(cls, image_features: torch.Tensor, text_features: torch.Tensor,
                      boxes: torch.Tensor, sizes: torch.Tensor) -> RegressionData:
        """One sample per row of already-paired features (used for synthetic data)."""
        n = len(boxes)
        index = torch.arange(n)
        return cls(image_features.float(), text_features.float(), index, index.clone(),
                   boxes.float(), sizes.float())

    @classmethod
    def from_dataset(cls, dataset: RefCOCOg,
                     embeddings: Sequence[SplitEmbeddings]) -> RegressionData:
        """Pair every expression of ``dataset`` with its image; one embedding table per backbone,
        concatenated along the feature axis (image and text in the same backbone order)."""
        if not embeddings:
            raise ValueError("need the embeddings of at least one backbone")
        image_ids = list(dict.fromkeys(r.image_id for r in dataset.records))
        sentences = list(dict.fromkeys(dataset.sentences()))
        images = torch.cat([e.image_embeddings[e.image_rows(image_ids)] for e in embeddings], 1)
        texts = torch.cat([e.text_embeddings[e.text_rows(sentences)] for e in embeddings], 1)
        image_row = {i: k for k, i in enumerate(image_ids)}
        text_row = {s: k for k, s in enumerate(sentences)}
        image_index, text_index, boxes, sizes, rows = [], [], [], [], []
        for record in dataset.records:
            for sentence, sent_id in zip(record.sentences, record.sent_ids, strict=True):
                image_index.append(image_row[record.image_id])
                text_index.append(text_row[sentence])
                boxes.append(record.box)
                sizes.append(record.image_size)
                rows.append({"ref_id": record.ref_id, "sent_id": sent_id,
                             "image_id": record.image_id, "ann_id": record.ann_id,
                             "category": record.category, "sentence": sentence})
        return cls(images, texts, torch.tensor(image_index), torch.tensor(text_index),
                   torch.tensor(boxes, dtype=torch.float32),
                   torch.tensor(sizes, dtype=torch.float32), rows)


def to_pixels(boxes: torch.Tensor, sizes: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Boxes in the target unit back to pixels, clipped to the image."""
    if normalized:
        boxes = boxes * torch.cat([sizes, sizes], dim=1)
    return clip_to_image(boxes, sizes)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in checkpoints and results)."""

    head: str = "bottleneck"
    loss: str = "mse"
    iou_variant: str = "giou"
    epochs: int = 30
    lr: float | None = None  # None: the study's rate for the head (STUDY_LR)
    batch_size: int = 64
    weight_decay: float = 0.0
    normalize_targets: bool = False
    seed: int = 0
    dropout: float = 0.5
    mse_weight: float = 0.7
    iou_weight: float = 1.0
    # The study fed raw CLIP embeddings; here they are L2-normalised unless raw_embeddings.
    raw_embeddings: bool = False
    # The study evaluated the weights after the last epoch; here the best validation epoch.
    evaluated_checkpoint: str = "best"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.lr is None:
            self.lr = STUDY_LR[self.head]
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        self.box_loss()  # validates loss and iou_variant
        if self.evaluated_checkpoint not in EVALUATED_CHECKPOINTS:
            raise ValueError(f"evaluated_checkpoint must be one of {EVALUATED_CHECKPOINTS}, "
                             f"got {self.evaluated_checkpoint!r}")

    def box_loss(self) -> BoxLoss:
        return BoxLoss(self.loss, self.iou_variant, self.mse_weight, self.iou_weight)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    head: nn.Sequential  # best validation epoch's weights (or the last's), in eval mode
    history: list[dict[str, float]]
    best_epoch: int
    best_val_miou: float
    config: TrainConfig


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """Independent, reproducible seeds per epoch and purpose. Because each epoch reseeds from
    (seed, epoch), a resumed run draws exactly what a straight run draws."""
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1)


def _fork_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def build_head(config: TrainConfig, embed_dim: int) -> nn.Sequential:
    """A freshly initialised head; the seed fixes the weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_head(config.head, embed_dim, config.dropout)


@torch.no_grad()
def predict_boxes(head: nn.Module, data: RegressionData, normalized: bool,
                  batch_size: int = 1024) -> torch.Tensor:
    """Head outputs in the target unit (N, 4), eval mode."""
    head.eval()
    out = [decode_boxes(head(data.features(i))) for i in torch.arange(len(data)).split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 4)


@torch.no_grad()
def evaluate_head(head: nn.Module, data: RegressionData, config: TrainConfig,
                  batch_size: int = 1024) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss, per-sample IoU (pixels) and predicted pixel boxes (clipped) over ``data``."""
    index = torch.arange(len(data), device=data.boxes.device)
    pred = predict_boxes(head, data, config.normalize_targets, batch_size)
    loss_fn = config.box_loss()
    total = 0.0
    for chunk in index.split(batch_size):
        total += float(loss_fn(pred[chunk], data.targets(chunk, config.normalize_targets))) \
            * len(chunk)
    pixels = to_pixels(pred, data.sizes, config.normalize_targets)
    ious = pair_iou(pixels, data.boxes)
    return total / max(len(data), 1), ious, pixels


def save_checkpoint(path: str | Path, head: nn.Module, config: TrainConfig, embed_dim: int,
                    clip: Sequence[dict[str, Any]] = (), **extra: Any) -> Path:
    """Weights + everything needed to rebuild and check the head, written atomically."""
    path = Path(path)
    atomic_torch_save(path, {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "embed_dim": embed_dim,
        "clip": [dict(c) for c in clip],
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        **extra,
    })
    return path


def load_checkpoint(path: str | Path,
                    device: str | torch.device = "cpu") -> tuple[nn.Sequential, dict[str, Any]]:
    """The head (eval mode) and the checkpoint dict; ValueError when it is not one of ours."""
    payload = _read_checkpoint(path, device, "regressor checkpoint")
    try:
        config = TrainConfig.from_dict(payload["config"])
        head = make_head(config.head, int(payload["embed_dim"]), config.dropout).to(device)
        head.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise RegressorError(f"{path}: damaged regressor checkpoint ({type(err).__name__}: "
                             f"{detail})") from None
    head.eval()
    return head, payload


def _read_checkpoint(path: str | Path, device: str | torch.device, what: str) -> dict[str, Any]:
    """One of our checkpoints, loaded as plain data; every problem is a ``RegressorError``."""
    try:
        payload = load_torch_file(path, map_location=device)
    except FileNotFoundError:
        raise RegressorError(f"{path}: {what} not found") from None
    except UnreadableFileError as err:
        raise RegressorError(f"{err} ({what})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RegressorError(f"{path}: not a refcocog-tools {what} (no "
                             f"format {CHECKPOINT_FORMAT!r} field)")
    return payload


# What a training run writes into its --out folder.
RUN_FILES = ("best.pt", "last.pt", "final.pt", "history.json", "config.json", "curves.png",
             "results.json")

# Fields that may differ between the run that wrote last.pt and the one resuming it.
_RESUMABLE_CHANGES = {"epochs", "evaluated_checkpoint"}  # the latter changes no training


def _check_resumable(state: dict[str, Any], config: TrainConfig, embed_dim: int,
                     clip: Sequence[dict[str, Any]], path: Path) -> None:
    saved = TrainConfig.from_dict(state["config"]).to_dict()
    wanted = config.to_dict()
    changed = sorted(k for k in wanted if k not in _RESUMABLE_CHANGES and saved[k] != wanted[k])
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {wanted[k]!r}" for k in changed)
        raise RegressorError(f"{path}: cannot resume, the configuration changed ({detail})")
    if int(state["embed_dim"]) != embed_dim:
        raise RegressorError(f"{path}: cannot resume, embedding size {state['embed_dim']} != "
                         f"{embed_dim}")
    saved_sums = [c.get("checksum") for c in state.get("clip", [])]
    wanted_sums = [c.get("checksum") for c in clip]
    if saved_sums != wanted_sums:
        raise RegressorError(f"{path}: cannot resume, it was trained on other CLIP backbones")


def train_regressor(
    train: RegressionData,
    val: RegressionData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    clip: Sequence[dict[str, Any]] = (),
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a head with Adam; keep the best epoch by validation mean IoU.

    With ``out_dir``: after every epoch ``history.json``, ``curves.png`` and ``last.pt`` (weights,
    optimizer state, epoch, history) are rewritten, and ``best.pt`` (+ ``config.json``) whenever
    validation mean IoU improves; all atomically. ``resume=True`` continues from ``last.pt``
    (same configuration except ``epochs``), and gives exactly the run that never stopped.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError("training and validation data must not be empty")
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    embed_dim = train.embed_dim
    head = build_head(config, embed_dim).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    loss_fn = config.box_loss()
    history: list[dict[str, float]] = []
    best_epoch, best_miou = 0, -math.inf
    best_state = copy.deepcopy(head.state_dict())
    start = 0
    if resume and out is not None and (out / "last.pt").is_file():
        last = out / "last.pt"
        state = _read_checkpoint(last, device, "training state")
        try:
            _check_resumable(state, config, embed_dim, clip, last)
            head.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            history = list(state["history"])
            start = int(state["epoch"])
            best_epoch, best_miou = int(state["best_epoch"]), float(state["best_val_miou"])
            best_state = state["best_state_dict"]
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, RegressorError):
                raise
            detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise RegressorError(f"{last}: damaged training state ({type(err).__name__}: "
                                 f"{detail})") from None
        if log:
            log(f"resuming from {last} after epoch {start}")
    elif resume and log:
        log("nothing to resume: starting from scratch")

    train_d, val_d = train.to(device), val.to(device)
    for epoch in range(start, config.epochs):
        with torch.random.fork_rng(devices=_fork_devices(device)):
            torch.manual_seed(_derived_seed(config.seed, epoch, 1))  # dropout masks
            shuffle = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, 2))
            order = torch.randperm(len(train_d), generator=shuffle).to(device)
            head.train()
            total_loss, ious = 0.0, []
            for batch in order.split(config.batch_size):
                target = train_d.targets(batch, config.normalize_targets)
                pred = decode_boxes(head(train_d.features(batch)))
                loss = loss_fn(pred, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
                pixels = to_pixels(pred.detach(), train_d.sizes[batch], config.normalize_targets)
                ious.append(pair_iou(pixels, train_d.boxes[batch]))
        val_loss, val_ious, _ = evaluate_head(head, val_d, config)
        entry = {
            "epoch": epoch + 1,
            "train_loss": total_loss / len(train_d),
            "train_miou": float(torch.cat(ious).mean()),
            "val_loss": val_loss,
            "val_miou": float(val_ious.mean()),
        }
        history.append(entry)
        if log:
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {entry['train_loss']:.4f} "
                f"mIoU {entry['train_miou']:.3f} | val loss {val_loss:.4f} "
                f"mIoU {entry['val_miou']:.3f}")
        if entry["val_miou"] > best_miou:
            best_epoch, best_miou = epoch + 1, entry["val_miou"]
            best_state = copy.deepcopy(head.state_dict())
            if out is not None:
                save_checkpoint(out / "best.pt", head, config, embed_dim, clip,
                                epoch=best_epoch, val_miou=best_miou)
                atomic_write_json(out / "config.json", {
                    "config": config.to_dict(), "embed_dim": embed_dim, "clip": list(clip),
                    "best_epoch": best_epoch, "val_miou": best_miou})
        if out is not None:
            atomic_torch_save(out / "last.pt", {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "embed_dim": embed_dim,
                "clip": [dict(c) for c in clip],
                "epoch": epoch + 1,
                "state_dict": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best_epoch": best_epoch,
                "best_val_miou": best_miou,
                "best_state_dict": best_state,
            })
            write_history(out, history)

    if out is not None and history:
        write_history(out, history)
    if config.evaluated_checkpoint == "best":
        head.load_state_dict(best_state)
    head.eval()
    return TrainResult(head, history, best_epoch, best_miou, config)


def plot_history(history: Sequence[dict[str, float]]) -> Figure:
    """Loss and mean IoU per epoch, train and validation, side by side."""
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_iou = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key, label in (("train", "train"), ("val", "validation")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], marker=".", label=label)
        ax_iou.plot(epochs, [h[f"{key}_miou"] for h in history], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_iou.set(xlabel="epoch", ylabel="mean IoU (pixels)", title="mean IoU", ylim=(0, 1))
    losses = [h[k] for h in history for k in ("train_loss", "val_loss")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 100:
        ax_loss.set_yscale("log")  # pixel MSE spans orders of magnitude
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def write_history(out_dir: str | Path, history: Sequence[dict[str, float]]) -> None:
    """``history.json`` and ``curves.png`` in ``out_dir``, atomically."""
    out = Path(out_dir)
    atomic_write_json(out / "history.json", list(history))
    buffer = io.BytesIO()
    plot_history(history).savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out / "curves.png", buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# The grounding method for the evaluation engine
# ----------------------------------------------------------------------------------------------
class RegressorMethod:
    """A trained head as a grounding method: one box per expression, proposals ignored.

    ``backbones`` must be the ones the head was trained on (checked by checksum, in order).
    """

    name = "regressor"

    def __init__(self, backbones: Sequence[Any], checkpoint_path: str | Path,
                 device: str | torch.device = "cpu") -> None:
        self.backbones = list(backbones)
        self.checkpoint_path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.head, payload = load_checkpoint(self.checkpoint_path, self.device)
        self.train_config = TrainConfig.from_dict(payload["config"])
        self.best_epoch = payload.get("epoch")
        trained = [c.get("checksum") for c in payload.get("clip", [])]
        given = [b.checksum for b in self.backbones]
        if trained != given:
            names = [c.get("name") for c in payload.get("clip", [])]
            raise RegressorError(f"{self.checkpoint_path}: trained on CLIP {names}, "
                             f"given {[b.name for b in self.backbones]} (checksums differ)")
        self._checkpoint_sha256 = sha256_file(self.checkpoint_path)

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "checkpoint": str(self.checkpoint_path),
            "checkpoint_sha256": self._checkpoint_sha256,
            "best_epoch": self.best_epoch,
            **self.train_config.to_dict(),
        }

    @torch.no_grad()
    def predict(self, image: Any, expressions: Sequence[str], proposals: Any = None) -> Any:
        """Boxes (E, 4) in pixels clipped to the image; ``chosen`` is -1 (no proposal)."""
        from .prediction import Prediction

        n = len(expressions)
        normalize = not self.train_config.raw_embeddings  # the inputs it was trained on
        image_emb = torch.cat([b.encode_images([image], normalize=normalize)
                               for b in self.backbones], dim=1)
        text_emb = torch.cat([b.encode_texts(list(expressions), normalize=normalize)
                              for b in self.backbones], dim=1)
        features = torch.cat([image_emb.expand(n, -1), text_emb], dim=1).float().to(self.device)
        boxes = decode_boxes(self.head(features)).cpu()
        sizes = torch.tensor([image.size], dtype=torch.float32).expand(n, 2)
        boxes = to_pixels(boxes, sizes, self.train_config.normalize_targets)
        return Prediction(boxes=boxes, chosen=torch.full((n,), -1, dtype=torch.long),
                          scores=torch.zeros(n, 0))


# ----------------------------------------------------------------------------------------------
# Command line: train-regressor
# ----------------------------------------------------------------------------------------------
def split_data(data_root: str | Path, split: str, backbones: Sequence[Any],
               cache_root: str | Path | None = None, progress: bool = False,
               raw: bool = False) -> RegressionData:
    """The expression view of a split with each backbone's cached embeddings (L2-normalised,
    or as CLIP outputs them with ``raw``)."""
    dataset = RefCOCOg(data_root, split=split, view="expression")
    if len(dataset) == 0:
        raise DatasetError(f"{data_root}: the {split} split has no expressions; a regressor "
                           "needs train, val and test refs")
    embeddings = [split_embeddings(dataset, b, cache_root=cache_root, progress=progress,
                                   raw=raw)
                  for b in backbones]
    return RegressionData.from_dataset(dataset, embeddings)


def results_on_split(result: TrainResult, test: RegressionData, data_root: str | Path,
                     backbones: Sequence[Any], checkpoint: Path | None = None,
                     limit: int = 0) -> dict[str, Any]:
    """The best head on ``test`` in the project's results format.

    ``metrics`` is :func:`refcocog_tools.metrics.summarize` of the per-expression rows, so it has
    the keys of every other method's results (``n``, ``miou``, ``accuracy``, ``cosine``,
    ``by_spatial``, ``by_category``); ``cosine`` is None because no crop is embedded here. The
    head's test loss, which only a trained head has, is under ``training``.
    """
    loss, ious, boxes = evaluate_head(result.head, test, result.config)
    rows = []
    for row, box, gt, iou in zip(test.rows, boxes.tolist(), test.boxes.tolist(), ious.tolist(),
                                 strict=True):
        rows.append({**row, "box": [round(v, 3) for v in box],
                     "gt_box": [round(v, 3) for v in gt], "iou": round(iou, 6), "cosine": None,
                     "chosen": -1, "n_proposals": 0})
    config = {"method": "regressor", **result.config.to_dict(), "split": "test", "limit": limit}
    if checkpoint is not None:
        config["checkpoint"] = str(checkpoint)
        config["checkpoint_sha256"] = sha256_file(checkpoint)
    return results_document(
        rows, config=config,
        provenance=provenance(data_root, "test", backbones, proposer=None),
        training={"test_loss": loss, "best_epoch": result.best_epoch,
                  "best_val_miou": result.best_val_miou, "epochs_run": len(result.history)},
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-regressor``."""
    parser = subparsers.add_parser(
        "train-regressor",
        help="train a box-regression head on frozen CLIP embeddings (study sections 1-2)",
        description="Train a bottleneck or large head on the concatenated CLIP image and "
        "expression embeddings to regress the box directly. Embeddings are cached per backbone "
        "and split. Writes history.json, curves.png, best.pt, last.pt, config.json and "
        "results.json (best checkpoint on the test split).",
    )
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    parser.add_argument("--clip", default="tiny-rn",
                        help="CLIP backbone(s), comma-separated (default tiny-rn)")
    parser.add_argument("--head", choices=HEADS, default="bottleneck")
    parser.add_argument("--loss", choices=LOSSES, default="mse")
    parser.add_argument("--iou-variant", choices=IOU_VARIANTS, default="giou",
                        help="IoU loss for --loss iou/mix (default giou)")
    parser.add_argument("--epochs", type=non_negative_int, default=30)
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="Adam learning rate (default: the study's, 0.01 bottleneck, "
                        "0.001 large)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--normalize-targets", action="store_true",
                        help="regress boxes divided by the image size instead of pixels")
    parser.add_argument("--raw-embeddings", action="store_true",
                        help="feed CLIP's raw embeddings, as the study did (default: "
                        "L2-normalised)")
    parser.add_argument("--regressor-checkpoint", choices=EVALUATED_CHECKPOINTS, default="best",
                        help="weights evaluated on the test split: the best validation epoch's "
                        "(best.pt) or, as the study did, the last epoch's (written as final.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", type=device_type)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--force", action="store_true",
                        help="start afresh in an OUT that holds an earlier run (overwrites it)")
    parser.add_argument("--embedding-cache", type=Path, default=None,
                        help="embedding cache folder (default: <cache>/regressor-embeddings)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=_train_regressor_command)


def _train_regressor_command(args: argparse.Namespace) -> int:
    try:
        return _train_regressor(args)
    except (RegressorError, EmbeddingCacheError) as err:
        print(f"refcocog-tools: error: {err}", file=sys.stderr)
        return 2


def _train_regressor(args: argparse.Namespace) -> int:
    from .backbones import load_clips
    from .minidata import default_data_root
    from .options import check_output_folder
    from .split_embeddings import default_cache_root

    out = args.out
    earlier = [out / name for name in RUN_FILES if (out / name).exists()]
    if earlier and not (args.resume or args.force):
        raise RegressorError(f"{earlier[0]}: an earlier training run is in {out}; pass "
                             "--resume to continue it or --force to start afresh and "
                             "overwrite it")
    if args.resume and args.force:
        raise RegressorError("--resume continues the run in --out and --force discards it: "
                             "give one of them")
    # Found now, not after the training: where the run and the embeddings will be written.
    check_output_folder(out, "output folder")
    check_output_folder(args.embedding_cache or default_cache_root(), "embedding cache folder")
    if args.force:
        for path in earlier:
            if path.is_file():
                path.unlink()
    data_root = args.data_root if args.data_root is not None else default_data_root()
    config = TrainConfig(head=args.head, loss=args.loss, iou_variant=args.iou_variant,
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay,
                         normalize_targets=args.normalize_targets, seed=args.seed,
                         raw_embeddings=args.raw_embeddings,
                         evaluated_checkpoint=args.regressor_checkpoint)
    backbones = load_clips(args.clip, device=args.device)
    data = {split: split_data(data_root, split, backbones, args.embedding_cache,
                              raw=config.raw_embeddings)
            for split in ("train", "val", "test")}
    print(f"{len(data['train'])} train / {len(data['val'])} val / {len(data['test'])} test "
          f"expressions; embedding size {data['train'].embed_dim}")
    result = train_regressor(data["train"], data["val"], config, out_dir=args.out,
                             resume=args.resume, device=args.device,
                             clip=clip_provenance(backbones), log=print)
    checkpoint = args.out / "best.pt"
    if config.evaluated_checkpoint == "last" and result.history:
        checkpoint = save_checkpoint(args.out / "final.pt", result.head, config,
                                     data["train"].embed_dim, clip_provenance(backbones),
                                     epoch=len(result.history),
                                     val_miou=result.history[-1]["val_miou"])
    results = results_on_split(result, data["test"].to(args.device), data_root, backbones,
                           checkpoint if checkpoint.is_file() else None)
    atomic_write_json(args.out / "results.json", results)

    metrics = results["metrics"]
    evaluated = (f"epoch {len(result.history)} (last)" if config.evaluated_checkpoint == "last"
                 else f"epoch {result.best_epoch} (best)")
    print(f"best epoch {result.best_epoch} (val mIoU {result.best_val_miou:.3f}); test mIoU of "
          f"{evaluated} {metrics['miou']:.3f}, accuracy {metrics['accuracy']:.3f} on "
          f"{metrics['n']} expressions{honesty_label(results['provenance'])} -> "
          f"{args.out / 'results.json'}")
    return 0

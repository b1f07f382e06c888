"""Training a box-regression head: its configuration, checkpoints, the epoch loop, its curves.

``train_regressor`` trains a head (:mod:`refcocog_tools.methods.regressor.heads`) with Adam on
:class:`~refcocog_tools.methods.regressor.data.RegressionData`
and keeps the best epoch by validation
mean IoU. Mean IoU is always measured in pixels, on boxes clipped to the image, with
``core.boxes.box_iou_pairs`` (torchvision's ``box_iou``, pair by pair). Every epoch reseeds from
``(seed, epoch)``, so a run resumed from ``last.pt`` draws exactly what a straight run draws.
Checkpoints are plain data (``torch.save`` of a dict with a format field), written atomically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from refcocog_tools.core.boxes import box_iou_pairs
from refcocog_tools.core.files import (
    UnreadableFileError,
    atomic_torch_save,
    atomic_write_json,
    load_torch_file,
)
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout
from refcocog_tools.methods.regressor.data import RegressionData, to_pixels
from refcocog_tools.methods.regressor.heads import HEADS, BoxLoss, decode_boxes, make_head
from refcocog_tools.methods.regressor.history import write_history

if TYPE_CHECKING:
    pass

# The study's learning rates: 0.01 for the bottleneck, 0.001 for the large head.
STUDY_LR = {"bottleneck": 1e-2, "large": 1e-3}
CHECKPOINT_FORMAT = "refcocog-tools-regressor/1"
EVALUATED_CHECKPOINTS = ("best", "last")
# What a training run writes into its --out folder.
RUN_FILES = ("best.pt", "last.pt", "final.pt", "history.json", "config.json", "curves.png",
             "results.json")


class RegressorError(ValueError):
    """A checkpoint or resume state does not fit the requested run (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Configuration and evaluation
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
    ious = box_iou_pairs(pixels, data.boxes)
    return total / max(len(data), 1), ious, pixels


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
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


# Fields that may differ between the run that wrote last.pt and the one resuming it.
_RESUMABLE_CHANGES = {"epochs", "evaluated_checkpoint"}  # the latter changes no training


def trained_on(layout: Layout) -> dict[str, str]:
    """The data a head was trained on, as checkpoints record it: the dataset of the family and
    its split-by (the keys of a results document's provenance), trained on ``train``, its epoch
    chosen on ``val``."""
    return {"dataset": layout.dataset, "split_by": layout.split_by}


def recorded_training_data(checkpoint: dict[str, Any]) -> dict[str, str]:
    """What a saved head says it was trained on (``trained_on``'s keys); a checkpoint written
    before checkpoints recorded their data was trained on RefCOCOg umd."""
    return {key: checkpoint.get(key, value) for key, value in trained_on(DEFAULT_LAYOUT).items()}


def _check_resumable(state: dict[str, Any], config: TrainConfig, embed_dim: int,
                     clip: Sequence[dict[str, Any]], data: dict[str, str], path: Path) -> None:
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
    saved_data = recorded_training_data(state)
    if saved_data != data:
        raise RegressorError(f"{path}: cannot resume, it was trained on {saved_data['dataset']} "
                             f"split by {saved_data['split_by']}, not {data['dataset']} split "
                             f"by {data['split_by']}")


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------
@dataclass
class _Progress:
    """What a run has done so far: what ``last.pt`` keeps and a resume restores."""

    epoch: int  # epochs completed
    history: list[dict[str, float]]
    best_epoch: int
    best_miou: float
    best_state: dict[str, Any]  # the best epoch's weights


def train_regressor(
    train: RegressionData,
    val: RegressionData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    clip: Sequence[dict[str, Any]] = (),
    log: Callable[[str], None] | None = None,
    layout: Layout = DEFAULT_LAYOUT,
) -> TrainResult:
    """Train a head with Adam; keep the best epoch by validation mean IoU.

    With ``out_dir``: after every epoch ``history.json``, ``curves.png`` and ``last.pt`` (weights,
    optimizer state, epoch, history) are rewritten, and ``best.pt`` (+ ``config.json``) whenever
    validation mean IoU improves; all atomically. ``resume=True`` continues from ``last.pt``
    (same configuration except ``epochs``, same data), and gives exactly the run that never
    stopped. ``layout``: the dataset of the family ``train`` and ``val`` come from, recorded in
    every checkpoint (default RefCOCOg umd).
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError("training and validation data must not be empty")
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    embed_dim = train.embed_dim
    data = trained_on(layout)
    head = build_head(config, embed_dim).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    progress = _Progress(0, [], 0, -math.inf, copy.deepcopy(head.state_dict()))
    if resume and out is not None and (out / "last.pt").is_file():
        progress = _resume(out / "last.pt", head, optimizer, config, embed_dim, clip, data,
                           device)
        if log:
            log(f"resuming from {out / 'last.pt'} after epoch {progress.epoch}")
    elif resume and log:
        log("nothing to resume: starting from scratch")

    loss_fn = config.box_loss()
    train_d, val_d = train.to(device), val.to(device)
    for epoch in range(progress.epoch, config.epochs):
        train_loss, train_miou = _train_epoch(head, optimizer, loss_fn, train_d, config, epoch,
                                              device)
        val_loss, val_ious, _ = evaluate_head(head, val_d, config)
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "train_miou": train_miou,
                 "val_loss": val_loss, "val_miou": float(val_ious.mean())}
        progress.epoch = epoch + 1
        progress.history.append(entry)
        if log:
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f} "
                f"mIoU {train_miou:.3f} | val loss {val_loss:.4f} "
                f"mIoU {entry['val_miou']:.3f}")
        if entry["val_miou"] > progress.best_miou:
            progress.best_epoch, progress.best_miou = epoch + 1, entry["val_miou"]
            progress.best_state = copy.deepcopy(head.state_dict())
            if out is not None:
                _save_best(out, head, config, embed_dim, clip, data, progress)
        if out is not None:
            _save_last(out, head, optimizer, config, embed_dim, clip, data, progress)

    if out is not None and progress.history:
        write_history(out, progress.history)
    if config.evaluated_checkpoint == "best":
        head.load_state_dict(progress.best_state)
    head.eval()
    return TrainResult(head, progress.history, progress.best_epoch, progress.best_miou, config)


def _resume(last: Path, head: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
            embed_dim: int, clip: Sequence[dict[str, Any]], data: dict[str, str],
            device: torch.device) -> _Progress:
    """Load ``last.pt`` into ``head`` and ``optimizer``; what the run had done."""
    state = _read_checkpoint(last, device, "training state")
    try:
        _check_resumable(state, config, embed_dim, clip, data, last)
        head.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        return _Progress(epoch=int(state["epoch"]), history=list(state["history"]),
                         best_epoch=int(state["best_epoch"]),
                         best_miou=float(state["best_val_miou"]),
                         best_state=state["best_state_dict"])
    except RegressorError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise RegressorError(f"{last}: damaged training state ({type(err).__name__}: "
                             f"{detail})") from None


def _train_epoch(head: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: BoxLoss,
                 data: RegressionData, config: TrainConfig, epoch: int,
                 device: torch.device) -> tuple[float, float]:
    """One pass over ``data`` in this epoch's seeded order: mean loss, mean IoU (pixels)."""
    with torch.random.fork_rng(devices=_fork_devices(device)):
        torch.manual_seed(_derived_seed(config.seed, epoch, 1))  # dropout masks
        shuffle = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, 2))
        order = torch.randperm(len(data), generator=shuffle).to(device)
        head.train()
        total_loss, ious = 0.0, []
        for batch in order.split(config.batch_size):
            target = data.targets(batch, config.normalize_targets)
            pred = decode_boxes(head(data.features(batch)))
            loss = loss_fn(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            pixels = to_pixels(pred.detach(), data.sizes[batch], config.normalize_targets)
            ious.append(box_iou_pairs(pixels, data.boxes[batch]))
    return total_loss / len(data), float(torch.cat(ious).mean())


def _save_best(out: Path, head: nn.Module, config: TrainConfig, embed_dim: int,
               clip: Sequence[dict[str, Any]], data: dict[str, str],
               progress: _Progress) -> None:
    """``best.pt`` and ``config.json`` for the epoch that just improved validation mean IoU."""
    save_checkpoint(out / "best.pt", head, config, embed_dim, clip, **data,
                    epoch=progress.best_epoch, val_miou=progress.best_miou)
    atomic_write_json(out / "config.json", {
        "config": config.to_dict(), "embed_dim": embed_dim, "clip": list(clip), **data,
        "best_epoch": progress.best_epoch, "val_miou": progress.best_miou})


def _save_last(out: Path, head: nn.Module, optimizer: torch.optim.Optimizer,
               config: TrainConfig, embed_dim: int, clip: Sequence[dict[str, Any]],
               data: dict[str, str], progress: _Progress) -> None:
    """``last.pt`` (everything a resume needs), ``history.json`` and ``curves.png``."""
    atomic_torch_save(out / "last.pt", {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "embed_dim": embed_dim,
        "clip": [dict(c) for c in clip],
        **data,
        "epoch": progress.epoch,
        "state_dict": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": progress.history,
        "best_epoch": progress.best_epoch,
        "best_val_miou": progress.best_miou,
        "best_state_dict": progress.best_state,
    })
    write_history(out, progress.history)



"""Chapter 04's experiments as functions: the large head trained with each loss on each target
unit, its runs scored on the test split, why a pixel MSE depends on the image size, and the
share of the IoU term in the mixed loss.

The chapter calls these and shows their tables; the tests in ``tests/test_chapter_logic.py``
run them on small generated data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from refcocog_tools.engine.regressor_results import results_on_split
from refcocog_tools.methods.regressor.data import RegressionData
from refcocog_tools.methods.regressor.heads import BoxLoss, iou_loss
from refcocog_tools.methods.regressor.training import (
    TrainConfig,
    TrainResult,
    evaluate_head,
    predict_boxes,
    train_regressor,
)
from refcocog_tools.report.chapter_answers import document_cells

LOSSES = ("mse", "mix")
UNITS = ("pixels", "normalized")


@dataclass
class LossRun:
    """One training run of the comparison: its configuration, the kept checkpoint's result,
    its mean IoU re-scored in evaluation mode on train and val, and (once scored) its test
    split's results document."""

    config: TrainConfig
    result: TrainResult
    train_miou: float
    val_miou: float
    test: dict[str, Any] | None = None
    out_dir: Path | None = None


def run_dir_of(run_dir: str | Path | None, loss: str, unit: str) -> Path | None:
    """Where a run writes its checkpoints: ``<run_dir>/<loss>-<unit>``, or nowhere (memory)."""
    return Path(run_dir) / f"{loss}-{unit}" if run_dir else None


def train_loss_runs(train: RegressionData, val: RegressionData, base: TrainConfig, *,
                    losses: Sequence[str] = LOSSES, units: Sequence[str] = UNITS,
                    run_dir: str | Path | None = None, device: str = "cpu",
                    clip: Sequence[Mapping[str, Any]] = ()) -> dict[tuple[str, str], LossRun]:
    """Train ``base`` once per loss and target unit, keyed ``(loss, unit)``.

    Every run starts from the same seeded weights and batch order (``base.seed``), so the runs
    differ only by their loss and unit. Files are written only with ``run_dir``: writing a
    checkpoint after every epoch is what a long run needs, and on the embedded defaults it
    would take longer than the training.
    """
    runs = {}
    for loss in losses:
        for unit in units:
            if unit not in UNITS:
                raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
            config = replace(base, loss=loss, normalize_targets=unit == "normalized")
            out_dir = run_dir_of(run_dir, loss, unit)
            result = train_regressor(train, val, config, out_dir=out_dir, device=device,
                                     clip=list(clip))
            runs[loss, unit] = LossRun(
                config, result,
                train_miou=float(evaluate_head(result.head, train, config)[1].mean()),
                val_miou=float(evaluate_head(result.head, val, config)[1].mean()),
                out_dir=out_dir)
    return runs


def score_on_test(runs: Mapping[tuple[str, str], LossRun], test: RegressionData,
                  data_root: str | Path, backbones: Sequence[Any], limit: int = 0) -> None:
    """Each run's kept checkpoint on the test split as a results document (``run.test``)."""
    for run in runs.values():
        checkpoint = run.out_dir / "best.pt" if run.out_dir else None
        run.test = results_on_split(run.result, test, data_root, backbones, checkpoint,
                                    limit=limit)


def pixel_mse_scale(sizes: Sequence[tuple[int, int]] = ((320, 240), (640, 480)),
                    shift: float = 0.1) -> pd.DataFrame:
    """One box (the middle half of the image) shifted right by ``shift`` of the image width,
    at each image size: its pixel MSE, its MSE on normalised coordinates and its IoU."""
    rows = []
    for width, height in sizes:
        size = torch.tensor([[width, height, width, height]], dtype=torch.float32)
        true_box = torch.tensor([[0.25, 0.25, 0.75, 0.75]]) * size
        shifted = true_box + torch.tensor([[shift, 0.0, shift, 0.0]]) * size
        rows.append({
            "image size": f"{width} x {height}",
            "pixel MSE": float(F.mse_loss(shifted, true_box)),
            "normalised MSE": float(F.mse_loss(shifted / size, true_box / size)),
            "IoU": float(1 - BoxLoss("iou", "iou")(shifted, true_box)),
        })
    return pd.DataFrame(rows).set_index("image size")


def mixed_loss_terms(runs: Mapping[tuple[str, str], LossRun],
                     val: RegressionData) -> pd.DataFrame:
    """For each target unit's mixed-loss run, its two weighted terms on the validation split
    and the IoU term's share of their sum."""
    rows = []
    for unit in UNITS:
        run = runs.get(("mix", unit))
        if run is None:
            continue
        config = run.config
        index = torch.arange(len(val))
        pred = predict_boxes(run.result.head, val, config.normalize_targets)
        target = val.targets(index, config.normalize_targets)
        mse_term = config.mse_weight * float(F.mse_loss(pred, target))
        iou_term = config.iou_weight * float(iou_loss(pred, target, config.iou_variant))
        rows.append({"targets": unit, f"{config.mse_weight} x MSE": mse_term,
                     f"{config.iou_weight} x {config.iou_variant} loss": iou_term,
                     "IoU share of the loss": iou_term / (mse_term + iou_term)})
    return pd.DataFrame(rows).set_index("targets")


def loss_runs_table(runs: Mapping[tuple[str, str], LossRun],
                    study: Mapping[str, float]) -> pd.DataFrame:
    """The study's row (its mean IoU per split, ``study``) above one row per run: loss,
    targets, best epoch, train / val mean IoU and the test mean IoU and accuracy with their
    intervals (``report.chapter_answers.document_cells``)."""
    rows = [{"numbers": "study", "loss": "mix", "targets": "pixels", "best epoch": 1,
             "train miou": study["train"], "val miou": study["val"],
             "test miou": study["test"], "test accuracy": None, "n (test)": None}]
    for (loss, unit), run in runs.items():
        if run.test is None:
            raise ValueError(f"run {loss}, {unit} has no test results: call score_on_test")
        cells = document_cells(run.test)
        rows.append({"numbers": "this build", "loss": loss, "targets": unit,
                     "best epoch": run.result.best_epoch, "train miou": run.train_miou,
                     "val miou": run.val_miou, "test miou": cells["miou"],
                     "test accuracy": cells["accuracy"], "n (test)": run.test["metrics"]["n"]})
    return pd.DataFrame(rows).astype(object)

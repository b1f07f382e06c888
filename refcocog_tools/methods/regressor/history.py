"""A training run's history: the per-epoch losses and mean IoUs as JSON and as curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from refcocog_tools.core.files import (
    atomic_write_bytes,
    atomic_write_json,
)

if TYPE_CHECKING:  # matplotlib is slow to import: only when a curve is drawn
    from matplotlib.figure import Figure


# ----------------------------------------------------------------------------------------------
# Curves
# ----------------------------------------------------------------------------------------------
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

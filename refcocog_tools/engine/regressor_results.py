"""A trained regressor's predictions on a split as a results document, like every method's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refcocog_tools.core.files import sha256_file
from refcocog_tools.data.layouts import (
    DEFAULT_LAYOUT,
    Layout,
)
from refcocog_tools.engine.results import (
    provenance,
    results_document,
)
from refcocog_tools.methods.regressor.data import RegressionData
from refcocog_tools.methods.regressor.training import (
    TrainResult,
    evaluate_head,
)


# ----------------------------------------------------------------------------------------------
# Results and the command line: train-regressor
# ----------------------------------------------------------------------------------------------
def results_on_split(result: TrainResult, test: RegressionData, data_root: str | Path,
                     backbones: Sequence[Any], checkpoint: Path | None = None,
                     limit: int = 0, split: str = "test",
                     layout: Layout = DEFAULT_LAYOUT) -> dict[str, Any]:
    """The best head on ``test``, the ``split`` of the ``layout``'s dataset (default RefCOCOg
    umd's test split), in the project's results format; the provenance records the dataset,
    split-by and split as ``evaluate``'s does.

    ``metrics`` is :func:`refcocog_tools.engine.metrics.summarize` of the per-expression rows,
    so it has the keys of every other method's results (``n``, ``miou``, ``accuracy``,
    ``cosine``, ``by_spatial``, ``by_category``); ``cosine`` is None because no crop is embedded
    here. The
    head's test loss, which only a trained head has, is under ``training``.
    """
    loss, ious, boxes = evaluate_head(result.head, test, result.config)
    rows = []
    for row, box, gt, iou in zip(test.rows, boxes.tolist(), test.boxes.tolist(), ious.tolist(),
                                 strict=True):
        rows.append({**row, "box": [round(v, 3) for v in box],
                     "gt_box": [round(v, 3) for v in gt], "iou": round(iou, 6), "cosine": None,
                     "chosen": -1, "n_proposals": 0})
    config = {"method": "regressor", **result.config.to_dict(), "split": split, "limit": limit}
    if checkpoint is not None:
        config["checkpoint"] = str(checkpoint)
        config["checkpoint_sha256"] = sha256_file(checkpoint)
    return results_document(
        rows, config=config,
        provenance=provenance(data_root, split, backbones, proposer=None, layout=layout),
        training={"test_loss": loss, "best_epoch": result.best_epoch,
                  "best_val_miou": result.best_val_miou, "epochs_run": len(result.history)},
    )

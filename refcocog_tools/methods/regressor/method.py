"""Box-regression heads on top of frozen CLIP (sections 1 and 2 of the study): the grounding
method and the ``train-regressor`` command.

A head reads the concatenation of the CLIP embedding of the whole image and the CLIP embedding of
one expression, and outputs one box. There are no proposals: this is the study's "can a small
network on top of CLIP solve the task directly?" experiment. The parts, one job each:

* :mod:`refcocog_tools.methods.regressor.heads`: the heads, the box parameterisation and the losses;
* :mod:`refcocog_tools.methods.regressor.data`: the cached embeddings and boxes of a split;
* :mod:`refcocog_tools.methods.regressor.training`: configuration, checkpoints, the training loop;
* this module: a trained head as a grounding method, its results document and the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.core.files import sha256_file
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.regressor.data import to_pixels
from refcocog_tools.methods.regressor.heads import decode_boxes
from refcocog_tools.methods.regressor.training import (
    RegressorError,
    TrainConfig,
    load_checkpoint,
    recorded_training_data,
)


# ----------------------------------------------------------------------------------------------
# The grounding method for the evaluation engine
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressorOptions:
    """The trained regressor's settings: its checkpoint (``train-regressor``'s best.pt) and
    the device its head runs on."""

    checkpoint: str | Path | None = None
    device: str = "cpu"


class RegressorMethod:
    """A trained head as a grounding method: one box per expression, proposals ignored.

    ``backbones`` must be the ones the head was trained on (checked by checksum, in order).
    """

    name = "regressor"

    def __init__(self, backbones: Sequence[Any], options: RegressorOptions) -> None:
        if options.checkpoint is None:
            raise ValueError("method 'regressor' needs --checkpoint (a train-regressor best.pt)")
        self.backbones = list(backbones)
        self.options = options
        self.checkpoint_path = Path(options.checkpoint)
        self.device = torch.device(options.device)
        self.head, payload = load_checkpoint(self.checkpoint_path, self.device)
        self.train_config = TrainConfig.from_dict(payload["config"])
        self.best_epoch = payload.get("epoch")
        self.trained_on = recorded_training_data(payload)
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
            "trained_on": self.trained_on,
            **self.train_config.to_dict(),
        }

    @torch.no_grad()
    def predict(self, image: Any, expressions: Sequence[str], proposals: Any = None) -> Any:
        """Boxes (E, 4) in pixels clipped to the image; ``chosen`` is -1 (no proposal)."""
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



"""The output of a grounding method: one box per expression, plus the scores behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from refcocog_tools.core.boxes import as_boxes

if TYPE_CHECKING:  # proposals.py imports the dataset and models; keep this module light
    from refcocog_tools.proposals.structures import Proposals


@dataclass
class Prediction:
    """What a method predicts for the expressions of one image.

    ``boxes`` (E, 4) float32 xyxy pixels, ``chosen`` (E,) long indices into the proposals,
    ``scores`` (E, P) float32 per-proposal scores (kept for inspection and plots).
    """

    boxes: torch.Tensor
    chosen: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self) -> None:
        n = self.scores.shape[0]
        if self.boxes.shape != (n, 4) or self.chosen.shape != (n,):
            raise ValueError(
                f"inconsistent prediction shapes: boxes {tuple(self.boxes.shape)}, "
                f"chosen {tuple(self.chosen.shape)}, scores {tuple(self.scores.shape)}"
            )

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    @classmethod
    def from_scores(cls, scores: torch.Tensor, proposals: Proposals) -> Prediction:
        """Pick, per expression (row), the proposal with the highest score.

        Ties go to the lowest index (``torch.argmax`` returns the first maximum), so the result
        is deterministic.
        """
        boxes = as_boxes(proposals.boxes, torch.float32)
        scores = torch.as_tensor(scores, dtype=torch.float32).detach().cpu()
        if scores.ndim != 2 or scores.shape[1] != boxes.shape[0]:
            raise ValueError(
                f"scores must be (E, P) with P = {boxes.shape[0]} proposals, "
                f"got {tuple(scores.shape)}"
            )
        if scores.shape[0] == 0:
            chosen = torch.zeros(0, dtype=torch.long)
        else:
            chosen = scores.argmax(dim=1)
        return cls(boxes=boxes[chosen].clone(), chosen=chosen, scores=scores)

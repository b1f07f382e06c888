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
    ``runner_up`` (E,) long: the proposal with the second-highest score (-1 where no other
    proposal has a finite score), and ``runner_up_boxes`` (E, 4) its box (NaN where none);
    set by ``from_scores``, None for a method whose box is no proposal's.
    """

    boxes: torch.Tensor
    chosen: torch.Tensor
    scores: torch.Tensor
    runner_up: torch.Tensor | None = None
    runner_up_boxes: torch.Tensor | None = None

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
        runner_up, runner_up_boxes = _runner_up(scores, chosen, boxes)
        return cls(boxes=boxes[chosen].clone(), chosen=chosen, scores=scores,
                   runner_up=runner_up, runner_up_boxes=runner_up_boxes)


def _runner_up(scores: torch.Tensor, chosen: torch.Tensor, boxes: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the best proposal other than the chosen one (first index on ties, as
    ``argmax``), -1 and a NaN box where every other score is -inf (filtered) or there is none."""
    others = scores.clone()
    others[torch.arange(len(chosen)), chosen] = float("-inf")
    if others.shape[1] < 2:
        runner_up = torch.full((len(chosen),), -1, dtype=torch.long)
    else:
        runner_up = others.argmax(dim=1)
        runner_up[~torch.isfinite(others.max(dim=1).values)] = -1
    found = runner_up >= 0
    runner_up_boxes = torch.full((len(chosen), 4), float("nan"))
    runner_up_boxes[found] = boxes[runner_up[found]]
    return runner_up, runner_up_boxes

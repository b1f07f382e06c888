"""Floors: methods that use no model, to show what the proposals alone are worth.

A CLIP method is only interesting by how much it beats picking a random proposal, the largest
one, or the one nearest the image centre with the same proposer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from refcocog_tools.methods.prediction import Prediction

if TYPE_CHECKING:
    from refcocog_tools.proposals.structures import Proposals


def _same_for_every_expression(scores: torch.Tensor, expressions: Sequence[str]) -> torch.Tensor:
    return scores.reshape(1, -1).expand(len(expressions), -1).clone()


class RandomProposal:
    """A uniformly random proposal per expression.

    The choice is a deterministic function of ``seed``, the expression and the proposal boxes
    (hashed with SHA-256), so it does not depend on the order in which images are evaluated,
    on batching or on the Python hash seed.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "seed": self.seed}

    def _generator(self, expression: str, boxes: torch.Tensor) -> torch.Generator:
        digest = hashlib.sha256()
        digest.update(str(self.seed).encode())
        digest.update(b"\0" + expression.encode("utf-8") + b"\0")
        digest.update(boxes.contiguous().numpy().tobytes())
        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1))
        return generator

    def predict(self, image: Image.Image, expressions: Sequence[str], proposals: Proposals
                ) -> Prediction:
        boxes = proposals.boxes
        rows = [torch.rand(boxes.shape[0], generator=self._generator(e, boxes))
                for e in expressions]
        scores = torch.stack(rows) if rows else torch.zeros(0, boxes.shape[0])
        # argmax of i.i.d. uniform scores is a uniform choice (ties have probability ~0).
        return Prediction.from_scores(scores, proposals)


class LargestProposal:
    """The proposal with the largest area (first one on ties)."""

    name = "largest"

    def config(self) -> dict[str, Any]:
        return {"method": self.name}

    def predict(self, image: Image.Image, expressions: Sequence[str], proposals: Proposals
                ) -> Prediction:
        boxes = proposals.boxes
        area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        return Prediction.from_scores(_same_for_every_expression(area, expressions), proposals)


class CenterProposal:
    """The proposal whose centre is nearest the image centre (first one on ties).

    Scores are minus the Euclidean distance in pixels, so higher is better as for all methods.
    """

    name = "center"

    def config(self) -> dict[str, Any]:
        return {"method": self.name}

    def predict(self, image: Image.Image, expressions: Sequence[str], proposals: Proposals
                ) -> Prediction:
        boxes = proposals.boxes
        width, height = image.size
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        target = torch.tensor([width / 2, height / 2], dtype=torch.float32)
        distance = (centres - target).norm(dim=1)
        return Prediction.from_scores(_same_for_every_expression(-distance, expressions),
                                      proposals)


FLOORS = {cls.name: cls for cls in (RandomProposal, LargestProposal, CenterProposal)}

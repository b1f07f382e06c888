"""Model-free floors and the Prediction helper, with proposals whose answers are known."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from refcocog_tools.methods.floors import FLOORS, CenterProposal, LargestProposal, RandomProposal
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.proposals.structures import Proposals

IMAGE = Image.new("RGB", (100, 80))  # centre (50, 40)


def _proposals() -> Proposals:
    boxes = torch.tensor([
        [0.0, 0.0, 20.0, 20.0],  # area 400, centre (10, 10)
        [40.0, 30.0, 62.0, 52.0],  # area 484, centre (51, 41): nearest the centre
        [60.0, 0.0, 100.0, 30.0],  # area 1200: largest
        [0.0, 60.0, 30.0, 80.0],  # area 600
    ])
    return Proposals(boxes, ["a", "b", "c", "d"])


def test_prediction_from_scores() -> None:
    proposals = _proposals()
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.0], [2.0, 1.0, 2.0, -1.0]])
    pred = Prediction.from_scores(scores, proposals)
    assert pred.chosen.tolist() == [1, 0]  # ties go to the first maximum
    assert pred.chosen.dtype == torch.long
    assert torch.equal(pred.boxes, proposals.boxes[[1, 0]])
    assert pred.boxes.dtype == torch.float32 and pred.scores.dtype == torch.float32
    assert len(pred) == 2
    with pytest.raises(ValueError, match="scores must be"):
        Prediction.from_scores(torch.zeros(2, 3), proposals)
    with pytest.raises(ValueError, match="inconsistent"):
        Prediction(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2, 4))


def test_largest_and_center() -> None:
    proposals = _proposals()
    expressions = ["the big one", "the middle one", "anything"]
    largest = LargestProposal().predict(IMAGE, expressions, proposals)
    assert largest.chosen.tolist() == [2, 2, 2]
    assert largest.scores.shape == (3, 4)
    assert largest.scores[0].tolist() == [400.0, 484.0, 1200.0, 600.0]
    centre = CenterProposal().predict(IMAGE, expressions, proposals)
    assert centre.chosen.tolist() == [1, 1, 1]
    assert centre.boxes[0].tolist() == [40.0, 30.0, 62.0, 52.0]
    assert centre.scores[0, 0].item() == pytest.approx(-((40**2 + 30**2) ** 0.5))


def test_random_is_seeded_and_order_independent() -> None:
    proposals = Proposals(torch.tensor([[i, 0.0, i + 5.0, 5.0] for i in range(10)]), [None] * 10)
    expressions = [f"expression {i}" for i in range(40)]
    method = RandomProposal(seed=3)
    first = method.predict(IMAGE, expressions, proposals).chosen
    # Same seed: same choices, whatever the order and grouping of the calls.
    reversed_ = RandomProposal(seed=3).predict(IMAGE, expressions[::-1], proposals).chosen
    assert torch.equal(first, reversed_.flip(0))
    one_by_one = torch.cat([method.predict(IMAGE, [e], proposals).chosen for e in expressions])
    assert torch.equal(first, one_by_one)
    # It really is random: several proposals get picked, and another seed changes choices.
    assert len(set(first.tolist())) >= 5
    other = RandomProposal(seed=4).predict(IMAGE, expressions, proposals).chosen
    assert not torch.equal(first, other)
    assert method.config() == {"method": "random", "seed": 3}


def test_floors_handle_single_proposal_and_no_expression() -> None:
    whole = Proposals.whole_image(IMAGE.size)
    for cls in FLOORS.values():
        method = cls()
        pred = method.predict(IMAGE, ["a thing", "another"], whole)
        assert pred.chosen.tolist() == [0, 0]
        assert pred.boxes.tolist() == [[0.0, 0.0, 100.0, 80.0]] * 2
        empty = method.predict(IMAGE, [], whole)
        assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.scores.shape == (0, 1)
        assert method.config()["method"] == method.name

"""Tests with teeth: with the toy CLIP, on a world it never saw, methods must beat chance.

The world is generated with seed 7 (the book uses 0; toy-rn was trained on the train split of
seed 1000's world), 60 images, evaluated on its test split (91 expressions) with ground-truth
proposals. The floor is the random method's *expected* accuracy, mean(1 / proposals), which a
seeded draw only approximates.

MARGIN comes from the sample size, not from the results: the floor here is 0.24, and a method
at chance has a standard error of sqrt(0.24 * 0.76 / 91) = 0.045, so 0.10 (just over two
standard errors) is what a method must clear to be told apart from chance. Measured with the
shipped toy-rn: crop baseline 0.76, red-circle 0.57, red-circle without debiasing 0.58 (and
0.75 / 0.59 / 0.66 with the checkpoint trained under ATEN_CPU_CAPABILITY=default, whose bytes
differ). Three methods do not clear it, for reasons of the toy model, so they are not asserted
here: Grad-CAM 0.00 (toy-rn's last ResNet stage is a 2 x 2 grid at 64 px, so its box is a
quadrant or the whole image, never IoU >= 0.5 with an object 1/7 to 1/3 of the image wide),
colour background 0.33 and colour overlay 0.42 (the toy CLIP never saw painted backgrounds or
tints, nor their prompts). Red-circle does not beat the crop baseline on position expressions
with toy-rn (0.41 vs 0.71), also for targets wholly inside CLIP's centre crop (0.38 vs 0.71),
so the centre crop is not the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from refcocog_tools.backbones import load_clips
from refcocog_tools.dataset import RefCOCOg
from refcocog_tools.evaluate import evaluate
from refcocog_tools.figures import expression_type_table
from refcocog_tools.minidata import EXPRESSION_TYPES, write_mini_dataset
from refcocog_tools.prediction import Prediction
from refcocog_tools.prompt_cache import EmbeddingCache
from refcocog_tools.proposals import Proposals, make_proposer
from refcocog_tools.registry import make_method
from refcocog_tools.toy_world import TOY_METHODS, evaluate_toy_methods, random_floor

WORLD_SEED = 7
WORLD_IMAGES = 60
MARGIN = 0.10
ASSERTED = ("crop baseline", "red-circle, no debiasing", "red-circle")


class ShuffledChoices:
    """A deliberately broken method: the wrapped method's choices go through a random
    permutation of the proposals (a scrambled box index)."""

    name = "shuffled"

    def __init__(self, method, seed: int = 0) -> None:
        self.method = method
        self.generator = torch.Generator().manual_seed(seed)

    def config(self) -> dict:
        return {**self.method.config(), "broken": "choices shuffled"}

    def predict(self, image, expressions: Sequence[str], proposals: Proposals) -> Prediction:
        prediction = self.method.predict(image, expressions, proposals)
        chosen = torch.randperm(len(proposals), generator=self.generator)[prediction.chosen]
        return Prediction(proposals.boxes[chosen].float(), chosen, prediction.scores)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_dataset(tmp_path_factory.mktemp("toy-world"), WORLD_IMAGES, WORLD_SEED)


@pytest.fixture(scope="module")
def toy_results(toy_root: Path, session_cache: Path) -> dict:
    root = toy_root
    methods = [m for m in TOY_METHODS if m[0] in ASSERTED]
    results = evaluate_toy_methods(root, "test", "toy-rn", methods, model_cache=session_cache)
    backbones = load_clips("toy-rn", cache=session_cache)
    broken = ShuffledChoices(make_method("red-circle", backbones, cache=EmbeddingCache(),
                                         debias_pool=RefCOCOg(root, "train").sentences()))
    results["shuffled red-circle"] = evaluate(RefCOCOg(root, "test", view="expression"), broken,
                                              make_proposer("gt"), backbones)
    return results


def _clears_floor(doc: dict) -> bool:
    return doc["metrics"]["accuracy"] >= random_floor(doc["predictions"]) + MARGIN


@pytest.mark.parametrize("label", ASSERTED)
def test_zero_shot_methods_beat_the_random_floor(toy_results: dict, toy_root: Path,
                                                 label: str) -> None:
    assert _clears_floor(toy_results[label]), \
        expression_type_table(toy_results, toy_root).to_string()


def test_a_method_with_shuffled_choices_fails_the_same_check(toy_results: dict) -> None:
    assert _clears_floor(toy_results["red-circle"])  # the same method, unbroken
    assert not _clears_floor(toy_results["shuffled red-circle"])


def test_the_table_by_expression_type(toy_results: dict, toy_root: Path) -> None:
    table = expression_type_table(toy_results, toy_root).set_index("method")
    types = list(table.columns[:len(EXPRESSION_TYPES)])
    assert [t.split(" (n=")[0] for t in types] == list(EXPRESSION_TYPES)
    assert list(table.columns[len(EXPRESSION_TYPES):]) == ["all", "source"]
    n = len(toy_results["red-circle"]["predictions"])
    assert sum(int(t.split("(n=")[1].rstrip(")")) for t in types) == n
    assert table.loc["red-circle", "all"] == pytest.approx(
        toy_results["red-circle"]["metrics"]["accuracy"])


def test_results_name_the_toy_weights(toy_results: dict) -> None:
    clip = toy_results["red-circle"]["provenance"]["clip"][0]
    assert clip["toy"] and clip["weights"] == "toy weights trained on the synthetic world"

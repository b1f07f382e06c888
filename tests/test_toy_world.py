"""Tests with teeth: with the toy CLIP, on a world it never saw, methods must beat chance.

The world is generated with seed 7 (the book uses 0; toy-rn was trained on the train split of
seed 1000's world), 200 images, evaluated on its test split (306 expressions, 3 to 5
ground-truth proposals each). The floor is the random method's *expected* accuracy,
mean(1 / proposals) = 0.260, which a seeded draw only approximates.

The margin is Z = 3 standard deviations of a random choice's accuracy over those expressions
(``random_floor_sd``: 0.025 here, so a method must reach 0.335): a method at chance clears it
in about one run in 700. It follows from the sample size and the statistics of chance, not
from the methods' results; the old 60-image world (n = 91) needed 0.10, too coarse to tell a
weak method from chance. The module fixture evaluates every zero-shot method once (about 50 CPU
seconds on the 2-core machine).

Measured with the shipped toy-rn (accuracy, all 306): crop baseline 0.71, colour overlay 0.41,
Grad-CAM's proposal with the most heat (layer3) 0.55, red-circle 0.61 (0.61 without
debiasing), relations resolver 0.97 / 0.96. Two zero-shot methods do not clear it, and the
test says so (strict xfail: it fails the day they do):

* colour background 0.29: it paints the background in colours the world names objects by,
  and the toy CLIP reads the paint as the object's colour. Of 74 plain expressions, 28 had
  a proposal whose background colour is the expression's colour word; the method chose that
  proposal in 27 (a random choice: about 8).
* Grad-CAM's own box 0.11 (layer3, 4 x 4; 0.01 with layer4, 2 x 2 at 64 px; 0.07 with
  layer2; thresholds 0.3 / 0.7 are worse): the map finds the object (0.55 as a proposal
  choice) but a box around its upper half is not tight enough for IoU >= 0.5.

Red-circle vs the crop baseline on position expressions (126 of them): 0.42 vs 0.54, not
asserted. Split by what each gets right: the crop baseline picks the right category in 125 /
126 and, among same-category twins, the right one at chance (49 / 107; chance about 0.45);
red-circle picks the right category in 100 / 126 (the object is small in the whole 64 px
picture, large in its crop) and among twins is no better than chance (38 / 107). The toy CLIP
has not learnt to read position from where the marked object is; the red-circle
parameters do not change that (blur radius 5 / 10 / 20, stroke width 3 / 8, one variant at a
time, no marker, rendering at 64 px: position 0.38 to 0.45), and it holds on images of its
own training split too (0.48 vs 0.57), so it is not overfitting. Two retrained toy CLIPs (not
shipped; `train-toy-clip --marked-share 1.0 [--batch-by-image]`, about 5 CPU minutes each)
did not change the picture: with every referred object also marked, red-circle 0.49 / crop
0.54 on position; with twins' marked copies in the same batch as each other's negatives
besides, 0.43 / 0.53 (standard error of a difference at n = 126: about 0.06).
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
from refcocog_tools.toy_world import (
    FLOORS,
    TOY_METHODS,
    evaluate_toy_methods,
    random_floor,
    random_floor_sd,
)

WORLD_SEED = 7
WORLD_IMAGES = 200
Z = 3.0  # the margin, in standard deviations of a random choice's accuracy
# Zero-shot methods that do not clear the floor with toy-rn, and why (measured; module doc).
# strict: the day one of them clears it, the test says so and this list must change.
KNOWN_FAILURES = {
    "colour background": "paints the background in the palette the world names objects by",
    "Grad-CAM box (layer3)": "a box drawn from a 4 x 4 map rarely reaches IoU 0.5",
}
ZERO_SHOT = tuple(label for label, _, _ in TOY_METHODS if label not in FLOORS)


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
    methods = [m for m in TOY_METHODS if m[0] in ZERO_SHOT]
    results = evaluate_toy_methods(root, "test", "toy-rn", methods, model_cache=session_cache)
    backbones = load_clips("toy-rn", cache=session_cache)
    broken = ShuffledChoices(make_method("red-circle", backbones, cache=EmbeddingCache(),
                                         debias_pool=RefCOCOg(root, "train").sentences()))
    results["shuffled red-circle"] = evaluate(RefCOCOg(root, "test", view="expression"), broken,
                                              make_proposer("gt"), backbones)
    return results


def _clears_floor(doc: dict) -> bool:
    rows = doc["predictions"]
    return doc["metrics"]["accuracy"] >= random_floor(rows) + Z * random_floor_sd(rows)


@pytest.mark.parametrize("label", [
    pytest.param(label, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[label]))
    if label in KNOWN_FAILURES else label for label in ZERO_SHOT])
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

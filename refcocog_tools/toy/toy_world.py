"""The toy world: every method on a generated embedded dataset with the toy CLIP, by expression
type.

The embedded world's expressions are of four types, read back from the generator's templates
(``expression_type``): a **relation** to another object ("red car to the left of the
blue dog"), a **position** ("the car on the left", "at the top", "in the middle"), a **size**
("the bigger car") or **plain** colour and category ("the red car"). With the toy
CLIP (``toy-rn``, trained by ``toy_clip`` on another seed's train split) the methods can be
told apart; the numbers remain about drawn shapes, never about RefCOCOg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torchvision.ops import box_iou

from refcocog_tools.engine.evaluate import evaluate
from refcocog_tools.engine.regressor_results import results_on_split
from refcocog_tools.engine.results import clip_provenance
from refcocog_tools.engine.run import RunSpec, build_run
from refcocog_tools.methods.regressor.data import split_data
from refcocog_tools.methods.regressor.training import TrainConfig, train_regressor
from refcocog_tools.models.clip_loading import load_clips, toy_metadata
from refcocog_tools.prompts.render import model_view
from refcocog_tools.toy.config import ToyClipConfig
from refcocog_tools.toy.training_pairs import build_pairs

__all__ = [
    "FLOORS",
    "OWN_BOX",
    "TOY_METHODS",
    "evaluate_toy_methods",
    "evaluate_toy_regressors",
    "expression_blind_floor",
    "random_floor",
    "random_floor_sd",
    "training_curve",
    "training_examples",
]

# (row label, make_method name, options): the zero-shot methods and the floors.
TOY_METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("random", "random", {}),
    ("largest", "largest", {}),
    ("centre", "center", {}),
    ("crop baseline", "baseline", {}),
    ("colour background", "color-background", {}),
    ("colour overlay", "color-overlay", {}),
    # toy-rn's last stage (layer4) is 2 x 2 at 64 px; layer3 (4 x 4) is the deepest with a map
    # to speak of. The box from the map is the study's method; the proposal with the most
    # heat asks the same map to choose, as every other row chooses.
    ("Grad-CAM box (layer3)", "gradcam", {"target_layer": "layer3"}),
    ("Grad-CAM, proposal with most heat (layer3)", "gradcam",
     {"target_layer": "layer3", "snap_to_proposal": True}),
    ("red-circle, no debiasing", "red-circle", {"n_debias": 0}),
    ("red-circle", "red-circle", {}),
    ("relations resolver, crop scores", "relations", {"entity_scorer": "crop"}),
    ("relations resolver, red-circle scores", "relations", {"entity_scorer": "red-circle"}),
)
FLOORS = frozenset({"random", "largest", "centre"})
# Rows that draw their own box instead of choosing a proposal: a random choice among the
# ground-truth boxes is no floor for them (it is handed a tight box), ``expression_blind_floor``
# is.
OWN_BOX = frozenset({"Grad-CAM box (layer3)"})
# (row label, head): the regressors of chapters 3 and 4, trained here on the toy CLIP's
# embeddings of the train split. Not zero-shot: they learn from that split's boxes.
TOY_REGRESSORS: tuple[tuple[str, str], ...] = (
    ("bottleneck regressor", "bottleneck"),
    ("large regressor", "large"),
)


def random_floor(rows: Iterable[Mapping[str, Any]]) -> float:
    """The random floor's expected accuracy with ground-truth proposals: the mean over
    expressions of 1 / number of proposals (exactly one proposal is the referred object).
    Exact, unlike one seeded draw of the random method."""
    rows = list(rows)
    return sum(1.0 / int(r["n_proposals"]) for r in rows) / len(rows)


def random_floor_sd(rows: Iterable[Mapping[str, Any]]) -> float:
    """The standard deviation of a random choice's accuracy over ``rows``: each expression is
    a Bernoulli draw with p = 1 / proposals, so sqrt(sum p (1 - p)) / n. A method at chance
    lands within three of these of ``random_floor`` in all but about one run in 700."""
    rows = list(rows)
    chances = [1.0 / int(r["n_proposals"]) for r in rows]
    return sum(p * (1 - p) for p in chances) ** 0.5 / len(rows)


def training_curve(name: str = "toy-rn", window: int = 25) -> pd.DataFrame:
    """The shipped toy model's contrastive loss per step (from its metadata, no retraining)
    and its running mean over ``window`` steps."""
    loss = pd.Series(toy_metadata(name)["history"]["loss_per_step"], name="loss")
    loss.index.name = "step"
    return pd.DataFrame({"loss": loss,
                         "running mean": loss.rolling(window, min_periods=1).mean()})


def training_examples(name: str = "toy-rn", images: int = 1
                      ) -> list[tuple[Image.Image, str, str]]:
    """The training pairs of the shipped toy model's first ``images`` train images, rebuilt
    from its recorded configuration: (what the model saw at its input resolution, the pair's
    kind, a caption: the first, or for a painted pair the one naming its background)."""
    pairs = build_pairs(ToyClipConfig.from_dict(toy_metadata(name)["config"]), images=images)
    return [(model_view(pixels), kind, captions[1] if kind == "painted" else captions[0])
            for pixels, kind, captions in zip(pairs.pixels, pairs.kinds, pairs.captions,
                                              strict=True)]


def evaluate_toy_methods(
    data_root: str | Path,
    split: str = "test",
    clip: str = "toy-rn",
    methods: Iterable[tuple[str, str, dict[str, Any]]] = TOY_METHODS,
    *,
    seed: int = 0,
    device: str = "cpu",
    model_cache: str | Path | None = None,
    limit: int = 0,
) -> dict[str, dict[str, Any]]:
    """Results documents of ``methods`` (label, method name, options) on ``split`` (its first
    ``limit`` expressions; 0: all) with ground-truth proposals; red-circle's debiasing
    sentences come from the train split. ``model_cache``: where the CLIP checkpoints live
    (default: the project cache)."""
    methods = list(methods)
    # One run (dataset, ground-truth proposer, backbones, one in-memory cache that the methods
    # share for the text and crop embeddings); each method is built on it by the run builder,
    # which reads the debias pool from the train split once, for the methods that draw one.
    run = build_run(RunSpec(data_root=Path(data_root), split=split, method=methods[0][1],
                            options=None, proposals="gt", clip=clip, device=device, seed=seed),
                    backbones=load_clips(clip, device=device, cache=model_cache))
    out: dict[str, dict[str, Any]] = {}
    for label, name, options in methods:
        method = run.make_method(name, **dict(options))
        out[label] = evaluate(run.dataset, method, run.proposer, run.backbones, limit=limit,
                              config={"label": label, "clip_spec": clip, "seed": seed})
    return out


def evaluate_toy_regressors(
    data_root: str | Path,
    clip: str = "toy-rn",
    heads: Iterable[tuple[str, str]] = TOY_REGRESSORS,
    *,
    seed: int = 0,
    device: str = "cpu",
    model_cache: str | Path | None = None,
    **train_options: Any,
) -> dict[str, dict[str, Any]]:
    """Results documents, on the test split, of each regressor head (label, head) trained on
    ``clip``'s embeddings of the train split with ``regressors.TrainConfig``'s defaults (the
    study's: MSE on pixel boxes, its learning rate per head, 30 epochs) unless
    ``train_options`` says otherwise; the best validation epoch is evaluated."""
    backbones = load_clips(clip, device=device, cache=model_cache)
    data = {split: split_data(data_root, split, backbones) for split in ("train", "val", "test")}
    out: dict[str, dict[str, Any]] = {}
    for label, head in heads:
        config = TrainConfig(head=head, seed=seed, **train_options)
        result = train_regressor(data["train"], data["val"], config, device=device,
                                 clip=clip_provenance(backbones))
        out[label] = results_on_split(result, data["test"], data_root, backbones)
    return out


def expression_blind_floor(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The floor for a method that draws its own box (Grad-CAM's box, not a proposal choice),
    from its results rows (``predictions`` of a results document): a random choice among the
    ground-truth boxes is no floor for such a method, since that choice is handed a tight box.

    An expression's chance is the share of the *other* referred objects' expressions of its
    image whose predicted box reaches IoU 0.5 with its object: the method's accuracy had it not
    read the expression. Returns the method's ``accuracy``, that ``floor``, its ``sd`` (each
    expression a Bernoulli draw with its chance) and ``n``; expressions whose image has no
    other referred object among the rows are left out.
    """
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_image.setdefault(int(row["image_id"]), []).append(row)
    hits: list[float] = []
    chances: list[float] = []
    for group in by_image.values():
        if len({row["ann_id"] for row in group}) < 2:
            continue
        predicted = torch.tensor([row["box"] for row in group], dtype=torch.float32)
        truth = torch.tensor([row["gt_box"] for row in group], dtype=torch.float32)
        reached = box_iou(predicted, truth) >= 0.5  # [asked, truth]
        for i, row in enumerate(group):
            others = [j for j, o in enumerate(group) if o["ann_id"] != row["ann_id"]]
            hits.append(float(reached[i, i]))
            chances.append(float(reached[others, i].float().mean()))
    n = len(hits)
    if not n:
        raise ValueError("no image with two referred objects among the rows, so no "
                         "expression-blind floor")
    return {"accuracy": sum(hits) / n, "floor": sum(chances) / n,
            "sd": sum(p * (1 - p) for p in chances) ** 0.5 / n, "n": n}

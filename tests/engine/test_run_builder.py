"""The run builder (``engine.run``): the same run as the setup it replaced, and the needs each
method declares in the registry (a CLIP, masks, a debias pool) met there and only there."""

from __future__ import annotations

from pathlib import Path

import pytest

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.engine.evaluate import evaluate
from refcocog_tools.engine.run import RunSpec, RunSpecError, build_run
from refcocog_tools.methods.red_circle import RedCircleOptions
from refcocog_tools.methods.registry import (
    METHODS,
    RelationsOptions,
    make_method,
    method_entry,
    resolved_options,
    without_debiasing,
)
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.proposers import GroundTruthProposer, make_proposer

ZERO_SHOT = [name for name in METHODS if name != "regressor"]
MASK_WINDOW = RedCircleOptions(variants=("blur",), window="mask", n_debias=0)


def _old_setup_rows(root: Path, name: str, backbones: list, limit: int) -> list[dict]:
    """What ``evaluate``'s setup did before the builder: each step by hand."""
    dataset = RefCOCOg(root, "test", view="expression")
    proposer = make_proposer("gt")
    pool = (RefCOCOg(root, "train", view="expression").sentences()
            if name in ("red-circle", "relations") else ())
    method = make_method(name, backbones, cache=EmbeddingCache(None), debias_pool=pool)
    return evaluate(dataset, method, proposer, backbones, limit=limit)["predictions"]


@pytest.mark.parametrize("name", ZERO_SHOT)
def test_the_builder_gives_the_run_the_hand_written_setup_gave(mini_data: Path, tiny_rn,
                                                               name: str) -> None:
    run = build_run(RunSpec(data_root=mini_data, method=name), backbones=[tiny_rn])
    rows = evaluate(run.dataset, run.method, run.proposer, run.backbones, limit=12)
    assert rows["predictions"] == _old_setup_rows(mini_data, name, [tiny_rn], 12)
    assert rows["config"]["method"] == run.method.config()


def test_masks_are_declared_by_the_options_in_the_registry() -> None:
    red = method_entry("red-circle")
    assert not red.needs_masks(RedCircleOptions())
    assert red.needs_masks(RedCircleOptions(window="mask"))
    assert red.needs_masks(RedCircleOptions(marker="mask-contour"))
    assert red.mask_options(RedCircleOptions(window="mask")) == "--window mask"
    relations = method_entry("relations")
    assert relations.needs_masks(RelationsOptions(entity_scorer="blur",
                                                  scorer_options=MASK_WINDOW))
    assert not relations.needs_masks(RelationsOptions(entity_scorer="crop"))
    assert not any(method_entry(n).needs_masks(method_entry(n).options())
                   for n in ("baseline", "gradcam", "random", "color-background"))


def test_the_debias_pool_is_declared_by_the_options_in_the_registry() -> None:
    red = method_entry("red-circle")
    assert red.needs_debias_pool(RedCircleOptions())
    assert not red.needs_debias_pool(RedCircleOptions(n_debias=0))
    relations = method_entry("relations")
    assert relations.needs_debias_pool(RelationsOptions())  # the red-circle scorer's 5000
    assert not relations.needs_debias_pool(RelationsOptions(entity_scorer="crop"))
    assert not relations.needs_debias_pool(RelationsOptions(entity_scorer="blur"))
    assert not method_entry("baseline").needs_debias_pool(method_entry("baseline").options())
    off = without_debiasing("relations", RelationsOptions())
    assert off.scorer_options.n_debias == 0 and not relations.needs_debias_pool(off)
    assert without_debiasing("red-circle", RedCircleOptions()).n_debias == 0


def test_the_train_split_is_read_only_for_a_method_that_draws_from_it(
        mini_data: Path, tiny_rn, monkeypatch: pytest.MonkeyPatch) -> None:
    import refcocog_tools.engine.run as run_module

    reads: list[str] = []
    real = run_module.train_expressions
    monkeypatch.setattr(run_module, "train_expressions",
                        lambda spec: reads.append(spec.method) or real(spec))
    for name, options in (("baseline", None), ("red-circle", RedCircleOptions(n_debias=0)),
                          ("relations", RelationsOptions(entity_scorer="crop"))):
        build_run(RunSpec(data_root=mini_data, method=name, options=options),
                  backbones=[tiny_rn])
    assert reads == []
    run = build_run(RunSpec(data_root=mini_data, method="red-circle"), backbones=[tiny_rn])
    assert reads == ["red-circle"]
    train = RefCOCOg(mini_data, "train", view="expression").sentences()
    assert run.method.debias_pool_size == len(train) and len(run.method.debias_sentences) == 5000
    run.make_method(n_debias=10)  # another method on the same run: the pool is read once
    assert reads == ["red-circle"]


def test_a_mask_method_gets_proposals_with_masks_end_to_end(mini_data: Path, tiny_rn) -> None:
    run = build_run(RunSpec(data_root=mini_data, method="red-circle", options=MASK_WINDOW),
                    backbones=[tiny_rn])
    assert isinstance(run.proposer, GroundTruthProposer) and run.proposer.gives_masks
    rows = evaluate(run.dataset, run.method, run.proposer, run.backbones, limit=6)
    boxes = build_run(RunSpec(data_root=mini_data, method="red-circle",
                              options=resolved_options("red-circle", MASK_WINDOW,
                                                       window="rectangle")),
                      backbones=[tiny_rn])
    assert not boxes.proposer.gives_masks  # a box method never decodes a mask
    assert len(rows["predictions"]) == 6
    assert rows["provenance"]["proposals"]["proposals_with_masks"] > 0


def test_a_proposer_without_masks_is_refused_for_a_mask_method(mini_data: Path,
                                                               tiny_rn) -> None:
    from refcocog_tools.models.backbones import BackboneError

    spec = RunSpec(data_root=mini_data, method="red-circle", options=MASK_WINDOW)
    with pytest.raises(RunSpecError, match="--window mask: --proposals gt gives no "
                       "segmentation masks"):
        build_run(spec, backbones=[tiny_rn], proposer=GroundTruthProposer())
    with pytest.raises(BackboneError, match="a detection model gives no masks"):
        build_run(RunSpec(data_root=mini_data, method="red-circle", options=MASK_WINDOW,
                          proposals="tiny-yolov8s"), backbones=[tiny_rn])
    seg = build_run(RunSpec(data_root=mini_data, method="red-circle", options=MASK_WINDOW,
                            proposals="tiny-yolov8s-seg"), backbones=[tiny_rn])
    assert seg.proposer.gives_masks


def test_a_clip_method_without_a_clip_is_refused_and_a_floor_runs_without(
        mini_data: Path) -> None:
    with pytest.raises(RunSpecError, match="method baseline needs --clip"):
        build_run(RunSpec(data_root=mini_data, method="baseline", clip=""))
    assert build_run(RunSpec(data_root=mini_data, method="largest", clip="")).backbones == []


def test_evaluate_runs_a_mask_window_on_ground_truth_masks(
        tmp_path: Path, isolated_cache: Path) -> None:
    import json

    from refcocog_tools.cli.main import main

    out = tmp_path / "mask.json"
    assert main(["evaluate", "--method", "red-circle", "--variants", "blur", "--window", "mask",
                 "--n-debias", "0", "--proposals", "gt", "--clip", "tiny-rn", "--limit", "4",
                 "--no-cache", "--quiet", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["config"]["proposals"] == {"proposer": "gt", "masks": True}
    assert document["config"]["method"]["window"] == "mask"

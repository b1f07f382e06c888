"""The relations method: parser, geometry, combination rule, engine and command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from refcocog_tools.data.annotations import INSTANCES_FILE
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.mini_expressions import (
    EXPRESSION_TYPES,
    expression_type,
    fitting_objects,
    scene_objects,
)
from refcocog_tools.data.minidata import generate
from refcocog_tools.methods.registry import RelationsOptions, make_method
from refcocog_tools.methods.relations.reference_parser import parse_reference
from refcocog_tools.methods.relations.resolver import (
    RelationsMethod,
    label_factor,
    label_matches,
    superlative,
)
from refcocog_tools.methods.relations.scene_graph import between_tensor, pairwise_relation
from refcocog_tools.proposals.proposers import GroundTruthProposer, Proposals

# Two cats (the left one smaller and higher), a dog on the right, a bus below the middle.
BOXES = torch.tensor([[10.0, 10, 50, 50], [120, 40, 180, 110], [250, 30, 300, 80],
                      [140, 150, 200, 200]])
LABELS = ["cat", "cat", "dog", "bus"]
IMAGE = Image.new("RGB", (320, 240))


# -- parsing -----------------------------------------------------------------------------------
def test_parse_relation_to_another_object() -> None:
    parse = parse_reference("Red cat to the left of the blue dog.")
    assert parse.head == "cat" and parse.attributes == ("red",) and parse.text == "red cat"
    (relation,) = parse.relations
    assert relation.relation == "left_of"
    (obj,) = relation.objects
    assert obj.head == "dog" and obj.attributes == ("blue",) and obj.text == "blue dog"
    assert [p.text for p in parse.phrases()] == ["red cat", "blue dog"]


@pytest.mark.parametrize(("sentence", "head", "superlatives"), [
    ("the cat on the left", "cat", ("left",)),
    ("the bigger cat", "cat", ("biggest",)),
    ("the smallest dog at the bottom", "dog", ("smallest", "bottom")),
    ("the leftmost umbrella", "umbrella", ("left",)),
    ("a bus in the middle of the picture", "bus", ("middle",)),
    ("a cat on the right side", "cat", ("right",)),
    ("the closest man", "man", ("biggest",)),
    ("the top left bottle", "bottle", ("top", "left")),
])
def test_parse_superlatives(sentence: str, head: str, superlatives: tuple[str, ...]) -> None:
    parse = parse_reference(sentence)
    assert (parse.head, parse.superlatives, parse.relations) == (head, superlatives, ())


def test_parse_between_side_of_and_non_spatial_relations() -> None:
    between = parse_reference("the dog between the red car and the bus")
    assert between.relations[0].relation == "between"
    assert [o.text for o in between.relations[0].objects] == ["red car", "bus"]
    side = parse_reference("the cup on the left side of the table")
    assert side.superlatives == () and side.relations[0].relation == "left_of"
    assert side.relations[0].objects[0].head == "table"
    holding = parse_reference("the man holding an umbrella above the dog")
    assert holding.head == "man" and holding.text == "man holding umbrella"
    assert holding.relations[0].relation == "above"
    inside = parse_reference("the cat inside the box")
    assert inside.relations[0].relation == "inside"


def test_label_match() -> None:
    assert label_matches("man", "person") and label_matches("cats", "cat")
    assert label_matches("light", "traffic light") and label_matches("kitten", "cat")
    assert not label_matches("dog", "cat") and not label_matches(None, "cat")
    assert label_factor("cat", LABELS, 0.1).tolist() == pytest.approx([1, 1, 0.1, 0.1])
    # No proposal named "giraffe": labels say nothing.
    assert label_factor("giraffe", LABELS, 0.0).tolist() == [1, 1, 1, 1]


# -- geometry ----------------------------------------------------------------------------------
def test_pairwise_relations_and_between() -> None:
    bigger = pairwise_relation(BOXES, "bigger", (320, 240))
    assert bigger[1, 0] == 1 and bigger[0, 1] == 0 and bigger.diagonal().sum() == 0
    inner = torch.tensor([[0.0, 0, 100, 100], [10, 10, 30, 30], [90, 90, 150, 150]])
    inside = pairwise_relation(inner, "inside", (200, 200))
    assert inside.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    near = pairwise_relation(BOXES, "near", (320, 240))
    assert near[0, 1] > near[0, 2]  # the other cat is nearer than the dog
    between = between_tensor(BOXES)
    assert between[1, 0, 2] == 1 and between[1, 2, 0] == 1 and between[0, 1, 2] == 0
    with pytest.raises(ValueError, match="unknown relation"):
        pairwise_relation(BOXES, "behind", (320, 240))


def test_superlative_rules() -> None:
    cats = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # Visual noise favours the right cat; the exclusive rule still picks the left one.
    noisy = torch.tensor([0.05, 0.95, 0.0, 0.0])
    assert int(superlative(noisy, cats, BOXES, "left").argmax()) == 0
    assert int(superlative(noisy, cats, BOXES, "left", rule="reclip").argmax()) == 0
    # The only dog, with things on both sides: "the dog on the left" is still that dog under
    # the exclusive rule; ReCLIP's sum rule gives it zero (nothing of its kind lies beyond).
    dog = torch.tensor([0.05, 0.05, 0.85, 0.05])
    is_dog = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert int(superlative(dog, is_dog, BOXES, "left").argmax()) == 2
    reclip = superlative(dog, is_dog, BOXES, "left", rule="reclip")
    assert float(reclip[2]) == 0.0 and int(reclip.argmax()) == 0
    # Middle: the candidate with one on each side.
    three = torch.full((3,), 1 / 3)
    middle = superlative(three, torch.ones(3), BOXES[:3], "middle")
    assert int(middle.argmax()) == 1 and float(middle[0]) == float(middle[2]) == 0.0


# -- the method --------------------------------------------------------------------------------
def _proposals() -> Proposals:
    return Proposals(BOXES, list(LABELS))


@pytest.mark.parametrize(("sentence", "expected"), [
    ("the cat on the left", 0),
    ("the cat on the right", 1),
    ("the bigger cat", 1),
    ("the smaller cat", 0),
    ("cat to the right of the cat", 1),
    ("the cat below the dog", 1),
    ("the dog", 2),
    ("the cat between the cat and the dog", 1),
])
def test_labels_and_geometry_resolve_without_a_scorer(sentence: str, expected: int) -> None:
    method = RelationsMethod(None, RelationsOptions())
    prediction = method.predict(IMAGE, [sentence], _proposals())
    assert int(prediction.chosen[0]) == expected
    assert prediction.scores.sum().item() == pytest.approx(1.0)


def test_without_labels_the_scorer_decides_among_all_proposals() -> None:
    unlabelled = Proposals(BOXES, [None] * 4)
    method = RelationsMethod(None, RelationsOptions(use_labels=True))
    # Uniform entity scores: "leftmost" is the leftmost proposal of all.
    assert int(method.predict(IMAGE, ["the leftmost thing"], unlabelled).chosen[0]) == 0
    assert int(method.predict(IMAGE, ["the rightmost cat"], unlabelled).chosen[0]) == 2
    labelled = RelationsMethod(None, RelationsOptions(use_labels=False))
    assert int(labelled.predict(IMAGE, ["the rightmost cat"], _proposals()).chosen[0]) == 2


def test_explain_keeps_every_step() -> None:
    resolution = RelationsMethod(None, RelationsOptions()).explain(
        IMAGE, "red cat to the left of the blue dog", _proposals())
    assert resolution.texts == ["red cat to the left of the blue dog", "red cat", "blue dog"]
    assert resolution.entity["blue dog"].tolist() == [0, 0, 1, 0]
    assert [what for what, _ in resolution.steps] == ["red cat left_of blue dog"]
    assert resolution.final is not None and int(resolution.final.argmax()) in (0, 1)


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        RelationsMethod(None, RelationsOptions(temperature=0))
    with pytest.raises(ValueError, match="entity scorer"):
        make_method("relations", entity_scorer="gradcam")


def test_red_circle_scorer_is_reused(tiny_rn) -> None:
    method = make_method("relations", [tiny_rn], debias_pool=["a cat", "the dog"],
                         scorer_options={"n_debias": 2})
    assert method.entity_scorer is not None and method.entity_scorer.name == "red-circle"
    assert method.config()["entity_scorer_config"]["n_debias"] == 2
    prediction = method.predict(IMAGE, ["the cat on the left", "the dog"], _proposals())
    assert prediction.chosen.tolist() == [0, 2]
    blur = make_method("relations", [tiny_rn], entity_scorer="blur")
    assert blur.entity_scorer.config()["marker"] == "none"
    crop = make_method("relations", [tiny_rn], entity_scorer="crop")
    assert crop.entity_scorer.name == "baseline"


# -- the embedded dataset ----------------------------------------------------------------------
def test_every_generated_expression_has_a_type_and_fits_its_object() -> None:
    refs, instances, _ = generate(12, seed=0)
    objects = scene_objects(instances)
    sizes = {i["id"]: (i["width"], i["height"]) for i in instances["images"]}
    seen = set()
    for ref in refs:
        for sent in ref["sentences"]:
            kind = expression_type(sent["sent"])
            assert kind in EXPRESSION_TYPES and expression_type(sent["raw"]) == kind
            seen.add(kind)
            fits = fitting_objects(sent["sent"], objects[ref["image_id"]], sizes[ref["image_id"]])
            assert ref["ann_id"] in fits
            blind = fitting_objects(sent["sent"], objects[ref["image_id"]],
                                    sizes[ref["image_id"]], use_colour=False)
            assert set(fits) <= set(blind)
    assert seen == set(EXPRESSION_TYPES)
    assert expression_type("the man in the red shirt") is None


def test_position_and_size_expressions_resolve_through_the_engine(mini_data: Path) -> None:
    """Labels + geometry alone single out every unambiguous position / size expression."""
    from refcocog_tools.engine.evaluate import evaluate

    instances = json.loads((mini_data / "annotations" / INSTANCES_FILE).read_text())
    objects = scene_objects(instances)
    for split in ("train", "test"):
        dataset = RefCOCOg(mini_data, split, view="expression")
        results = evaluate(dataset, make_method("relations", entity_scorer="none"),
                           GroundTruthProposer())
        assert results["config"]["method"]["entity_scorer"] == "none"
        checked = 0
        for row in results["predictions"]:
            if expression_type(row["sentence"]) not in ("position", "size"):
                continue
            record = next(dataset[i] for i in range(len(dataset))
                          if dataset[i].sent_id == row["sent_id"])
            fits = fitting_objects(row["sentence"], objects[row["image_id"]], record.image_size)
            if len(fits) == 1:
                checked += 1
                assert row["iou"] == pytest.approx(1.0), row["sentence"]
        assert checked > 0


def test_cli_runs_relations(mini_data: Path, isolated_cache: Path, tmp_path: Path) -> None:
    from refcocog_tools.cli.main import main

    out = tmp_path / "relations.json"
    assert main(["evaluate", "--data-root", str(mini_data), "--method", "relations",
                 "--entity-scorer", "blur", "--no-labels", "--quiet", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    config = results["config"]["method"]
    assert config["method"] == "relations" and config["use_labels"] is False
    assert config["entity_scorer_config"]["variants"] == ["blur"]
    assert results["provenance"]["synthetic_data"] is True
    assert len(results["predictions"]) == results["metrics"]["n"] > 0


def test_audit_type_table_and_figure(mini_data: Path) -> None:
    import matplotlib.pyplot as plt

    from refcocog_tools.data.mini_expressions import expression_audit
    from refcocog_tools.engine.evaluate import evaluate
    from refcocog_tools.methods.relations.resolver import draw_resolution
    from refcocog_tools.report.figures import expression_type_table

    dataset = RefCOCOg(mini_data, "train", view="expression")
    method = make_method("relations", entity_scorer="none")
    results = {"relations": evaluate(dataset, method, GroundTruthProposer()),
               "largest": evaluate(dataset, make_method("largest"), GroundTruthProposer())}
    audit = expression_audit(mini_data, results["relations"]["predictions"])
    assert len(audit) == len(dataset) and set(audit["type"]) <= set(EXPRESSION_TYPES)
    # Every failure of labels + geometry is an expression only colour (or nothing) decides.
    assert set(audit.loc[~audit["correct"], "difficulty"]) <= {"ambiguous", "needs colour"}
    table = expression_type_table(results, mini_data)
    assert list(table["method"]) == ["relations", "largest"]
    position = next(c for c in table.columns if c.startswith("position"))
    assert table.loc[0, position] == 1.0 and table.loc[0, "all"] == audit["correct"].mean()
    item = next(dataset[i] for i in range(len(dataset))
                if expression_type(dataset[i].sentence) == "relation")
    image, proposals = item.image, GroundTruthProposer()(item)
    fig, ax = plt.subplots()
    draw_resolution(ax, image, proposals, method.explain(image, item.sentence, proposals))
    assert len(ax.patches) >= len(proposals) + 1  # every box and the relation's arrow
    plt.close(fig)


def test_evaluate_and_bench_draw_the_debias_pool_for_a_red_circle_scorer(tmp_path: Path) -> None:
    from refcocog_tools.cli.evaluate import method_options
    from refcocog_tools.cli.main import build_parser
    from refcocog_tools.methods.registry import method_entry

    def needs_pool(*extra: str) -> bool:
        args = build_parser().parse_args(["evaluate", "--out", str(tmp_path / "r.json"),
                                          *extra])
        return method_entry(args.method).needs_debias_pool(method_options(args))

    assert needs_pool("--method", "relations")
    assert not needs_pool("--method", "relations", "--entity-scorer", "crop")
    assert needs_pool("--method", "red-circle")
    assert not needs_pool("--method", "baseline")


@pytest.mark.parametrize("scorer", ["red-circle", "crop"])
def test_engine_batches_the_scorer_inputs_with_the_same_choices(
        mini_data: Path, tiny_rn, monkeypatch: pytest.MonkeyPatch, scorer: str) -> None:
    """relations declares its scorer's inputs: the batched engine encodes every image's visual
    prompts in one shared batch before ``predict``, and the rows equal the plain loop's."""
    from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
    from refcocog_tools.methods.interface import BatchedMethod

    groups = group_by_image(RefCOCOg(mini_data, "test"))
    assert len(groups) > 1
    options = {"scorer_options": {"n_debias": 0}} if scorer == "red-circle" else {}
    plain = evaluate_groups(groups, make_method("relations", [tiny_rn], entity_scorer=scorer,
                                                **options), GroundTruthProposer())
    calls = []
    original = tiny_rn.queue_images  # every image encoding goes through it

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(tiny_rn, "queue_images", counting)
    method = make_method("relations", [tiny_rn], entity_scorer=scorer, **options)
    assert isinstance(method, BatchedMethod)
    batched = evaluate_groups(groups, method, GroundTruthProposer(), batch_size=100_000)
    assert batched == plain
    assert len(calls) == 1  # all images' prompts in one batch; predict found them cached
    assert not isinstance(make_method("relations", entity_scorer="none"), BatchedMethod)

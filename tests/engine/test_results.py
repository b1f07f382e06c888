"""The results contract (refcocog_tools.engine.results): builder, files, reuse, honesty wording."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from refcocog_tools.engine import results
from refcocog_tools.engine.results import ResultsError


def _row(iou: float, sentence: str = "the red square on the left") -> dict:
    return {"sent_id": 1, "ref_id": 1, "image_id": 1, "sentence": sentence, "category": "sq",
            "box": [0, 0, 1, 1], "gt_box": [0, 0, 1, 1], "iou": iou, "cosine": None,
            "chosen": 0, "n_proposals": 2}


CLIP = [SimpleNamespace(name="tiny-rn", checksum="abc", untrained=True)]
GT = SimpleNamespace(name="gt", untrained=False)


def _document(root: Path, limit: int = 0, method: dict | None = None) -> dict:
    return results.results_document(
        [_row(0.75), _row(0.25, "a circle")],
        config={"method": method or {"method": "baseline", "variants": ("blur",)},
                "split": "test", "limit": limit},
        provenance=results.provenance(root, "test", CLIP, GT),
        timing={"seconds": 1.0})


def test_the_builder_writes_every_part_of_the_schema(mini_data: Path) -> None:
    doc = _document(mini_data)
    assert doc["schema"] == results.SCHEMA
    assert list(doc) == ["schema", "metrics", "config", "provenance", "timing", "predictions"]
    assert doc["metrics"]["n"] == 2 and doc["metrics"]["miou"] == pytest.approx(0.5)
    assert doc["metrics"]["accuracy"] == pytest.approx(0.5)
    prov = doc["provenance"]
    assert prov["synthetic_data"] and prov["untrained"] and prov["split"] == "test"
    assert prov["clip"] == [{"name": "tiny-rn", "checksum": "abc", "untrained": True,
                             "toy": False, "weights": "untrained (random) weights"}]
    assert results.provenance(mini_data, "test", CLIP)["proposals"]["name"] == "none"


def test_files_round_trip_and_reuse_only_the_same_configuration(mini_data: Path,
                                                                tmp_path: Path) -> None:
    doc = _document(mini_data, limit=5)
    path = results.write_results(doc, tmp_path, "baseline")
    assert path == tmp_path / "baseline.json"
    assert results.read_results(path)["metrics"] == doc["metrics"]

    def find(**changes: object) -> dict | None:
        query = {"data_root": mini_data, "split": "test", "backbones": CLIP,
                 "proposals": "gt", "limit": 5,
                 "config": {"method": {"method": "baseline", "variants": ("blur",)}}}
        query.update(changes)
        return results.find_results(tmp_path, "baseline", **query)

    assert find() is not None  # a tuple in the config matches the list read back
    assert find(limit=0) is None
    assert find(split="val") is None
    assert find(proposals="yolov8s") is None
    assert find(backbones=[SimpleNamespace(name="tiny-rn", checksum="other")]) is None
    assert find(config={"method": {"method": "baseline", "variants": ["gray"]}}) is None
    assert results.find_results(tmp_path, "red-circle", data_root=mini_data, split="test",
                                backbones=CLIP, proposals="gt", limit=5) is None


@pytest.mark.parametrize(("content", "field"), [
    ("{not json", "not a readable results file"),
    ("[1, 2]", "a results file holds a JSON object"),
    (json.dumps({"schema": "other"}), "field 'schema' is 'other'"),
    (json.dumps({"schema": results.SCHEMA, "metrics": {}, "config": {}, "provenance": {}}),
     "field 'predictions' is missing"),
    (json.dumps({"schema": results.SCHEMA, "metrics": [], "config": {}, "provenance": {},
                 "predictions": []}), "field 'metrics' must be an object"),
])
def test_a_bad_results_file_is_named_with_its_field(tmp_path: Path, content: str,
                                                    field: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=f"{path}.*{field}|{field}"):
        results.read_results(path)


def test_method_names_are_file_names() -> None:
    for bad in ("../baseline", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            results.results_path("results", bad)


def test_the_four_honesty_texts_share_one_vocabulary(mini_data: Path) -> None:
    doc = _document(mini_data)
    label = results.honesty_label(doc["provenance"])
    source = results.build_source(doc)
    caption = results.run_label(mini_data, CLIP)
    note = repr(results.provenance_note(True, True, "CLIP tiny-rn"))
    gt_note = results.GROUND_TRUTH_PROPOSALS
    assert label == f"  [untrained weights, synthetic data: not a RefCOCOg result; {gt_note}]"
    assert source == (f"this build: synthetic dataset (test), tiny-rn (untrained), proposals gt "
                      f"({gt_note}), n=2")
    assert caption == "this build: synthetic dataset, CLIP tiny-rn (untrained)"
    assert results.NOT_REFCOCOG in label and results.NOT_REFCOCOG in note
    pretrained = dict(doc["provenance"], synthetic_data=False, untrained=False,
                      ground_truth_proposals=False)
    assert results.honesty_label(pretrained) == ""
    assert repr(results.provenance_note(False, False)).startswith("NOTE: Computed here on "
                                                                  "RefCOCOg with pretrained")


def test_the_honesty_texts_name_the_dataset_of_real_data(tmp_path: Path) -> None:
    root = tmp_path / "real"  # no generator stamp: real data
    (root / "annotations").mkdir(parents=True)
    note = repr(results.provenance_note(False, False, dataset="refcoco+"))
    assert note.startswith("NOTE: Computed here on RefCOCO+ with pretrained")
    assert "the RefCOCO+ data found at the `data_root`" in note and "RefCOCOg" not in note
    pretrained = [SimpleNamespace(name="RN50x16", checksum="abc", untrained=False)]
    assert (results.run_label(root, pretrained, dataset="refcoco")
            == "this build: RefCOCO, CLIP RN50x16 (pretrained)")
    assert results.run_label(root, pretrained).startswith("this build: RefCOCOg,")


def test_prose_label_and_reading_follow_the_provenance(mini_data: Path) -> None:
    """What a chapter glues into its prose is chosen from the run's provenance, never from
    which weights the chapter expects: untrained, toy, pretrained (synthetic or real data)."""
    untrained = _document(mini_data)["provenance"]
    toy = dict(untrained, untrained=False,
               clip=[dict(untrained["clip"][0], name="toy-rn", untrained=False, toy=True)])
    synthetic = dict(untrained, untrained=False, ground_truth_proposals=False)
    real = dict(synthetic, synthetic_data=False, dataset="refcoco")
    gt_note = results.GROUND_TRUTH_PROPOSALS
    assert results.honesty_text(untrained) == results.honesty_label(untrained).strip(" []")
    assert results.honesty_text(toy) == (f"{results.TOY_LABEL}: {results.NOT_REFCOCOG}; "
                                         f"{gt_note}")
    assert results.honesty_text(real) == "RefCOCO, pretrained weights"
    readings = [results.reading_note(p) for p in (untrained, toy, synthetic, real)]
    assert "chance" in readings[0] and results.TOY_LABEL in readings[1]
    assert "drawn shapes" in readings[2] and "pretrained weights on RefCOCO:" in readings[3]
    assert len(set(readings)) == 4

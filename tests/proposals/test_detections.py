"""Detection files as proposals: MAttNet's list, the wrapped ``dets`` list, ReCLIP's per-image
form, and every malformed file refused with the file, entry and field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.proposals.detections import (
    COCO_CATEGORIES,
    DetectionsError,
    DetectionsProposer,
    load_detections,
)
from refcocog_tools.proposals.proposers import GroundTruthProposer, make_proposer


def _mattnet_dets(split: RefCOCOg) -> list[dict]:
    """The split's ground-truth instances written as MAttNet writes detections."""
    dets, seen = [], set()
    for record in split.records:
        if record.image_id in seen:
            continue
        seen.add(record.image_id)
        for inst in record.instances:
            x1, y1, x2, y2 = inst.box
            dets.append({"det_id": len(dets), "h5_id": len(dets), "box": [x1, y1, x2 - x1, y2 - y1],
                         "image_id": record.image_id, "category_id": inst.category_id,
                         "category_name": inst.category, "score": 0.5 + 0.01 * len(dets)})
    return dets


def _write(tmp_path: Path, data, name: str = "dets.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _same_as_ground_truth(proposer, split: RefCOCOg) -> None:
    gt = GroundTruthProposer()
    for item in split:
        got, want = proposer(item), gt(item)
        assert torch.allclose(got.boxes, want.boxes)
        assert got.labels == want.labels


def test_mattnet_list_gives_each_image_its_boxes_labels_and_scores(tmp_path, test_split) -> None:
    dets = _mattnet_dets(test_split)
    proposer = make_proposer(f"dets:{_write(tmp_path, dets)}")
    assert isinstance(proposer, DetectionsProposer) and proposer.untrained is False
    _same_as_ground_truth(proposer, test_split)
    first = proposer(test_split[0])
    mine = [d["score"] for d in dets if d["image_id"] == test_split[0].image_id]
    assert first.scores is not None and torch.allclose(first.scores, torch.tensor(mine))
    config = proposer.config()
    assert config["proposer"] == "dets" and config["detections"] == len(dets)
    assert len(config["checksum"]) == 64 and proposer.name == "dets:dets.json"


def test_wrapped_and_per_image_forms_read_the_same_boxes(tmp_path, test_split) -> None:
    dets = _mattnet_dets(test_split)
    wrapped = DetectionsProposer(_write(tmp_path, {"dets": dets}, "wrapped.json"))
    _same_as_ground_truth(wrapped, test_split)
    # ReCLIP's form: image id string -> [x, y, w, h] lists, no labels or scores.
    per_image: dict[str, list] = {}
    for d in dets:
        per_image.setdefault(str(d["image_id"]), []).append(d["box"])
    reclip = DetectionsProposer(_write(tmp_path, per_image, "reclip.json"))
    item = test_split[0]
    props = reclip(item)
    assert torch.allclose(props.boxes, GroundTruthProposer()(item).boxes)
    assert props.labels == [None] * len(props) and props.scores is None
    # Per-image lists of detection objects: labels from category ids via the COCO table.
    objects = {key: [{"box": b, "category_id": 18} for b in boxes]
               for key, boxes in per_image.items()}
    labelled = DetectionsProposer(_write(tmp_path, objects, "objects.json"))
    assert labelled(item).labels == ["dog"] * len(props)
    assert COCO_CATEGORIES[18] == "dog" and len(COCO_CATEGORIES) == 80


def test_an_image_without_detections_gets_the_whole_image(tmp_path, test_split) -> None:
    dets = _mattnet_dets(test_split)
    first = test_split[0].image_id
    proposer = DetectionsProposer(_write(tmp_path, [d for d in dets if d["image_id"] != first]))
    props = proposer(test_split[0])
    width, height = test_split[0].image_size
    assert props.boxes.tolist() == [[0.0, 0.0, float(width), float(height)]]
    with pytest.warns(UserWarning, match="1 of .* images of this split have no detection"):
        proposer.check_dataset(test_split.records)


def test_boxes_past_the_edge_are_clipped_with_a_warning(tmp_path, test_split) -> None:
    item = test_split[0]
    width, height = item.image_size
    path = _write(tmp_path, [{"image_id": item.image_id, "box": [-5, 10, width + 10, 20]}])
    proposer = DetectionsProposer(path)
    with pytest.warns(UserWarning, match=r"1 box\(es\) extend more than a pixel past"):
        proposer.check_dataset([item.record])
    assert proposer(item).boxes.tolist() == [[0.0, 10.0, float(width), 30.0]]


def test_a_box_outside_its_image_is_refused_up_front(tmp_path, test_split) -> None:
    item = test_split[0]
    width, _ = item.image_size
    path = _write(tmp_path, [{"image_id": item.image_id, "box": [width + 3, 0, 10, 10]}])
    proposer = DetectionsProposer(path)
    with pytest.raises(DetectionsError, match=rf"{path}: image {item.image_id} detection \[0\]: "
                                              "field 'box' .* lies outside"):
        proposer.check_dataset([item.record])
    with pytest.raises(DetectionsError, match="lies outside"):
        proposer(item)


def test_a_file_for_other_images_is_refused_up_front(tmp_path, test_split) -> None:
    proposer = DetectionsProposer(_write(tmp_path, [{"image_id": 1, "box": [0, 0, 5, 5]}]))
    with pytest.raises(DetectionsError, match="none of the .* images of this split has a "
                                              "detection"):
        proposer.check_dataset(test_split.records)


@pytest.mark.parametrize(("content", "message"), [
    ("[{\"image_id\": 1, ", "not valid JSON"),
    ("[{\"image_id\": 1, \"box\": [0, 0, NaN, 4]}]", "not valid JSON: NaN is not a finite number"),
    ("[]", "the file holds no detections"),
    ("\"dets\"", "expected a JSON list of detections"),
    ("{\"dets\": {\"a\": 1}}", "field 'dets' must be a list"),
    ("[[0, 0, 4, 4]]", r"detection \[0\]: expected an object, got list"),
    ("[{\"box\": [0, 0, 4, 4]}]", r"detection \[0\]: field 'image_id' missing"),
    ("[{\"image_id\": \"7\", \"box\": [0, 0, 4, 4]}]", "field 'image_id' has type str"),
    ("[{\"image_id\": 7}]", r"detection \[0\]: field 'box' missing"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 4]}]", "field 'box' must be four numbers"),
    ("[{\"image_id\": 7, \"box\": [0, 0, true, 4]}]", "field 'box' must be four numbers"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 0, 4]}]", "zero or negative width/height"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 4, 4], \"score\": \"high\"}]", "field 'score' has type"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 4, 4], \"category_id\": 12}]",
     "field 'category_id' 12 is not a COCO category id"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 4, 4], \"category_name\": 3}]",
     "field 'category_name' has type int"),
    ("[{\"image_id\": 7, \"box\": [0, 0, 4, 4], \"det_id\": 3},"
     " {\"image_id\": 8, \"box\": [0, 0, 4, 4], \"det_id\": 3}]",
     r"detection \[1\]: field 'det_id' 3 repeats detection \[0\]"),
    ("{\"img7\": [[0, 0, 4, 4]]}", "key 'img7' is not an image id"),
    ("{\"7\": [0, 0, 4, 4]}", r"image 7 detection \[0\]: expected an object with a 'box', got int"),
    ("{\"7\": {\"box\": [0, 0, 4, 4]}}", "image 7: expected a list of boxes, got dict"),
    ("{\"7\": [{\"image_id\": 8, \"box\": [0, 0, 4, 4]}]}",
     "field 'image_id' 8 differs from the image 7"),
])
def test_malformed_files_are_refused_naming_file_and_field(tmp_path, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DetectionsError, match=message) as caught:
        load_detections(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, DatasetError)  # the command line prints it as one line


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(DetectionsError, match="detections file not found"):
        make_proposer(f"dets:{tmp_path / 'none.json'}")


def test_evaluate_with_a_detections_file_matches_ground_truth_proposals(
        tmp_path, mini_data, test_split, capsys) -> None:
    """The same boxes from a file and from the annotations give the same predictions."""
    path = _write(tmp_path, _mattnet_dets(test_split))
    runs = {}
    for spec in ("gt", f"dets:{path}"):
        out = tmp_path / f"{spec[:3]}.json"
        assert cli_main(["evaluate", "--data-root", str(mini_data), "--method", "largest",
                         "--clip", "", "--proposals", spec, "--out", str(out)]) == 0
        runs[spec[:3]] = json.loads(out.read_text())
    assert runs["det"]["metrics"] == runs["gt"]["metrics"]
    assert [r["box"] for r in runs["det"]["predictions"]] == \
        [r["box"] for r in runs["gt"]["predictions"]]
    assert runs["det"]["provenance"]["proposals"]["name"] == "dets:dets.json"
    assert runs["det"]["config"]["proposals"]["checksum"] == \
        runs["det"]["provenance"]["proposals"]["checksum"]


def test_evaluate_refuses_a_bad_detections_file_with_one_line(tmp_path, mini_data,
                                                             capsys) -> None:
    path = _write(tmp_path, [{"image_id": 1, "box": [0, 0, 4, -4]}])
    out = tmp_path / "r.json"
    assert cli_main(["evaluate", "--data-root", str(mini_data), "--method", "largest",
                     "--clip", "", "--proposals", f"dets:{path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: detection [0]: field 'box'" in err and not out.exists()

"""``refcocog-tools ground`` and ``engine.ground.ground`` on the real photographs the tests use:
the same choice as ``evaluate`` on a one-photo data root, the text and JSON answers, the
picture, and every bad input refused in one line."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from PIL import Image

from refcocog_tools.cli.main import main
from refcocog_tools.engine.ground import NO_DEBIAS_NOTE, GroundError, ground, ground_photo
from refcocog_tools.report.figure_panels import ultralytics_photo

# Boxes (xyxy pixels) of the photos' people and the bus, and expressions to ground among them.
PHOTOS = {
    "bus.jpg": ([[10, 200, 800, 750], [40, 400, 250, 900], [210, 400, 350, 870],
                 [660, 380, 810, 880]], ["the blue bus", "the man on the left", "a man"]),
    "zidane.jpg": ([[100, 180, 1150, 720], [700, 40, 1150, 720], [420, 420, 520, 720]],
                   ["the man on the right", "a red tie"]),
}
# The untrained tiny detector finds nothing at the study's 0.25: a threshold it passes.
TINY_DETECTOR = ["--proposals", "tiny-yolov8s", "--conf", "0.0001", "--max-det", "5"]


def photo_data_root(root: Path, photo: Path, boxes: list[list[float]],
                    expressions: list[str]) -> Path:
    """A RefCOCOg data root holding the one photo: the boxes as its annotations, each
    expression one ref (to the first box) of the test split."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    shutil.copyfile(photo, root / "images" / photo.name)
    width, height = Image.open(photo).size
    annotations = [{"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1))}
                   for k, (x1, y1, x2, y2) in enumerate(boxes)]
    instances = {"images": [{"id": 1, "file_name": photo.name, "width": width,
                             "height": height}],
                 "annotations": annotations,
                 "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    (root / "annotations" / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": k, "ann_id": 1, "image_id": 1, "category_id": 1, "split": "test",
             "file_name": photo.name, "sent_ids": [k],
             "sentences": [{"sent_id": k, "sent": text, "raw": text, "tokens": text.split()}]}
            for k, text in enumerate(expressions)]
    (root / "annotations" / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _ground_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ground", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _evaluate_boxes(tmp_path: Path, root: Path, *proposals: str) -> list[list[float]]:
    out = tmp_path / "results.json"
    assert main(["evaluate", "--data-root", str(root), "--method", "red-circle", "--clip",
                 "toy-rn", "--n-debias", "0", "--no-cache", "--quiet", "--out", str(out),
                 "--force", *proposals]) == 0
    return [row["box"] for row in json.loads(out.read_text())["predictions"]]


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_ground_with_given_boxes_chooses_as_evaluate_does(
        name: str, tmp_path: Path, isolated_cache: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    photo = ultralytics_photo(name)
    boxes, expressions = PHOTOS[name]
    root = photo_data_root(tmp_path / "root", photo, boxes, expressions)
    expected = _evaluate_boxes(tmp_path, root, "--proposals", "gt")
    capsys.readouterr()
    flags = [arg for box in boxes for arg in ("--box", ",".join(map(str, box)))]
    code, out, _ = _ground_cli(capsys, str(photo), *expressions, *flags, "--json",
                               "--no-cache")
    assert code == 0
    answer = json.loads(out)
    assert [row["box"] for row in answer["expressions"]] == expected
    assert answer["n_proposals"] == len(boxes) and answer["debias"] == NO_DEBIAS_NOTE
    assert "toy weights" in answer["label"]
    for row in answer["expressions"]:
        assert row["runner_up"] is not None and row["runner_up"] != row["chosen"]
        assert row["score"] >= row["runner_up_score"]


def test_ground_with_yolo_proposals_chooses_as_evaluate_does(
        tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = ultralytics_photo("bus.jpg")
    boxes, expressions = PHOTOS["bus.jpg"]
    root = photo_data_root(tmp_path / "root", photo, boxes, expressions)
    expected = _evaluate_boxes(tmp_path, root, *TINY_DETECTOR)
    capsys.readouterr()
    code, out, _ = _ground_cli(capsys, str(photo), *expressions, *TINY_DETECTOR, "--no-cache")
    assert code == 0
    lines = out.splitlines()
    assert "5 proposal(s) from tiny-yolov8s" in lines[0] and "untrained weights" in lines[0]
    assert lines[1] == f"debiasing: {NO_DEBIAS_NOTE}"
    for line, expression, box in zip(lines[2:], expressions, expected, strict=True):
        shown = "[" + ", ".join(f"{v:.1f}" for v in box) + "]"
        assert line.startswith(f"{expression!r}: {shown} score ") and "runner-up [" in line


def test_the_function_returns_predictions_with_their_runner_up(isolated_cache: Path) -> None:
    photo = ultralytics_photo("zidane.jpg")
    boxes, expressions = PHOTOS["zidane.jpg"]
    predictions = ground(photo, expressions, clip="toy-rn", boxes=boxes)
    assert len(predictions) == len(expressions)
    for prediction in predictions:
        chosen, runner_up = int(prediction.chosen[0]), int(prediction.runner_up[0])
        assert runner_up not in (-1, chosen)
        assert prediction.scores[0, runner_up] == prediction.scores[0].sort().values[-2]
        assert prediction.runner_up_boxes[0].tolist() == [float(v) for v in boxes[runner_up]]


def test_debias_from_a_data_root_draws_from_its_train_split(mini_data: Path,
                                                           isolated_cache: Path) -> None:
    from refcocog_tools.data.dataset import RefCOCOg

    boxes, expressions = PHOTOS["bus.jpg"]
    found = ground_photo(ultralytics_photo("bus.jpg"), expressions[:1], clip="tiny-rn",
                         boxes=boxes, debias_from=mini_data)
    train = len(RefCOCOg(mini_data, "train", view="expression").sentences())
    assert found.method.config()["n_debias"] == 5000
    assert f"the {train} training expressions" in found.debias
    assert "untrained weights" in found.label


def test_the_picture_is_written_refused_without_force_and_never_over_the_photo(
        tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "bus.jpg"
    shutil.copyfile(ultralytics_photo("bus.jpg"), photo)
    picture = tmp_path / "answer.png"
    args = [str(photo), "the blue bus", "--box", "10,200,800,750", "--box", "40,400,250,900",
            "--no-cache"]
    assert _ground_cli(capsys, *args, "--out", str(picture))[0] == 0
    with Image.open(picture) as drawn, Image.open(photo) as original:
        assert drawn.size == original.size and drawn.format == "PNG"
        assert drawn.convert("RGB").tobytes() != original.convert("RGB").tobytes()
    written = picture.read_bytes()
    code, _, err = _ground_cli(capsys, *args, "--out", str(picture))
    assert code == 2 and "already there; pass --force" in err and len(err.splitlines()) == 1
    assert picture.read_bytes() == written
    code, _, err = _ground_cli(capsys, *args, "--out", str(photo), "--force")
    assert code == 2 and "input image" in err and len(err.splitlines()) == 1
    assert _ground_cli(capsys, *args, "--out", str(picture), "--force")[0] == 0


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = _ground_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_refused_in_one_line(tmp_path: Path, isolated_cache: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(ultralytics_photo("bus.jpg"))
    box = ["--box", "10,200,800,750", "--no-cache"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    assert "image unreadable" in _one_line_error(capsys, str(broken), "the bus", *box)
    assert "image file not found" in _one_line_error(capsys, str(tmp_path / "gone.png"),
                                                     "the bus", *box)
    assert "expression 2 is empty" in _one_line_error(capsys, photo, "the bus", "  ", *box)
    assert "lies outside the 810x1080 image" in _one_line_error(
        capsys, photo, "the bus", "--box", "900,10,1000,50", "--no-cache")
    with pytest.raises(SystemExit):
        main(["ground", photo, "the bus", "--box", "1,2,3"])
    assert "is not x1,y1,x2,y2" in capsys.readouterr().err
    with pytest.raises(GroundError, match="no ground-truth boxes"):
        ground(photo, ["the bus"], proposals="gt")
    assert "zero-shot" in _one_line_error(capsys, photo, "the bus", "--method", "regressor",
                                          *box)


def test_a_mask_of_another_size_in_a_detections_file_is_refused(
        tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from refcocog_tools.core.masks import encode

    small = np.zeros((10, 10), dtype=bool)
    small[2:5, 2:5] = True
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 7, "box": [10, 200, 790, 550],
                                 "segmentation": encode(small)}]))
    err = _one_line_error(capsys, str(ultralytics_photo("bus.jpg")), "the bus", "--proposals",
                          f"dets:{dets}", "--variants", "blur", "--window", "mask",
                          "--no-cache")
    assert "dets.json: image 7 detection [0]: field 'segmentation'" in err


def test_a_detector_and_a_segmentation_model_are_not_taken_for_each_other(
        tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from refcocog_tools.models.untrained_models import tiny_yolo_checkpoint

    photo = str(ultralytics_photo("bus.jpg"))
    err = _one_line_error(capsys, photo, "the bus", "--proposals", "tiny-yolov8s",
                          "--window", "mask", "--no-cache")
    assert "a detection model gives no masks" in err
    # A segmentation checkpoint filed under a detector's name.
    (isolated_cache / "yolo").mkdir(exist_ok=True)
    shutil.copyfile(tiny_yolo_checkpoint(isolated_cache, "tiny-yolov8s-seg"),
                    isolated_cache / "yolo" / "yolov8s.pt")
    err = _one_line_error(capsys, photo, "the bus", "--no-cache")  # default: yolov8s
    assert "a segmentation model" in err and "'yolov8s' names a detection model" in err

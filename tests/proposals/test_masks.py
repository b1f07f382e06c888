"""Masks as part of a proposal: COCO segmentations decoded, the embedded dataset's true masks,
detection files with masks, the YOLO segmentation model, and the checks that refuse bad ones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from refcocog_tools.core.masks import (
    MaskError,
    as_rle,
    box_masks,
    decode,
    encode,
    segmentation_problem,
    with_box_fallback,
)
from refcocog_tools.data.annotations import INSTANCES_FILE, DatasetError
from refcocog_tools.data.dataset import RefCOCOg, validate
from refcocog_tools.data.minidata import CATEGORIES, generate, write_mini_dataset
from refcocog_tools.engine.evaluate import evaluate
from refcocog_tools.methods.registry import make_method
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.untrained_models import (
    EMBEDDED_YOLO,
    EMBEDDED_YOLO_SEG,
    tiny_yolo_checkpoint,
)
from refcocog_tools.models.yolo_models import _ultralytics_env, load_yolo
from refcocog_tools.proposals.detections import DetectionsError
from refcocog_tools.proposals.proposers import (
    GroundTruthProposer,
    Proposals,
    YoloProposer,
    make_proposer,
)

SIZE = (30, 20)  # (width, height)


def _known_mask() -> torch.Tensor:
    """An L shape: rows 2..9 of columns 5..14, plus rows 10..15 of columns 5..8."""
    mask = torch.zeros(SIZE[1], SIZE[0], dtype=torch.bool)
    mask[2:10, 5:15] = True
    mask[10:16, 5:9] = True
    return mask


def _column_major_counts(mask: torch.Tensor) -> list[int]:
    """COCO's uncompressed RLE written out by hand: runs over the pixels in column order,
    starting with a (possibly empty) run of zeros."""
    flat = mask.numpy().T.reshape(-1)
    counts, value, run = [], False, 0
    for pixel in flat:
        if bool(pixel) == value:
            run += 1
        else:
            counts.append(run)
            value, run = bool(pixel), 1
    counts.append(run)
    return counts


# -- decoding ----------------------------------------------------------------------------------
def test_polygon_and_every_rle_form_decode_to_the_known_mask() -> None:
    known = _known_mask()
    # The L's outline; pycocotools rasterises a polygon of pixel edges onto exactly these pixels.
    polygon = [[5, 2, 15, 2, 15, 10, 9, 10, 9, 16, 5, 16]]
    uncompressed = {"size": [SIZE[1], SIZE[0]], "counts": _column_major_counts(known)}
    compressed = encode(known)
    assert isinstance(compressed["counts"], str)  # JSON-able as written
    as_bytes = {"size": compressed["size"], "counts": compressed["counts"].encode()}
    for segmentation in (polygon, uncompressed, compressed, as_bytes,
                         json.loads(json.dumps(compressed))):
        mask = decode(segmentation, SIZE)
        assert mask is not None and mask.dtype == torch.bool and mask.shape == (20, 30)
        assert torch.equal(mask, known), segmentation
    # Two polygons of one object are one mask.
    parts = [[5, 2, 15, 2, 15, 10, 5, 10], [5, 10, 9, 10, 9, 16, 5, 16]]
    assert torch.equal(decode(parts, SIZE), known)
    assert decode(None, SIZE) is None and decode([], SIZE) is None


@pytest.mark.parametrize(("segmentation", "message"), [
    ([[1, 2, 3, 4]], "polygon \\[0\\]"),  # pycocotools would read four numbers as a box
    ([[1, 2, 3, 4, 5]], "even number"),
    ([[1, 2, 3, "4", 5, 6]], "finite"),
    ({"size": [21, 30], "counts": [600]}, "differs from the 30x20 image"),
    ({"size": [20, 30], "counts": [5, 5]}, "cover 10 pixels"),
    ({"size": [20, 30], "counts": [300, -1, 301]}, "non-negative"),
    ({"size": [20, 30], "counts": "zzz!!"}, "cannot be decoded|do not cover"),
    ({"size": [20, 30], "counts": encode(torch.ones(10, 30, dtype=torch.bool))["counts"]},
     "do not cover|cannot be decoded"),  # a valid string of a smaller image
    ({"size": [20, 30]}, "counts"),
    ("not a mask", "expected polygons"),
])
def test_malformed_segmentations_are_refused(segmentation, message) -> None:
    with pytest.raises(MaskError, match=message):
        as_rle(segmentation, SIZE)
    problem = segmentation_problem(segmentation, (0, 0, 30, 20), SIZE, "f.json: annotation id 7")
    assert problem is not None and problem.startswith("f.json: annotation id 7: field "
                                                      "'segmentation' cannot be decoded")


def test_box_masks_and_the_fallback_count() -> None:
    boxes = torch.tensor([[5.0, 2.0, 15.0, 10.0], [0.0, 0.0, 30.0, 20.0]])
    masks = box_masks(boxes, SIZE)
    expected = torch.zeros(2, 20, 30, dtype=torch.bool)
    expected[0, 2:10, 5:15] = True
    expected[1] = True
    assert torch.equal(masks, expected)
    known = _known_mask()
    stacked, from_boxes = with_box_fallback([known, None], boxes, SIZE)
    assert from_boxes == 1 and torch.equal(stacked[0], known) and stacked[1].all()
    with pytest.raises(MaskError, match="not the image's"):
        with_box_fallback([torch.zeros(5, 5, dtype=torch.bool)], boxes[:1], SIZE)


def test_proposals_check_their_masks() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]])
    fine = Proposals(boxes, [None, None], masks=torch.zeros(2, 8, 6, dtype=torch.bool),
                     masks_from_boxes=1)
    assert fine.mask_size == (6, 8) and fine.masks_from_boxes == 1
    assert Proposals(boxes, [None, None]).masks is None
    with pytest.raises(ValueError, match="for 2 boxes"):
        Proposals(boxes, [None, None], masks=torch.zeros(3, 8, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.bool"):
        Proposals(boxes, [None, None], masks=torch.zeros(2, 8, 6))
    with pytest.raises(ValueError, match="without masks"):
        Proposals(boxes, [None, None], masks_from_boxes=1)
    with pytest.raises(ValueError, match="outside 0..2"):
        Proposals(boxes, [None, None], masks=torch.zeros(2, 8, 6, dtype=torch.bool),
                  masks_from_boxes=3)
    whole = Proposals.whole_image((6, 8), masks=True)
    assert whole.masks.shape == (1, 8, 6) and whole.masks.all() and whole.masks_from_boxes == 1


# -- the embedded dataset ----------------------------------------------------------------------
def test_embedded_images_are_the_same_bytes_as_before_masks() -> None:
    """The JPEGs of seed 0 as the generator wrote them before it drew masks (sha256 of every
    file name and its bytes, in name order): drawing the masks changed no pixel."""
    _, _, files = generate(12, 0)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(files[name])
    assert digest.hexdigest() == ("041eb6bc0b97ccfd4c4562dc5eb35ef1b956a759db17b7b3a112f4d02c28a5"
                                  "a6")


def test_embedded_masks_are_the_drawn_shapes_inside_their_boxes() -> None:
    _, instances, _ = generate(30, 0)
    sizes = {image["id"]: (image["width"], image["height"]) for image in instances["images"]}
    ious: dict[str, list[float]] = defaultdict(list)
    for ann in instances["annotations"]:
        size = sizes[ann["image_id"]]
        mask = decode(ann["segmentation"], size)
        x, y, w, h = ann["bbox"]
        box = box_masks(torch.tensor([[x, y, x + w, y + h]]), size)[0]
        assert ann["area"] == int(mask.sum())
        rows, cols = torch.nonzero(mask, as_tuple=True)
        # PIL draws a rectangle's far edges too: at most one pixel past the COCO box.
        assert cols.min() >= x and rows.min() >= y
        assert cols.max() + 1 <= x + w + 1 and rows.max() + 1 <= y + h + 1
        ious[CATEGORIES[ann["category_id"]][0]].append(float((mask & box).sum() /
                                                             (mask | box).sum()))
    assert set(ious) == {name for name, _ in CATEGORIES.values()}
    for name, values in ious.items():
        # Cars and buses are nearly their boxes (a body on wheels); every other shape is not.
        limit = 0.98 if name in ("car", "bus") else 0.95
        assert max(values) < limit, (name, max(values))
    assert np.mean([v for values in ious.values() for v in values]) < 0.8


# -- ground-truth proposals and validate -------------------------------------------------------
@pytest.fixture(scope="module")
def mask_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_dataset(tmp_path_factory.mktemp("mask-data"), n_images=8, seed=1)


def _edit_instances(root: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    path = copy / "annotations" / INSTANCES_FILE
    data = json.loads(path.read_text())
    edit(data["annotations"])
    path.write_text(json.dumps(data))
    return copy


def test_ground_truth_masks_only_when_asked(mask_root: Path, tmp_path: Path) -> None:
    item = RefCOCOg(mask_root, "train", view="ref")[0]
    assert GroundTruthProposer()(item).masks is None
    props = make_proposer("gt", masks=True)(item)
    assert props.masks.shape == (len(item.instances), item.image_size[1], item.image_size[0])
    assert props.masks_from_boxes == 0
    for inst, mask in zip(item.instances, props.masks, strict=True):
        assert torch.equal(mask, decode(inst.segmentation, item.image_size))
    assert make_proposer("gt", masks=True).config() == {"proposer": "gt", "masks": True}

    # An instance without a segmentation falls back to its box, and is counted.
    missing = item.instances[0].ann_id
    root = _edit_instances(mask_root, tmp_path, lambda anns: [
        ann.pop("segmentation") for ann in anns if ann["id"] == missing])
    item = next(it for it in RefCOCOg(root, "train", view="ref") if it.image_id == item.image_id)
    props = GroundTruthProposer(masks=True)(item)
    assert props.masks_from_boxes == 1
    assert torch.equal(props.masks[0], box_masks(props.boxes[:1], item.image_size)[0])


def test_an_undecodable_segmentation_is_named_before_the_run(mask_root: Path,
                                                             tmp_path: Path) -> None:
    first = json.loads((mask_root / "annotations" / INSTANCES_FILE).read_text())["annotations"][0]

    def spoil(anns):
        anns[0]["segmentation"] = {"size": [1, 1], "counts": [1]}

    root = _edit_instances(mask_root, tmp_path, spoil)
    split = RefCOCOg(root, "train")  # loading boxes does not decode masks
    with pytest.raises(DatasetError) as info:
        GroundTruthProposer(masks=True).check_dataset(split.records)
    message = str(info.value)
    assert "\n" not in message
    assert str(root / "annotations" / INSTANCES_FILE) in message
    assert f"annotation id {first['id']}" in message and "'segmentation'" in message
    GroundTruthProposer().check_dataset(split.records)  # box-only: nothing to check


def test_validate_reports_masks_outside_their_box(mask_root: Path, tmp_path: Path) -> None:
    assert validate(mask_root, check_images=False) == []
    anns = json.loads((mask_root / "annotations" / INSTANCES_FILE).read_text())["annotations"]
    moved, broken = anns[0]["id"], anns[1]["id"]

    def spoil(anns):
        x, y, w, h = anns[0]["bbox"]
        # Its mask shifted 5 px to the right of its box: past the 2 px tolerance.
        anns[0]["segmentation"] = [[x + 5, y, x + w + 5, y, x + w + 5, y + h, x + 5, y + h]]
        anns[1]["segmentation"] = [[1, 2, 3]]

    root = _edit_instances(mask_root, tmp_path, spoil)
    problems = validate(root, check_images=False)
    instances = str(root / "annotations" / INSTANCES_FILE)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{instances}: annotation id {moved}: field 'segmentation'")
    assert "outside its box" in problems[0]
    assert problems[1].startswith(f"{instances}: annotation id {broken}: field 'segmentation' "
                                  "cannot be decoded")

    def nudge(anns):  # one pixel past its box: rasterisation, not a problem
        x, y, w, h = anns[0]["bbox"]
        anns[0]["segmentation"] = [[x - 1, y, x + w + 1, y, x + w + 1, y + h + 1, x - 1, y + h]]

    assert validate(_edit_instances(mask_root, tmp_path / "nudged", nudge),
                    check_images=False) == []


def test_the_results_count_masks_that_fell_back_to_boxes(mask_root: Path,
                                                         tmp_path: Path) -> None:
    split = RefCOCOg(mask_root, "train")
    image_ids = set(split.image_ids)
    anns = json.loads((mask_root / "annotations" / INSTANCES_FILE).read_text())["annotations"]
    dropped = {ann["id"] for ann in anns if ann["image_id"] in image_ids}
    dropped = set(sorted(dropped)[:3])
    root = _edit_instances(mask_root, tmp_path, lambda anns: [
        ann.update(segmentation=[]) for ann in anns if ann["id"] in dropped])
    split = RefCOCOg(root, "train")
    method = make_method("largest")
    document = evaluate(split, method, GroundTruthProposer(masks=True))
    proposals = document["provenance"]["proposals"]
    n_proposals = sum(len(r.instances) for r in {r.image_id: r for r in split.records}.values())
    assert proposals["masks_from_boxes"] == 3
    assert proposals["proposals_with_masks"] == n_proposals
    assert all("masks_from_boxes" not in row for row in document["predictions"])
    boxes_only = evaluate(split, method, GroundTruthProposer())
    assert "masks_from_boxes" not in boxes_only["provenance"]["proposals"]
    assert boxes_only["metrics"] == document["metrics"]


# -- detection files ---------------------------------------------------------------------------
def test_detection_files_carry_masks(mask_root: Path, tmp_path: Path) -> None:
    split = RefCOCOg(mask_root, "test")
    record = split.records[0]
    width, height = record.image_size
    inst = record.instances
    dets = []
    for k, instance in enumerate(inst):
        x1, y1, x2, y2 = instance.box
        det = {"image_id": record.image_id, "box": [x1, y1, x2 - x1, y2 - y1], "score": 0.9}
        if k == 0:
            det["segmentation"] = instance.segmentation  # compressed RLE
        elif k == 1:
            det["segmentation"] = [[x1, y1, x2, y1, x1, y2]]  # a triangle
        dets.append(det)
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    item = next(it for it in split if it.image_id == record.image_id)

    assert make_proposer(f"dets:{path}")(item).masks is None  # boxes only unless asked
    proposer = make_proposer(f"dets:{path}", masks=True)
    with pytest.warns(UserWarning, match="have no detection"):  # only this image has any
        proposer.check_dataset(split.records)
    props = proposer(item)
    assert props.masks.shape == (len(inst), height, width)
    assert props.masks_from_boxes == len(inst) - 2
    assert torch.equal(props.masks[0], decode(inst[0].segmentation, record.image_size))
    assert torch.equal(props.masks[1], decode(dets[1]["segmentation"], record.image_size))
    assert torch.equal(props.masks[2:], box_masks(props.boxes[2:], record.image_size))

    # A mask of another image's size: one line naming the file and the detection.
    dets[0]["segmentation"] = encode(torch.ones(height + 1, width, dtype=torch.bool))
    path.write_text(json.dumps(dets))
    with pytest.raises(DetectionsError) as info:
        make_proposer(f"dets:{path}", masks=True).check_dataset(split.records)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: image {record.image_id} detection [0]: field "
                              "'segmentation'")
    assert f"differs from the {width}x{height} image" in message

    dets[0]["segmentation"] = "rle"
    path.write_text(json.dumps(dets))
    with pytest.raises(DetectionsError, match=r"detection \[0\]: field 'segmentation' has type"):
        make_proposer(f"dets:{path}")
    for det in dets:
        det.pop("segmentation", None)
    path.write_text(json.dumps(dets))
    with pytest.raises(DetectionsError, match="no detection has a 'segmentation'"):
        make_proposer(f"dets:{path}", masks=True)


# -- YOLO segmentation -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_cache(session_cache: Path) -> Path:
    _ultralytics_env(session_cache)
    return session_cache


_GENERATE_SEG = """
import sys
from pathlib import Path
from refcocog_tools.models.yolo_models import _ultralytics_env
from refcocog_tools.models.untrained_models import EMBEDDED_YOLO_SEG, tiny_yolo_checkpoint
_ultralytics_env(Path(sys.argv[1]))
print(tiny_yolo_checkpoint(Path(sys.argv[1]), EMBEDDED_YOLO_SEG))
"""


def test_tiny_yolo_seg_is_the_same_file_each_time(yolo_cache: Path, tmp_path: Path) -> None:
    """Generated again in this process, and in one with PyTorch's generic kernels and two
    threads (the last bits of float32 results as on another CPU): the same bytes."""
    first = tiny_yolo_checkpoint(yolo_cache, EMBEDDED_YOLO_SEG)
    again = tiny_yolo_checkpoint(tmp_path / "here", EMBEDDED_YOLO_SEG)
    assert first != again and first.read_bytes() == again.read_bytes()
    assert json.loads(Path(f"{again}.json").read_text())["untrained"] is True
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2",
           "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics")}
    done = subprocess.run([sys.executable, "-c", _GENERATE_SEG, str(tmp_path / "generic")],
                          env=env, capture_output=True, text=True, check=True, timeout=300)
    generic = Path(done.stdout.strip().splitlines()[-1])
    assert generic.read_bytes() == first.read_bytes()


def test_tiny_yolo_seg_gives_masks_of_the_image_size(yolo_cache: Path, mask_root: Path) -> None:
    split = RefCOCOg(mask_root, "train", view="ref")
    items = [split[0], next(it for it in split if it.image_size != split[0].image_size)]
    proposer = make_proposer(EMBEDDED_YOLO_SEG, cache=yolo_cache, masks=True, conf=0.0,
                             max_det=4)
    assert isinstance(proposer, YoloProposer) and proposer.task == "segment"
    assert proposer.untrained and proposer.config()["masks"] is True
    for item, props in zip(items, proposer.propose_many(items), strict=True):
        width, height = item.image_size
        assert props.masks is not None and props.masks.dtype == torch.bool
        assert props.masks.shape == (len(props), height, width)
        assert props.masks_from_boxes == 0 and bool(props.masks.any())
    # Without masks a segmentation model's boxes are used alone.
    boxes_only = make_proposer(EMBEDDED_YOLO_SEG, cache=yolo_cache, conf=0.0, max_det=4)
    assert boxes_only(items[0]).masks is None


def test_segmentation_and_detection_checkpoints_are_not_swapped(yolo_cache: Path,
                                                                tmp_path: Path) -> None:
    segmenter = tiny_yolo_checkpoint(yolo_cache, EMBEDDED_YOLO_SEG)
    detector = tiny_yolo_checkpoint(yolo_cache, EMBEDDED_YOLO)
    cache = tmp_path / "cache"
    (cache / "yolo").mkdir(parents=True)
    shutil.copy(segmenter, cache / "yolo" / "yolov8s.pt")
    shutil.copy(detector, cache / "yolo" / "yolov8s-seg.pt")
    with pytest.raises(BackboneError, match="a segmentation model .*'yolov8s' names a "
                                            "detection model"):
        load_yolo("yolov8s", cache=cache)
    with pytest.raises(BackboneError, match="a detection model .*'yolov8s-seg' names a "
                                            "segmentation model"):
        load_yolo("yolov8s-seg", cache=cache)
    # A path may hold either; a detector asked for masks is refused in one line.
    assert load_yolo(str(segmenter), cache=cache).task == "segment"
    with pytest.raises(BackboneError) as info:
        YoloProposer(str(detector), cache=cache, masks=True)
    assert "\n" not in str(info.value) and "gives no masks" in str(info.value)

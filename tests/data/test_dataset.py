"""The data layer against the embedded dataset and against deliberately broken copies of it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from annotation_files import read_instances, read_refs, write_instances, write_refs
from PIL import Image

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.annotations import (
    INSTANCES_FILE,
    DatasetError,
    load_refs_pickle,
    parse_refcocog,
    xywh_to_xyxy,
)
from refcocog_tools.data.dataset import (
    REFS_FILE,
    RefCOCOg,
    collate_items,
    load_rgb_image,
    split_stats,
    validate,
)
from refcocog_tools.data.minidata import generate, write_mini_dataset


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_dataset(tmp_path_factory.mktemp("mini"), n_images=12, seed=3)


@pytest.fixture
def broken_root(mini_root: Path, tmp_path: Path) -> Path:
    """A private copy of the mini dataset that a test may damage."""
    return Path(shutil.copytree(mini_root, tmp_path / "copy"))


# -- counts and contents -----------------------------------------------------------------------
def test_counts_per_split_match_what_was_generated(mini_root: Path) -> None:
    refs, instances, _ = generate(12, seed=3)
    for split in ("train", "val", "test"):
        expected_refs = [r for r in refs if r["split"] == split]
        by_ref = RefCOCOg(mini_root, split, view="ref")
        by_expr = RefCOCOg(mini_root, split, view="expression")
        assert len(by_ref) == len(expected_refs) > 0
        assert len(by_expr) == sum(len(r["sentences"]) for r in expected_refs)
        assert set(by_ref.image_ids) == {r["image_id"] for r in expected_refs}
    stats = split_stats(mini_root)
    assert sum(s["refs"] for s in stats.values()) == len(refs)
    assert sum(s["images"] for s in stats.values()) == len(instances["images"])


def test_every_sentence_of_a_ref_comes_back(mini_root: Path) -> None:
    refs = {r["ref_id"]: r for r in read_refs(mini_root)}
    by_ref = RefCOCOg(mini_root, "train", view="ref")
    by_expr = RefCOCOg(mini_root, "train", view="expression")
    for item in by_ref:
        original = refs[item.ref_id]
        assert list(item.sentences) == [s["sent"] for s in original["sentences"]]
        assert list(item.sent_ids) == original["sent_ids"]
    seen = {(item.ref_id, item.sent_id, item.sentence) for item in by_expr}
    expected = {(r["ref_id"], s["sent_id"], s["sent"]) for r in refs.values()
                if r["split"] == "train" for s in r["sentences"]}
    assert seen == expected


def test_item_fields_boxes_and_instances(mini_root: Path) -> None:
    instances = read_instances(mini_root)
    anns = {a["id"]: a for a in instances["annotations"]}
    item = RefCOCOg(mini_root, "test", view="expression")[0]
    ann = anns[item.ann_id]
    x, y, w, h = ann["bbox"]
    assert item.box == (x, y, x + w, y + h)
    assert item.category_id == ann["category_id"]
    assert item.image_id == ann["image_id"]
    same_image = {a["id"] for a in instances["annotations"] if a["image_id"] == item.image_id}
    assert {inst.ann_id for inst in item.instances} == same_image
    assert item.ann_id in same_image
    image = item.image
    assert image.mode == "RGB" and image.size == item.image_size


def test_xywh_to_xyxy() -> None:
    assert xywh_to_xyxy([10, 20, 30, 40]) == (10.0, 20.0, 40.0, 60.0)
    assert xywh_to_xyxy((0.5, 0, 1.5, 2)) == (0.5, 0.0, 2.0, 2.0)


def test_item_access_does_not_rebuild_lists(mini_root: Path, monkeypatch) -> None:
    """The original rebuilt `list(annotations)` per access; items here are indexed once."""
    dataset = RefCOCOg(mini_root, "train")
    for loader in ("load_records", "load_records_and_duplicates"):
        monkeypatch.setattr(f"refcocog_tools.data.dataset.{loader}", lambda *a, **k: 1 / 0)
    assert dataset[len(dataset) - 1].ref_id == dataset.records[-1].ref_id


def test_collate_keeps_pil_images_of_different_sizes(mini_root: Path) -> None:
    dataset = RefCOCOg(mini_root, "train", view="ref")
    batch = collate_items([dataset[i] for i in range(4)])
    assert all(isinstance(im, Image.Image) for im in batch["images"])
    assert batch["boxes"].shape == (4, 4) and batch["boxes"].dtype == torch.float32
    assert [len(s) for s in batch["sentences"]] == [len(dataset[i].sentences) for i in range(4)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_items)
    assert sum(len(b["images"]) for b in loader) == len(dataset)


# -- generator ----------------------------------------------------------------------------------
def test_generator_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    a = write_mini_dataset(tmp_path / "a", n_images=6, seed=7)
    b = write_mini_dataset(tmp_path / "b", n_images=6, seed=7)
    c = write_mini_dataset(tmp_path / "c", n_images=6, seed=8)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    refs_file = Path("annotations") / REFS_FILE
    assert (a / refs_file).read_bytes() != (c / refs_file).read_bytes()


def test_generated_records_have_the_real_fields(mini_root: Path) -> None:
    ref = read_refs(mini_root)[0]
    assert set(ref) == {"ref_id", "ann_id", "image_id", "split", "category_id", "file_name",
                        "sent_ids", "sentences"}
    assert set(ref["sentences"][0]) == {"sent", "raw", "tokens", "sent_id"}
    data = read_instances(mini_root)
    assert {"images", "annotations", "categories"} <= set(data)
    ann = data["annotations"][0]
    assert {"bbox", "area", "image_id", "category_id", "id"} <= set(ann)
    # The area of the object's drawn pixels (its mask), as COCO's, not of its box.
    import pycocotools.mask as coco_mask

    assert ann["area"] == float(coco_mask.area(ann["segmentation"])) > 0
    assert ann["area"] < (ann["bbox"][2] + 1) * (ann["bbox"][3] + 1)
    stats = split_stats(mini_root)
    assert all(stats[s]["refs"] > 0 for s in ("train", "val", "test"))
    assert 0 < stats["train"]["spatial_share"] < 1
    # Same-category distractors: every image holds at least two instances of some category.
    for image in data["images"]:
        cats = [a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        assert len(cats) > len(set(cats))


# -- safe unpickling ----------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("owned",))


def test_unpickler_refuses_callables(tmp_path: Path) -> None:
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "evil": _Payload()}]))
    with pytest.raises(DatasetError, match=r"refs\.p.*refusing to load global builtins\.print"):
        load_refs_pickle(path)


def test_unpickler_reads_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "refs.p"
    data = [{"ref_id": 1, "sentences": [{"sent": "x", "tokens": ["x"]}], "t": (1, 2.5, None)}]
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_refs_pickle(path) == data


# -- bad input ----------------------------------------------------------------------------------
def test_missing_root_and_files(tmp_path: Path, broken_root: Path) -> None:
    with pytest.raises(DatasetError, match="data root not found"):
        RefCOCOg(tmp_path / "nowhere")
    (broken_root / "annotations" / INSTANCES_FILE).unlink()
    with pytest.raises(DatasetError, match=r"instances\.json: annotation file not found"):
        RefCOCOg(broken_root)


def test_ref_whose_ann_id_has_no_instance(broken_root: Path) -> None:
    refs = read_refs(broken_root)
    refs[0]["ann_id"] = 999999
    write_refs(broken_root, refs)
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p: ref_id 0: field 'ann_id' 999999"):
        RefCOCOg(broken_root, refs[0]["split"])


def test_ref_without_sentences(broken_root: Path) -> None:
    refs = read_refs(broken_root)
    refs[1]["sentences"] = []
    write_refs(broken_root, refs)
    with pytest.raises(DatasetError, match=r"ref_id 1: field 'sentences' is empty"):
        RefCOCOg(broken_root)


def test_missing_and_unreadable_images(broken_root: Path) -> None:
    dataset = RefCOCOg(broken_root, "test")
    first, other = dataset[0], next(i for i in dataset if i.image_id != dataset[0].image_id)
    first.image_path.unlink()
    other.image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{first.image_path.name}: image file not found"):
        _ = dataset[0].image
    with pytest.raises(DatasetError, match=rf"{other.image_path.name}: image unreadable"):
        load_rgb_image(other.image_path)
    problems = validate(broken_root)
    assert any(first.image_path.name in p and "not found" in p for p in problems)
    assert any(other.image_path.name in p and "unreadable" in p for p in problems)
    assert cli_main(["validate", "--data-root", str(broken_root)]) == 1


def test_degenerate_and_out_of_image_boxes(broken_root: Path) -> None:
    data = read_instances(broken_root)
    width = {im["id"]: im["width"] for im in data["images"]}
    data["annotations"][0]["bbox"][2] = 0  # zero width
    ann = data["annotations"][1]
    ann["bbox"][0] = width[ann["image_id"]] - 5  # runs past the right edge
    write_instances(broken_root, data)
    problems = validate(broken_root, check_images=False)
    assert any(f"annotation id {data['annotations'][0]['id']}: field 'bbox'" in p
               and "degenerate" in p for p in problems)
    assert any(f"annotation id {ann['id']}: field 'bbox'" in p and "outside" in p
               for p in problems)
    with pytest.raises(DatasetError, match="degenerate|outside"):
        RefCOCOg(broken_root)
    # Clipping on request fixes the out-of-image box but never the degenerate one.
    _, clipped_problems = parse_refcocog(broken_root, clip_boxes=True)
    assert not any("outside" in p for p in clipped_problems)
    assert any("degenerate" in p for p in clipped_problems)


def test_validate_lists_every_problem_at_once(broken_root: Path) -> None:
    refs = read_refs(broken_root)
    refs[0]["sentences"] = []
    refs[2]["ann_id"] = 424242
    del refs[3]["split"]
    write_refs(broken_root, refs)
    problems = validate(broken_root, check_images=False)
    assert len(problems) == 3
    assert any("field 'split' missing" in p for p in problems)


def test_images_in_any_mode_come_out_rgb_and_upright(tmp_path: Path) -> None:
    base = Image.new("RGB", (40, 20), (200, 30, 30))
    for mode in ("L", "P", "RGBA", "CMYK"):
        path = tmp_path / f"im_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        base.convert(mode).save(path)
        image = load_rgb_image(path)
        assert image.mode == "RGB" and image.size == (40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    base.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb_image(tmp_path / "rot.jpg").size == (20, 40)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    transparent.save(tmp_path / "t.png")
    assert load_rgb_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


# -- command line -------------------------------------------------------------------------------
def test_cli_make_stats_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mini"
    assert cli_main(["make-mini-dataset", str(root), "--images", "5", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli_main(["stats", "--data-root", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    refs, _, _ = generate(5, seed=1)
    assert stats["test"]["refs"] == sum(r["split"] == "test" for r in refs)
    assert cli_main(["validate", "--data-root", str(root)]) == 0
    assert cli_main(["stats", "--data-root", str(tmp_path / "missing")]) == 2
    assert "data root not found" in capsys.readouterr().err


def test_unreadable_image_is_reported_even_after_ultralytics_patched_pil(tmp_path: Path) -> None:
    """Ultralytics swaps PIL.Image.open for a wrapper that tries to install pi-heif on an
    unidentified file; the data layer still reports the file as unreadable."""
    import ultralytics.utils.patches  # noqa: F401 - applies the patch

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"bad\.jpg: image unreadable"):
        load_rgb_image(bad)


def test_a_bad_box_no_ref_points_to_is_dropped_with_a_warning(broken_root: Path) -> None:
    referred = {r["ann_id"] for r in read_refs(broken_root)}
    data = read_instances(broken_root)
    distractor = next(a for a in data["annotations"] if a["id"] not in referred)
    distractor["bbox"][3] = 0  # zero height
    write_instances(broken_root, data)
    refs_of_image = [r for r in read_refs(broken_root) if r["image_id"] == distractor["image_id"]]
    split = refs_of_image[0]["split"]
    with pytest.warns(UserWarning, match=rf"annotation id {distractor['id']}: field 'bbox'"):
        dataset = RefCOCOg(broken_root, split, view="ref")
    assert len(dataset) == sum(r["split"] == split for r in read_refs(broken_root))
    item = next(i for i in dataset if i.image_id == distractor["image_id"])
    assert distractor["id"] not in {inst.ann_id for inst in item.instances}
    problems = validate(broken_root, check_images=False)
    assert len(problems) == 1 and "degenerate" in problems[0]


def test_a_ref_to_a_rejected_instance_names_both(broken_root: Path) -> None:
    ref = read_refs(broken_root)[0]
    data = read_instances(broken_root)
    next(a for a in data["annotations"] if a["id"] == ref["ann_id"])["bbox"][2] = -4
    write_instances(broken_root, data)
    with pytest.raises(DatasetError, match=rf"ref_id {ref['ref_id']}: field 'ann_id' "
                                           rf"{ref['ann_id']} refers to a rejected instance"):
        RefCOCOg(broken_root)


def test_a_changed_annotation_file_is_read_again(broken_root: Path) -> None:
    before = len(RefCOCOg(broken_root, "train", view="ref"))
    refs = read_refs(broken_root)
    first_train = next(i for i, r in enumerate(refs) if r["split"] == "train")
    del refs[first_train]
    write_refs(broken_root, refs)
    assert len(RefCOCOg(broken_root, "train", view="ref")) == before - 1

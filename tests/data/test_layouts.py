"""RefCOCO, RefCOCO+ and RefCOCOg's two split-bys: generated roots of every layout load, and
combinations the family does not have are refused before any file is read."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.annotations import DatasetError, load_records
from refcocog_tools.data.dataset import RefCOCOg, split_stats, validate
from refcocog_tools.data.layouts import DATASETS, LayoutError, get_layout
from refcocog_tools.data.minidata import generate, write_mini_dataset

LAYOUTS = [(dataset, split_by) for dataset, split_bys in DATASETS.items() for split_by in split_bys]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """One generated root per layout, same seed: 8 images each (about 0.1 s apiece)."""
    return {(d, s): write_mini_dataset(tmp_path_factory.mktemp(f"{d}-{s}"), n_images=8, seed=1,
                                       layout=get_layout(d, s))
            for d, s in LAYOUTS}


def test_the_family_table_is_the_refer_toolkits() -> None:
    assert get_layout("refcoco", "unc").splits == ("train", "val", "testA", "testB")
    assert get_layout("refcoco+").refs_file == "refs(unc).p"
    assert get_layout("refcocog").refs_file == "refs(umd).p"
    assert get_layout("refcocog", "google").splits == ("train", "val")
    assert get_layout("refcocog", "google").default_split == "val"
    assert get_layout("refcoco", "google").refs_file == "refs(google).p"


@pytest.mark.parametrize(("dataset", "split_by"), LAYOUTS)
def test_every_layout_writes_its_refs_file_and_loads_every_split(roots, dataset, split_by) -> None:
    layout = get_layout(dataset, split_by)
    root = roots[(dataset, split_by)]
    assert sorted(p.name for p in (root / "annotations").iterdir()) == sorted(
        [layout.refs_file, "instances.json"])
    records = load_records(root, layout=layout)
    assert {r.split for r in records} == set(layout.splits)
    for split in layout.splits:
        items = RefCOCOg(root, split, dataset=dataset, split_by=split_by)
        assert len(items) > 0 and {r.split for r in items.records} == {split}
    stats = split_stats(root, layout)
    assert list(stats) == list(layout.splits)
    assert sum(s["refs"] for s in stats.values()) == len(records)
    assert validate(root, layout=layout) == []


def test_layouts_of_one_seed_differ_only_in_split_names() -> None:
    umd, _, files = generate(8, seed=1)
    unc, _, unc_files = generate(8, seed=1, splits=get_layout("refcoco", "unc").splits)
    assert files == unc_files
    assert [{k: v for k, v in r.items() if k != "split"} for r in umd] == \
        [{k: v for k, v in r.items() if k != "split"} for r in unc]
    renamed = {"test": {"testA", "testB"}}
    assert all(b["split"] in renamed.get(a["split"], {a["split"]}) for a, b in zip(umd, unc,
                                                                                     strict=True))
    # The umd default is unchanged by the layout parameter: the book's dataset stays the same.
    assert generate(8, seed=1, splits=("train", "val", "test"))[0] == umd


def test_unc_needs_an_image_for_each_test_split() -> None:
    with pytest.raises(ValueError, match="at least 4 images"):
        generate(3, seed=0, splits=get_layout("refcoco", "unc").splits)


@pytest.mark.parametrize(("dataset", "split_by", "message"), [
    ("refcoco+", "google", "refcoco+ has no split-by 'google'; it has unc"),
    ("refcocog", "unc", "refcocog has no split-by 'unc'; it has umd, google"),
    ("refclef", None, "unknown dataset 'refclef'"),
])
def test_combinations_the_family_lacks_are_refused(dataset, split_by, message) -> None:
    with pytest.raises(LayoutError, match=re.escape(message)):
        get_layout(dataset, split_by)


def test_a_split_the_dataset_lacks_is_refused(roots) -> None:
    with pytest.raises(LayoutError, match="refcoco split by unc has no split 'test'; its splits "
                                          "are train, val, testA, testB"):
        RefCOCOg(roots[("refcoco", "unc")], "test", dataset="refcoco")
    with pytest.raises(LayoutError, match="no split 'testA'"):
        RefCOCOg(roots[("refcocog", "umd")], "testA")


def test_the_wrong_dataset_for_a_root_names_the_refs_file_it_holds(roots) -> None:
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p: annotation file not found .*"
                                           r"holds refs\(unc\)\.p"):
        RefCOCOg(roots[("refcoco", "unc")], "test")


def test_a_split_name_of_another_layout_in_the_refs_file_is_reported(roots, tmp_path) -> None:
    root = write_mini_dataset(tmp_path / "r", n_images=5, seed=2, layout=get_layout("refcoco"))
    refs_path = root / "annotations" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    refs[0]["split"] = "test"
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    problems = validate(root, check_images=False, layout=get_layout("refcoco"))
    assert len(problems) == 1
    assert f"{refs_path}: ref_id {refs[0]['ref_id']}: field 'split' is 'test'" in problems[0]


def test_cli_writes_checks_and_counts_a_refcoco_plus_root(tmp_path, capsys) -> None:
    root = tmp_path / "refcoco+"
    assert cli_main(["make-mini-dataset", str(root), "--images", "6", "--dataset", "refcoco+"]) == 0
    assert "refcoco+ split by unc (refs(unc).p)" in capsys.readouterr().out
    assert cli_main(["validate", "--data-root", str(root), "--dataset", "refcoco+"]) == 0
    capsys.readouterr()
    assert cli_main(["stats", "--data-root", str(root), "--dataset", "refcoco+", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"train", "val", "testA", "testB"}
    assert all(s["refs"] > 0 for s in stats.values())
    # The same root read as RefCOCOg fails with a pointer to the right options.
    assert cli_main(["validate", "--data-root", str(root)]) == 1
    assert "choose --dataset and --split-by" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["validate", "--dataset", "refcoco+", "--split-by", "google"],
    ["stats", "--dataset", "refcocog", "--split-by", "unc"],
    ["make-mini-dataset", "--dataset", "refcoco+", "--split-by", "umd"],
    ["evaluate", "--dataset", "refcoco", "--split", "test", "--method", "largest", "--clip", "",
     "--out", "never.json"],
    ["evaluate", "--dataset", "refcocog", "--split-by", "google", "--split", "test",
     "--method", "largest", "--clip", "", "--out", "never.json"],
])
def test_cli_refuses_a_bad_combination_before_reading_anything(argv, tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-root"
    if argv[0] == "make-mini-dataset":
        argv = [argv[0], str(missing), *argv[1:]]
    else:
        argv = [argv[0], "--data-root", str(missing), *argv[1:]]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "has no split" in err and "data root not found" not in err
    assert not missing.exists()


def test_evaluate_runs_on_a_refcoco_test_split_and_records_the_layout(roots, tmp_path,
                                                                     capsys) -> None:
    out = tmp_path / "r.json"
    assert cli_main(["evaluate", "--data-root", str(roots[("refcoco", "unc")]), "--dataset",
                     "refcoco", "--split", "testB", "--method", "largest", "--clip", "",
                     "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    expected = RefCOCOg(roots[("refcoco", "unc")], "testB", dataset="refcoco")
    assert results["metrics"]["n"] == len(expected)
    prov = results["provenance"]
    assert (prov["dataset"], prov["split_by"], prov["split"]) == ("refcoco", "unc", "testB")


def _chapter_namespace(**params: object) -> dict[str, object]:
    """A chapter's namespace after its typed parameters cell (what open_chapter reads)."""
    hints = {"data_root": "str", "seed": "int", "split": "str", "dataset": "str",
             "split_by": "str"}
    values = {"seed": 0, "split": "test", "dataset": "refcocog", "split_by": "", **params}
    return {"__annotations__": hints, **values}


def test_a_chapter_opens_another_dataset_of_the_family(roots) -> None:
    from refcocog_tools.report.chapter import open_chapter

    root = str(roots[("refcoco", "unc")])
    chapter = open_chapter(_chapter_namespace(data_root=root, split="testA",
                                              dataset="refcoco", split_by="unc"), models=())
    assert chapter.dataset.layout == get_layout("refcoco", "unc")
    assert {r.split for r in chapter.dataset.records} == {"testA"}
    train = chapter.open_split("train")  # red-circle's debiasing pool: same dataset, other split
    assert train.layout == chapter.dataset.layout and {r.split for r in train.records} == {"train"}
    with pytest.raises(LayoutError, match="no split 'test'"):
        _ = open_chapter(_chapter_namespace(data_root=root, dataset="refcoco"), models=()).dataset

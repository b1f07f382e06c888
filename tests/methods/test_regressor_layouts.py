"""train-regressor on the other datasets of the family: RefCOCO unc's testA end to end, a split
the layout lacks refused before any model loads, and embedding caches kept apart per layout."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from refcocog_tools.cli.main import main
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.layouts import LayoutError, get_layout
from refcocog_tools.data.minidata import write_mini_dataset
from refcocog_tools.methods.regressor.data import split_data
from refcocog_tools.methods.regressor.method import RegressorMethod, RegressorOptions
from refcocog_tools.models.split_embeddings import cache_path, data_fingerprint, split_embeddings

UNC = get_layout("refcoco", "unc")


@pytest.fixture(scope="module")
def unc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_dataset(tmp_path_factory.mktemp("unc") / "refcoco", n_images=10, seed=1,
                              layout=UNC)


@pytest.fixture(scope="module")
def two_layouts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One root holding refs(umd).p and refs(unc).p of the same seed: their val splits have the
    same images and expressions, the case where a split name alone would mix them up."""
    root = tmp_path_factory.mktemp("both") / "data"
    write_mini_dataset(root, n_images=8, seed=1)
    return write_mini_dataset(root, n_images=8, seed=1, layout=UNC)


class CountingEncoder:
    """Deterministic stand-in for CLIP (the cache logic needs none); counts its image calls."""

    name, checksum, untrained = "counting", "c" * 64, True

    def __init__(self) -> None:
        self.image_calls = 0

    def encode_images(self, images):
        self.image_calls += 1
        return torch.tensor([[float(sum(image.size)), 1.0] for image in images])

    def encode_texts(self, texts):
        return torch.tensor([[float(len(t)), 1.0] for t in texts])


def test_train_regressor_on_refcoco_unc_testa(unc_root: Path, tmp_path: Path, isolated_cache,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from refcocog_tools.models.clip_loading import load_clips

    out, cache = tmp_path / "run", tmp_path / "emb"
    assert main(["train-regressor", "--data-root", str(unc_root), "--dataset", "refcoco",
                 "--split-by", "unc", "--split", "testA", "--clip", "tiny-rn", "--epochs", "1",
                 "--embedding-cache", str(cache), "--out", str(out)]) == 0
    assert "refcoco unc testA mIoU" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    provenance = results["provenance"]
    assert (provenance["dataset"], provenance["split_by"], provenance["split"]) == (
        "refcoco", "unc", "testA")
    assert results["config"]["split"] == "testA"
    test_a = RefCOCOg(unc_root, "testA", view="expression", dataset="refcoco")
    assert results["metrics"]["n"] == len(test_a) == len(results["predictions"])
    assert {p["ref_id"] for p in results["predictions"]} == {r.ref_id for r in test_a.records}
    # The checkpoint and its config say what the head was trained on; so does the method.
    best = torch.load(out / "best.pt", weights_only=True)
    assert (best["dataset"], best["split_by"]) == ("refcoco", "unc")
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["split_by"]) == ("refcoco", "unc")
    method = RegressorMethod(load_clips("tiny-rn"), RegressorOptions(out / "best.pt"))
    assert method.config()["trained_on"] == {"dataset": "refcoco", "split_by": "unc"}
    # One embedding file per split the run read, named by the layout; testB was not read.
    names = sorted(p.name.rsplit("-", 1)[0] for p in cache.rglob("*.pt"))
    assert names == ["refcoco_unc-testA", "refcoco_unc-train", "refcoco_unc-val"]

    # The same run folder resumed as another dataset is refused, not mixed.
    capsys.readouterr()
    assert main(["train-regressor", "--data-root", str(unc_root), "--dataset", "refcoco+",
                 "--split", "testA", "--clip", "tiny-rn", "--epochs", "2", "--embedding-cache",
                 str(cache), "--out", str(out), "--resume"]) == 2
    assert "trained on refcoco split by unc, not refcoco+ split by unc" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (["--dataset", "refcoco", "--split", "test"],
     "refcoco split by unc has no split 'test'; its splits are train, val, testA, testB"),
    (["--dataset", "refcocog", "--split-by", "google", "--split", "test"],
     "refcocog split by google has no split 'test'; its splits are train, val"),
    (["--dataset", "refcoco+", "--split-by", "google"], "refcoco+ has no split-by 'google'"),
])
def test_a_split_the_layout_lacks_fails_before_anything_loads(
        unc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], options: list[str], message: str) -> None:
    import refcocog_tools.cli.train_regressor

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(refcocog_tools.cli.train_regressor, "load_clips", no_model)
    out, cache = tmp_path / "run", tmp_path / "emb"
    assert main(["train-regressor", "--data-root", str(unc_root), *options, "--embedding-cache",
                 str(cache), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not cache.exists()


def test_split_data_takes_the_layout(unc_root: Path, tmp_path: Path) -> None:
    encoder = CountingEncoder()
    data = split_data(unc_root, "testB", [encoder], tmp_path, layout=UNC)
    test_b = RefCOCOg(unc_root, "testB", view="expression", dataset="refcoco")
    assert [r["sent_id"] for r in data.rows] == [item.sent_id for item in test_b]
    with pytest.raises(LayoutError, match="its splits are train, val, testA, testB"):
        split_data(unc_root, "test", [encoder], tmp_path, layout=UNC)


def test_the_cache_keeps_layouts_apart(two_layouts_root: Path, tmp_path: Path) -> None:
    umd_val = RefCOCOg(two_layouts_root, "val")
    unc_val = RefCOCOg(two_layouts_root, "val", dataset="refcoco")
    # Same images and expressions under the same split name ...
    assert umd_val.image_ids == unc_val.image_ids and umd_val.sentences() == unc_val.sentences()
    # ... but neither the fingerprint nor the file is shared.
    assert data_fingerprint(umd_val) != data_fingerprint(unc_val)
    encoder = CountingEncoder()
    assert cache_path(encoder, umd_val, tmp_path) != cache_path(encoder, unc_val, tmp_path)
    split_embeddings(umd_val, encoder, cache_root=tmp_path)
    split_embeddings(unc_val, encoder, cache_root=tmp_path)
    assert encoder.image_calls == 2  # the second layout did not reuse the first's file
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    # A file of one layout handed over as the other's is recomputed, never trusted.
    shared = tmp_path / "shared.pt"
    split_embeddings(umd_val, encoder, path=shared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split_embeddings(unc_val, encoder, path=shared)
    assert any("computed from other data" in str(w.message) for w in caught)
    assert encoder.image_calls == 4

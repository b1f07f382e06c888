"""Red-circle as the study defined it: per-ref debiasing, the study's sampling, its N = 0 case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
from refcocog_tools.methods.red_circle import (
    RedCircle,
    RedCircleOptions,
    debias_explicit,
    debias_prompt_pool,
    sample_debias_sentences,
)
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.proposers import GroundTruthProposer


@pytest.fixture(scope="module")
def train_expressions(mini_data) -> list[str]:
    return RefCOCOg(mini_data, "train").sentences()


@pytest.fixture(scope="module")
def shared_image(test_split) -> list:
    """The items of an image with at least two refs, one of them with several expressions."""
    for items in group_by_image(test_split):
        refs = {it.ref_id for it in items}
        if len(refs) >= 2 and len(items) > len(refs):
            return items
    pytest.skip("the embedded test split has no image with two refs")


def test_debias_sample_is_default_rng_choice_over_the_documented_pool(mini_data,
                                                                      train_expressions) -> None:
    # The documented pool: "This is " + every training expression in file order.
    records = RefCOCOg(mini_data, "train").records
    pool = ["This is " + s for r in records for s in r.sentences]
    assert debias_prompt_pool(train_expressions) == pool
    for n, seed in ((7, 0), (3 * len(pool), 42)):  # with replacement, below and above the pool
        expected = [str(x) for x in np.random.default_rng(seed).choice(pool, n)]
        assert sample_debias_sentences(pool, n, seed) == expected
    with pytest.raises(ValueError, match="pool is empty"):
        sample_debias_sentences([], 5, 0)


def test_method_draws_the_same_sample(tiny_rn, train_expressions) -> None:
    method = RedCircle([tiny_rn], train_expressions, EmbeddingCache(),
                       RedCircleOptions(n_debias=25), debias_seed=42)
    pool = ["This is " + s for s in train_expressions]
    assert method.debias_sentences == list(np.random.default_rng(42).choice(pool, 25))
    assert "default_rng(42)" in method.config()["debias"]


@pytest.mark.parametrize("batch_size", [None, 4])
@pytest.mark.parametrize("n_debias, at_zero", [(0, "own-prompts"), (3, "none")])
def test_an_expression_gets_the_same_answer_alone_or_with_its_image(
        shared_image, tiny_rn, train_expressions, batch_size, n_debias, at_zero) -> None:
    """Evaluated with its image's other refs or with its own ref alone: same rows."""
    method = RedCircle([tiny_rn], train_expressions, EmbeddingCache(),
                       RedCircleOptions(n_debias=n_debias, debias_at_zero=at_zero))
    together = evaluate_groups([shared_image], method, GroundTruthProposer(),
                               batch_size=batch_size)
    for ref_id in {it.ref_id for it in shared_image}:
        alone = evaluate_groups([[it for it in shared_image if it.ref_id == ref_id]], method,
                                GroundTruthProposer(), batch_size=batch_size)
        assert alone == [row for row in together if row["ref_id"] == ref_id]
    assert [row["sent_id"] for row in together] == [it.sent_id for it in shared_image]


def test_the_per_image_mean_would_differ(shared_image, tiny_rn, train_expressions) -> None:
    """The property above is not vacuous: one column mean over the whole image's expressions
    (the old grouping) changes the scores of a ref."""
    method = RedCircle([tiny_rn], train_expressions, EmbeddingCache(),
                       RedCircleOptions(n_debias=0, debias_at_zero="own-prompts"))
    image, proposals = shared_image[0].image, GroundTruthProposer()(shared_image[0])
    first = shared_image[0].ref_id
    own = [it.sentence for it in shared_image if it.ref_id == first]
    mixed = method.scores(image, [it.sentence for it in shared_image], proposals)[0]
    alone = method.scores(image, own, proposals)[0]
    assert not torch.allclose(mixed[: len(own)], alone)


def test_n_debias_zero_skips_or_applies_the_study_formula(test_split, tiny_rn) -> None:
    item = test_split[0]
    own = [it.sentence for it in test_split if it.ref_id == item.ref_id]
    proposals = GroundTruthProposer()(item)
    none = RedCircle([tiny_rn], (), None, RedCircleOptions(render_backend="pil", n_debias=0))
    study = RedCircle([tiny_rn], (), None,
                      RedCircleOptions(render_backend="pil", n_debias=0,
                                       debias_at_zero="own-prompts"))
    text = tiny_rn.encode_texts(["This is " + e for e in own])
    visual = tiny_rn.encode_images(none.render(item.image, proposals.boxes))
    raw = (text @ visual.T).reshape(len(own), len(proposals), 2)
    torch.testing.assert_close(none.scores(item.image, own, proposals)[0],
                               raw.max(-1).values, atol=1e-5, rtol=1e-4)
    explicit = debias_explicit(text @ visual.T, len(own)).reshape(len(own), len(proposals), 2)
    torch.testing.assert_close(study.scores(item.image, own, proposals)[0],
                               explicit.max(-1).values, atol=1e-5, rtol=1e-4)
    assert none.config()["debias"].startswith("none")
    assert study.config()["debias"].startswith("per referred object")


def test_variant_fusion_mean(test_split, tiny_rn) -> None:
    item = test_split[0]
    proposals = GroundTruthProposer()(item)
    by_max = RedCircle([tiny_rn], (), None, RedCircleOptions(render_backend="pil", n_debias=0))
    by_mean = RedCircle([tiny_rn], (), None,
                        RedCircleOptions(render_backend="pil", n_debias=0,
                                         variant_fusion="mean"))
    text = tiny_rn.encode_texts(["This is " + item.sentence])
    visual = tiny_rn.encode_images(by_max.render(item.image, proposals.boxes))
    raw = (text @ visual.T).reshape(1, len(proposals), 2)
    torch.testing.assert_close(by_mean.scores(item.image, [item.sentence], proposals)[0],
                               raw.mean(-1), atol=1e-5, rtol=1e-4)
    assert by_mean.config()["variant_fusion"] == "mean"
    with pytest.raises(ValueError, match="variant_fusion"):
        RedCircle([tiny_rn], (), None,
                  RedCircleOptions(render_backend="pil", n_debias=0,
                                   variant_fusion="median"))


@pytest.fixture
def predict_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every keyword set Ultralytics' ``Model.predict`` receives (the real call still runs)."""
    from ultralytics.engine.model import Model

    calls: list[dict] = []
    real = Model.predict

    def spy(self, source=None, stream=False, predictor=None, **kwargs):
        calls.append(dict(kwargs))
        return real(self, source, stream, predictor, **kwargs)

    monkeypatch.setattr(Model, "predict", spy)
    return calls


def test_detector_defaults_are_the_studys(session_cache, test_split, predict_calls) -> None:
    from refcocog_tools.proposals.proposers import make_proposer, study_detector_settings

    assert study_detector_settings("yolov8s") == {"conf": 0.25, "iou": 0.7, "max_det": 300}
    assert study_detector_settings("yolov5su.pt") == {"conf": 0.25, "iou": 0.45,
                                                      "max_det": 1000}
    proposer = make_proposer("yolo", cache=session_cache)
    proposer(test_split[0])
    assert {k: predict_calls[-1][k] for k in ("conf", "iou", "max_det")} == {
        "conf": 0.25, "iou": 0.7, "max_det": 300}
    with pytest.raises(ValueError, match="out of range"):
        make_proposer("yolo", cache=session_cache, iou=1.5)


def test_detector_flags_reach_ultralytics_and_the_results_file(
        tmp_path, mini_data, isolated_cache, predict_calls, capsys) -> None:
    import json

    from refcocog_tools.cli.main import main as cli_main

    out = tmp_path / "r.json"
    code = cli_main(["evaluate", "--data-root", str(mini_data), "--method", "largest",
                     "--proposals", "tiny-yolov8s", "--conf", "0.4", "--iou", "0.55",
                     "--max-det", "7", "--limit", "2", "--quiet", "--out", str(out)])
    assert code == 0
    assert predict_calls and all(
        (c["conf"], c["iou"], c["max_det"]) == (0.4, 0.55, 7) for c in predict_calls)
    config = json.loads(out.read_text())["config"]["proposals"]
    assert (config["conf"], config["iou"], config["max_det"]) == (0.4, 0.55, 7)
    printed = capsys.readouterr().out
    assert "ground-truth boxes" not in printed  # a detector ran, not the annotations
    with pytest.raises(SystemExit, match="--iou: detector settings"):
        cli_main(["evaluate", "--data-root", str(mini_data), "--method", "largest",
                  "--proposals", "gt", "--iou", "0.5", "--out", str(tmp_path / "x.json")])


def test_raw_embeddings_and_last_checkpoint_are_the_studys_regressor_setting(
        mini_data, tmp_path, tiny_rn, capsys) -> None:
    """--raw-embeddings feeds CLIP's unnormalised outputs (kept in their own cache file) and
    --regressor-checkpoint last evaluates the last epoch's weights, written as final.pt."""
    import json

    from refcocog_tools.cli.main import main as cli_main
    from refcocog_tools.methods.regressor.data import split_data
    from refcocog_tools.methods.regressor.method import RegressorMethod, RegressorOptions

    emb = tmp_path / "emb"
    out = tmp_path / "run"
    assert cli_main(["train-regressor", "--data-root", str(mini_data), "--clip", "tiny-rn",
                     "--epochs", "3", "--raw-embeddings", "--regressor-checkpoint", "last",
                     "--embedding-cache", str(emb), "--out", str(out)]) == 0
    assert "test mIoU of epoch 3 (last)" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["raw_embeddings"] is True
    assert results["config"]["evaluated_checkpoint"] == "last"
    assert results["config"]["checkpoint"].endswith("final.pt")
    assert sorted(p.name.endswith("-raw.pt") for p in emb.rglob("*.pt")) == [True] * 3

    raw = split_data(mini_data, "test", [tiny_rn], emb, raw=True)
    normalised = split_data(mini_data, "test", [tiny_rn], tmp_path / "emb-n")
    norms = raw.text_embeddings.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # really raw
    torch.testing.assert_close(torch.nn.functional.normalize(raw.text_embeddings, dim=1),
                               normalised.text_embeddings, atol=1e-5, rtol=1e-4)

    # The method reads the flag from the checkpoint and feeds raw embeddings too.
    method = RegressorMethod([tiny_rn], RegressorOptions(out / "final.pt"))
    assert method.config()["raw_embeddings"] is True and method.best_epoch == 3
    item = RefCOCOg(mini_data, "test")[0]
    rows = [p for p in results["predictions"] if p["sent_id"] == item.sent_id]
    predicted = method.predict(item.image, [item.sentence]).boxes[0].tolist()
    assert predicted == pytest.approx(rows[0]["box"], abs=1e-2)

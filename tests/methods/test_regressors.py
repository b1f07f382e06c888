"""Regression heads, losses, training, checkpoints, the embedding cache and train-regressor."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from refcocog_tools.data.dataset import RefCOCOg, load_rgb_image
from refcocog_tools.data.minidata import write_mini_dataset
from refcocog_tools.engine.metrics import summarize
from refcocog_tools.engine.uncertainty import summary as interval_summary
from refcocog_tools.methods.regressor.data import RegressionData, split_data
from refcocog_tools.methods.regressor.heads import (
    BoxLoss,
    decode_boxes,
    iou_loss,
    make_head,
    plain_iou_loss,
    study_iou_loss_with_corner_bug,
)
from refcocog_tools.methods.regressor.history import plot_history
from refcocog_tools.methods.regressor.method import RegressorMethod, RegressorOptions
from refcocog_tools.methods.regressor.training import (
    TrainConfig,
    evaluate_head,
    load_checkpoint,
    predict_boxes,
    train_regressor,
)
from refcocog_tools.models.embedding_files import EmbeddingCacheError
from refcocog_tools.models.split_embeddings import cache_path, load_cache, split_embeddings

SIZE = (320.0, 240.0)


def synthetic(n: int, dim: int, seed: int) -> RegressionData:
    """Random embeddings; boxes a fixed linear function of them (same W for every seed)."""
    weights = torch.randn(2 * dim, 4, generator=torch.Generator().manual_seed(1234)) / (
        2 * dim) ** 0.5
    gen = torch.Generator().manual_seed(seed)
    image, text = torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen)
    z = torch.cat([image, text], 1) @ weights
    cx, cy = 0.5 + 0.15 * z[:, 0], 0.5 + 0.15 * z[:, 1]
    w, h = (0.35 + 0.08 * z[:, 2]).clamp(min=0.05), (0.35 + 0.08 * z[:, 3]).clamp(min=0.05)
    norm = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, 1)
    sizes = torch.tensor([SIZE]).expand(n, 2)
    return RegressionData.from_features(image, text, norm * torch.tensor(SIZE * 2), sizes)


def random_boxes(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 60 + 1
    return torch.cat([xy, xy + wh], 1)


# ----------------------------------------------------------------------------------------------
# Heads and losses
# ----------------------------------------------------------------------------------------------
def test_head_widths_follow_embedding_size() -> None:
    d = 64
    bottleneck = make_head("bottleneck", d)
    large = make_head("large", d)
    assert isinstance(bottleneck, nn.Sequential)
    assert [(m.in_features, m.out_features) for m in bottleneck if isinstance(m, nn.Linear)] == [
        (128, 64), (64, 32), (32, 128), (128, 4)]
    assert [(m.in_features, m.out_features) for m in large if isinstance(m, nn.Linear)] == [
        (128, 256), (256, 128), (128, 64), (64, 32), (32, 8), (8, 4)]
    assert not any(isinstance(m, nn.Dropout) for m in bottleneck)
    dropouts = [m for m in large if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 5 and all(m.p == 0.5 for m in dropouts)
    assert sum(isinstance(m, nn.ReLU) for m in large) == 5
    assert bottleneck(torch.randn(3, 2 * d)).shape == (3, 4)
    with pytest.raises(ValueError, match="head"):
        make_head("huge", d)


def test_decoded_boxes_are_always_valid() -> None:
    raw = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0)) * 50
    boxes = decode_boxes(raw)
    # Very negative width logits underflow to zero width: valid (x2 >= x1), never inverted.
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    moderate = decode_boxes(raw / 50)
    assert (moderate[:, 2] > moderate[:, 0]).all() and (moderate[:, 3] > moderate[:, 1]).all()


def test_iou_loss_is_one_minus_torchvision_iou_unlike_the_study() -> None:
    pred, target = random_boxes(500, 1), random_boxes(500, 2)
    expected = 1 - box_iou(pred, target).diagonal()
    assert (expected < 1).sum() > 50  # enough partial overlaps for the comparison to bite
    assert torch.allclose(plain_iou_loss(pred, target), expected, atol=1e-6)
    assert torch.allclose(iou_loss(pred, target, "iou"), expected.mean(), atol=1e-6)

    # The study's version took max() for the intersection's far corner; for partly overlapping
    # boxes it disagrees with the true IoU, which is what the fix is about.
    study = study_iou_loss_with_corner_bug(pred, target)
    assert (study - expected).abs().max() > 0.1
    # Concretely: two 10x10 boxes sharing only their top-left corner region overlap by 25 px^2
    # (IoU 25/175); the study's max() corner makes the "intersection" the 10x10 area spanned
    # from the near corner to the farther box's far corner, i.e. as large as a whole box.
    a, b = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    assert float(1 - plain_iou_loss(a, b)) == pytest.approx(25 / 175, abs=1e-6)
    assert float(1 - study_iou_loss_with_corner_bug(a, b)) == pytest.approx(100 / 100, abs=1e-6)

    # GIoU (the default) is 1 - IoU when the enclosing box is the union (nested boxes), and
    # larger than 1 for disjoint boxes, where plain IoU has no gradient.
    outer = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    inner = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    assert torch.allclose(iou_loss(inner, outer, "giou"), plain_iou_loss(inner, outer).mean())
    far = torch.tensor([[200.0, 200.0, 240.0, 260.0]], requires_grad=True)
    loss = iou_loss(far, outer, "giou")
    assert float(loss.detach()) > 1
    loss.backward()
    assert far.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["iou", "giou", "diou", "ciou"])
def test_iou_variants_are_zero_for_perfect_boxes(variant: str) -> None:
    boxes = random_boxes(20, 3)
    assert float(iou_loss(boxes, boxes, variant)) == pytest.approx(0.0, abs=1e-5)
    assert float(iou_loss(boxes, boxes + 30, variant)) > 0.1


def test_mix_loss_is_the_weighted_sum() -> None:
    pred, target = random_boxes(50, 4), random_boxes(50, 5)
    mse = BoxLoss("mse")(pred, target)
    iou = BoxLoss("iou", "diou")(pred, target)
    assert torch.allclose(BoxLoss("mix", "diou")(pred, target), 0.7 * mse + 1.0 * iou)
    with pytest.raises(ValueError, match="loss"):
        BoxLoss("l1")


# ----------------------------------------------------------------------------------------------
# Training on a synthetic mapping
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "iou", "mix"])
def test_head_learns_a_linear_mapping(loss: str) -> None:
    train, val = synthetic(512, 32, seed=0), synthetic(128, 32, seed=1)
    config = TrainConfig(head="bottleneck", loss=loss, epochs=25, lr=3e-3, batch_size=32,
                         normalize_targets=True, seed=0)
    result = train_regressor(train, val, config)
    history = result.history
    assert len(history) == 25
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["train_miou"] > 0.5
    assert result.best_val_miou > 0.5
    assert result.best_val_miou == max(h["val_miou"] for h in history)
    _, ious, _ = evaluate_head(result.head, val, config)
    assert float(ious.mean()) == pytest.approx(result.best_val_miou)


def test_large_head_with_dropout_and_pixel_targets_learns() -> None:
    # The large head's d/8-wide layer under dropout 0.5 learns slowly: check that it does learn.
    train, val = synthetic(512, 64, seed=0), synthetic(128, 64, seed=1)
    config = TrainConfig(head="large", loss="mse", epochs=12, lr=1e-3, batch_size=32, seed=0)
    history = train_regressor(train, val, config).history
    assert not config.normalize_targets
    assert history[0]["train_loss"] > 1000  # pixel MSE, as in the study
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < 0.6 * history[0]["val_loss"]
    assert max(h["val_miou"] for h in history) > history[0]["val_miou"] + 0.03


def test_training_is_seeded() -> None:
    train, val = synthetic(128, 16, seed=0), synthetic(32, 16, seed=1)
    config = TrainConfig(head="large", epochs=2, batch_size=16, normalize_targets=True)
    torch.manual_seed(1)
    first = train_regressor(train, val, config).history
    torch.manual_seed(2)  # the global RNG state must not matter
    assert train_regressor(train, val, config).history == first
    other = TrainConfig(head="large", epochs=2, batch_size=16, normalize_targets=True, seed=1)
    assert train_regressor(train, val, other).history != first


def test_outputs_and_checkpoint_round_trip(tmp_path: Path) -> None:
    train, val = synthetic(128, 16, seed=0), synthetic(32, 16, seed=1)
    config = TrainConfig(head="bottleneck", loss="mix", epochs=3, batch_size=16,
                         normalize_targets=True)
    result = train_regressor(train, val, config, out_dir=tmp_path)
    for name in ("history.json", "curves.png", "best.pt", "last.pt", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "history.json").read_text()) == result.history
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    head, payload = load_checkpoint(tmp_path / "best.pt")
    assert payload["epoch"] == result.best_epoch
    assert TrainConfig.from_dict(payload["config"]) == config
    assert torch.equal(predict_boxes(head, val, True), predict_boxes(result.head, val, True))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_plot_history_has_loss_and_iou_panels() -> None:
    history = [{"epoch": e, "train_loss": 10.0 / e, "val_loss": 12.0 / e,
                "train_miou": 0.1 * e, "val_miou": 0.05 * e} for e in range(1, 5)]
    fig = plot_history(history)
    assert len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    assert list(fig.axes[1].lines[1].get_ydata()) == [0.05 * e for e in range(1, 5)]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    train, val = synthetic(96, 16, seed=0), synthetic(32, 16, seed=1)

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(head="large", loss="mix", epochs=epochs, batch_size=16,
                           normalize_targets=True, seed=3)

    straight = train_regressor(train, val, config(4), out_dir=tmp_path / "straight")
    first = train_regressor(train, val, config(2), out_dir=tmp_path / "split")
    assert len(first.history) == 2
    messages: list[str] = []
    torch.manual_seed(987)  # a new process has another global RNG state: it must not matter
    resumed = train_regressor(train, val, config(4), out_dir=tmp_path / "split", resume=True,
                              log=messages.append)
    assert any("after epoch 2" in m for m in messages)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    assert resumed.history == straight.history
    assert resumed.best_epoch == straight.best_epoch
    last_split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    last_straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert last_split["epoch"] == 4
    for key, value in last_straight["state_dict"].items():
        assert torch.equal(last_split["state_dict"][key], value), key

    with pytest.raises(ValueError, match="lr"):
        train_regressor(train, val, TrainConfig(head="large", loss="mix", epochs=5, lr=0.5,
                                                batch_size=16, normalize_targets=True, seed=3),
                        out_dir=tmp_path / "split", resume=True)


# ----------------------------------------------------------------------------------------------
# Embedding cache (a fake encoder: the cache logic does not need CLIP)
# ----------------------------------------------------------------------------------------------
class FakeEncoder:
    """Deterministic 'embeddings' from mean colour and text length; counts calls."""

    def __init__(self, name: str = "fake", checksum: str = "a" * 64) -> None:
        self.name, self.checksum, self.untrained = name, checksum, True
        self.image_calls = self.text_calls = 0

    def encode_images(self, images):
        self.image_calls += 1
        out = []
        for image in images:
            pixels = torch.tensor(list(image.resize((4, 4)).tobytes()), dtype=torch.float32)
            mean = pixels.view(-1, 3).mean(0)
            out.append(torch.cat([mean, torch.tensor([*image.size, 1.0, 2.0, 3.0])]))
        return torch.nn.functional.normalize(torch.stack(out).repeat(1, 2), dim=1)

    def encode_texts(self, texts):
        self.text_calls += 1
        rows = [[len(t), t.count(" "), sum(map(ord, t)) % 97, 1.0] * 4 for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_dataset(tmp_path_factory.mktemp("mini") / "data", n_images=12, seed=0)


def test_cache_is_computed_once_and_reused(mini_root: Path, tmp_path: Path) -> None:
    dataset = RefCOCOg(mini_root, split="train")
    encoder = FakeEncoder()
    first = split_embeddings(dataset, encoder, cache_root=tmp_path)
    path = cache_path(encoder, dataset, tmp_path)
    assert path.is_file() and path.parent.name == encoder.checksum[:16]
    assert first.image_ids == dataset.image_ids
    assert len(first.sentences) == len(set(dataset.sentences()))
    calls = (encoder.image_calls, encoder.text_calls)
    again = split_embeddings(dataset, encoder, cache_root=tmp_path)
    assert (encoder.image_calls, encoder.text_calls) == calls  # nothing re-encoded
    assert torch.equal(again.image_embeddings, first.image_embeddings)
    assert torch.equal(again.text_embeddings, first.text_embeddings)
    stored = torch.load(path, weights_only=True)
    assert stored["backbone_checksum"] == encoder.checksum

    data = RegressionData.from_dataset(dataset, [first, first])
    assert len(data) == len(dataset) and data.embed_dim == 2 * first.embed_dim
    item = dataset[5]
    assert data.rows[5]["sentence"] == item.sentence
    assert torch.equal(data.boxes[5], torch.tensor(item.box))
    row = first.image_ids.index(item.image_id)
    assert torch.equal(data.features(torch.tensor([5]))[0, :first.embed_dim],
                       first.image_embeddings[row])


def test_cache_of_another_backbone_is_refused(mini_root: Path, tmp_path: Path) -> None:
    dataset = RefCOCOg(mini_root, split="val")
    path = tmp_path / "shared.pt"
    split_embeddings(dataset, FakeEncoder("rn-a", "a" * 64), path=path)
    with pytest.raises(EmbeddingCacheError, match="rn-a.*another space"):
        split_embeddings(dataset, FakeEncoder("rn-b", "b" * 64), path=path)
    with pytest.raises(EmbeddingCacheError):
        load_cache(path, FakeEncoder("rn-b", "b" * 64))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_layout"])
def test_corrupt_cache_is_recomputed(mini_root: Path, tmp_path: Path, damage: str) -> None:
    dataset = RefCOCOg(mini_root, split="val")
    encoder = FakeEncoder()
    good = split_embeddings(dataset, encoder, cache_root=tmp_path)
    path = cache_path(encoder, dataset, tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    else:
        torch.save({"format": "refcocog-tools-embeddings/1", "backbone_checksum": "a" * 64,
                    "image_embeddings": torch.zeros(1, 3)}, path)
    calls = encoder.image_calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = split_embeddings(dataset, encoder, cache_root=tmp_path)
    assert any("recomputing" in str(w.message) for w in caught)
    assert encoder.image_calls > calls
    assert torch.equal(again.image_embeddings, good.image_embeddings)
    assert load_cache(path, encoder) is not None  # rewritten whole


def test_method_refuses_other_backbones(tmp_path: Path) -> None:
    train, val = synthetic(64, 16, seed=0), synthetic(16, 16, seed=1)
    clip = [{"name": "fake", "checksum": "a" * 64, "untrained": True}]
    train_regressor(train, val, TrainConfig(epochs=1), out_dir=tmp_path, clip=clip)
    with pytest.raises(ValueError, match="checksums differ"):
        RegressorMethod([FakeEncoder("other", "b" * 64)], RegressorOptions(tmp_path / "best.pt"))


# ----------------------------------------------------------------------------------------------
# End to end: the CLI on the embedded dataset with tiny-rn, and the method on the same checkpoint
# ----------------------------------------------------------------------------------------------
def test_train_regressor_cli_end_to_end(mini_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from refcocog_tools.cli.main import main
    from refcocog_tools.models.clip_loading import load_clips

    out = tmp_path / "run"
    argv = ["train-regressor", "--data-root", str(mini_root), "--clip", "tiny-rn",
            "--head", "large", "--loss", "mix", "--epochs", "2", "--normalize-targets",
            "--embedding-cache", str(tmp_path / "emb"), "--out", str(out)]
    assert main(argv) == 0
    assert "[untrained weights, synthetic data: not a RefCOCOg result]" in capsys.readouterr().out
    for name in ("history.json", "curves.png", "best.pt", "last.pt", "config.json",
                 "results.json"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert len(list((tmp_path / "emb").rglob("*.pt"))) == 3  # train, val, test

    results = json.loads((out / "results.json").read_text())
    test = RefCOCOg(mini_root, split="test")
    assert results["metrics"]["n"] == len(test) == len(results["predictions"])
    assert 0 <= results["metrics"]["miou"] <= 1
    # The same metrics, computed the same way, as every other method's results file.
    assert results["metrics"] == {**summarize(results["predictions"]),
                                  "intervals": interval_summary(results["predictions"])}
    assert set(results["metrics"]) == {"n", "miou", "accuracy", "cosine", "by_spatial",
                                       "by_category", "intervals"}
    assert results["metrics"]["cosine"] is None
    categories = {r["category"] for r in results["predictions"]}
    assert set(results["metrics"]["by_category"]) == categories and None not in categories
    assert results["training"]["best_epoch"] in (1, 2)
    assert results["provenance"]["proposals"]["name"] == "none"
    # first(n) keeps the first n samples, in order, with their rows.
    data = split_data(mini_root, "test", load_clips("tiny-rn"), tmp_path / "emb")
    head = data.first(5)
    assert len(head) == 5 and head.rows == data.rows[:5]
    assert torch.equal(head.features(torch.arange(5)), data.features(torch.arange(5)))
    assert data.first(0) is data
    provenance = results["provenance"]
    assert provenance["synthetic_data"] is True and provenance["untrained"] is True
    assert (provenance["dataset"], provenance["split_by"], provenance["split"]) == (
        "refcocog", "umd", "test")  # the defaults: RefCOCOg umd, its test split
    assert provenance["clip"][0]["name"] == "tiny-rn"
    assert results["config"]["head"] == "large" and results["config"]["epochs"] == 2
    first = results["predictions"][0]
    assert set(first) >= {"ref_id", "sent_id", "image_id", "box", "iou", "sentence"}

    # Resuming a finished run trains nothing more and keeps the history.
    assert main(argv + ["--resume"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 2
    # Resuming with another configuration is refused with a clear error, not a traceback.
    changed = [a if a != "large" else "bottleneck" for a in argv]
    assert main(changed + ["--resume"]) == 2
    assert "configuration changed" in capsys.readouterr().err

    # The grounding method on the same checkpoint gives the same boxes for a test image.
    method = RegressorMethod(load_clips("tiny-rn"), RegressorOptions(out / "best.pt"))
    assert method.name == "regressor" and method.config()["head"] == "large"
    item = test[0]
    rows = [p for p in results["predictions"] if p["image_id"] == item.image_id]
    image = load_rgb_image(item.image_path)
    prediction = method.predict(image, [r["sentence"] for r in rows], proposals=None)
    assert prediction.boxes.shape == (len(rows), 4)
    assert prediction.chosen.tolist() == [-1] * len(rows)
    assert prediction.scores.shape == (len(rows), 0)
    assert torch.allclose(prediction.boxes, torch.tensor([r["box"] for r in rows]), atol=0.05)
    w, h = image.size
    assert (prediction.boxes[:, 0::2] <= w).all() and (prediction.boxes[:, 1::2] <= h).all()
    assert (prediction.boxes >= 0).all()

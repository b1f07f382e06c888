"""Byte-identical results whatever ``--batch-size`` and ``--workers`` are, for every method.

Which inputs share an encoder batch depends on those settings, and CPU and GPU kernels sum in
an order chosen by the batch's shape; the prompt cache and the engine therefore encode in
forward passes of a fixed number of inputs (``ClipBackbone.fixed_batch``, the last one
padded). These tests evaluate every registered method on the embedded test split under three
settings and compare the results documents, metrics and every prediction included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.engine.evaluate import evaluate
from refcocog_tools.methods.registry import METHODS, make_method
from refcocog_tools.methods.regressor.data import RegressionData
from refcocog_tools.methods.regressor.method import RegressorOptions
from refcocog_tools.methods.regressor.training import TrainConfig, train_regressor
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.proposers import GroundTruthProposer

# (workers, batch size): the default, tiny batches drawn in two workers, and an odd batch
# whose last forward pass would otherwise hold a single input.
SETTINGS = [(0, 64), (2, 2), (0, 3)]


@pytest.fixture(scope="module")
def toy_rn(session_cache: Path):
    """The toy CLIP: on the embedded test split, before fixed-shape forward passes, its
    Grad-CAM crop cosines moved with the batch size (tiny-rn's: colour-overlay's only)."""
    from refcocog_tools.models.clip_loading import load_clip

    return load_clip("toy-rn", cache=session_cache)


@pytest.fixture(scope="module")
def regressor_checkpoint(tmp_path_factory: pytest.TempPathFactory, toy_rn) -> Path:
    """A head trained for one epoch on random features of toy-rn's width: what its boxes
    are worth does not matter here, only that the method runs on toy-rn's embeddings."""
    dim = toy_rn.embed_dim
    generator = torch.Generator().manual_seed(0)

    def data(n: int) -> RegressionData:
        corner = torch.rand(n, 2, generator=generator) * 100
        boxes = torch.cat([corner, corner + 20 + torch.rand(n, 2, generator=generator) * 80],
                          dim=1)
        return RegressionData.from_features(
            torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator),
            boxes, torch.tensor([[320.0, 240.0]]).expand(n, 2))

    out = tmp_path_factory.mktemp("regressor")
    clip = [{"name": toy_rn.name, "checksum": toy_rn.checksum, "untrained": True}]
    train_regressor(data(32), data(8), TrainConfig(epochs=1, batch_size=16), out_dir=out,
                    clip=clip)
    return out / "best.pt"


def _without_timing(document: dict[str, Any]) -> str:
    """The results document as JSON text, less its timing (seconds, workers, batch size)."""
    return json.dumps({k: v for k, v in document.items() if k != "timing"}, sort_keys=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_the_same_document_for_any_batch_size_and_workers(
        name: str, mini_data: Path, toy_rn, regressor_checkpoint: Path) -> None:
    dataset = RefCOCOg(mini_data, "test")
    pool = RefCOCOg(mini_data, "train").sentences()
    settings = {"options": RegressorOptions(regressor_checkpoint)} if name == "regressor" else {}
    documents = []
    for workers, batch_size in SETTINGS:
        # A fresh memory cache each time: nothing encoded under one setting serves another.
        method = make_method(name, [toy_rn], cache=EmbeddingCache(), debias_pool=pool,
                             **settings)
        documents.append(evaluate(dataset, method, GroundTruthProposer(), [toy_rn],
                                  workers=workers, batch_size=batch_size))
    reference = documents[0]
    assert reference["metrics"]["cosine"] is not None  # the crop-cosine metric ran
    assert len(reference["predictions"]) == len(dataset)
    for (workers, batch_size), document in zip(SETTINGS[1:], documents[1:], strict=True):
        assert document["timing"]["batch_size"] == batch_size  # the setting did change
        assert document["timing"]["workers"] == workers
        assert _without_timing(document) == _without_timing(reference), (workers, batch_size)


def test_an_embedding_does_not_depend_on_the_other_inputs_of_its_call(toy_rn) -> None:
    """The same input alone, in a short call and in a long one: the same bits, image and
    text, in forward passes of ``fixed_batch`` inputs (one, a few and several passes)."""
    rows = toy_rn.fixed_batch
    side = toy_rn.input_resolution
    inputs = torch.randn(2 * rows + 3, 3, side, side, generator=torch.Generator().manual_seed(1))
    everything = toy_rn.encode_images(inputs, rows, pad_last=True)
    assert everything.shape == (len(inputs), toy_rn.embed_dim)
    for count in (1, 3, rows + 1):
        assert torch.equal(toy_rn.encode_images(inputs[-count:], rows, pad_last=True),
                           everything[-count:]), count
    texts = [f"the {colour} box on the left, number {i}" for i, colour in
             enumerate(["red", "green", "blue"] * rows)]
    every_text = toy_rn.encode_texts(texts, rows, pad_last=True)
    for count in (1, 2, rows + 2):
        assert torch.equal(toy_rn.encode_texts(texts[:count], rows, pad_last=True),
                           every_text[:count]), count

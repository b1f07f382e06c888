"""Proposals: the container, ground-truth boxes, and the offline YOLO proposer."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

from refcocog_tools.core.files import sha256_file
from refcocog_tools.data.dataset import RefCOCOg, RefItem
from refcocog_tools.data.minidata import write_mini_dataset
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.untrained_models import EMBEDDED_YOLO
from refcocog_tools.models.yolo_models import load_yolo, yolo_untrained
from refcocog_tools.proposals.proposers import (
    GroundTruthProposer,
    Proposals,
    Proposer,
    YoloProposer,
    make_proposer,
)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> RefCOCOg:
    root = write_mini_dataset(tmp_path_factory.mktemp("data"), n_images=8, seed=0)
    return RefCOCOg(root, split="train", view="ref")


def _without_instances(item: RefItem) -> RefItem:
    record = dataclasses.replace(item.record, instances=())
    return RefItem(record, item.sentences, item.sent_ids)


def test_proposals_container():
    whole = Proposals.whole_image((320, 240))
    assert len(whole) == 1
    assert whole.boxes.dtype == torch.float32
    assert whole.boxes.tolist() == [[0.0, 0.0, 320.0, 240.0]]
    assert whole.labels == [None] and whole.scores is None
    with pytest.raises(ValueError, match="at least one box"):
        Proposals(torch.zeros(0, 4), [])
    with pytest.raises(ValueError, match="labels"):
        Proposals(torch.zeros(2, 4), ["a"])
    with pytest.raises(ValueError, match="scores"):
        Proposals(torch.zeros(2, 4), ["a", "b"], torch.ones(3))


def test_ground_truth_proposer(dataset):
    proposer = make_proposer("gt")
    assert isinstance(proposer, GroundTruthProposer) and isinstance(proposer, Proposer)
    assert proposer.name == "gt" and proposer.untrained is False and proposer.checksum is None
    assert proposer.config() == {"proposer": "gt"}
    items = [dataset[i] for i in range(3)]
    for item, props in zip(items, proposer.propose_many(items), strict=True):
        assert len(props) == len(item.instances) >= 2
        assert props.boxes.shape == (len(item.instances), 4)
        assert props.labels == [inst.category for inst in item.instances]
        # The referred object is always one of the candidates.
        assert list(item.box) in props.boxes.tolist()


def test_ground_truth_falls_back_to_whole_image(dataset):
    item = _without_instances(dataset[0])
    props = GroundTruthProposer()(item)
    assert props.boxes.tolist() == [[0.0, 0.0, *map(float, item.image_size)]]
    assert props.labels == [None]


def test_missing_yolo_name_fails_fast(tmp_path):
    with pytest.raises(BackboneError) as info:
        load_yolo("yolov8m", cache=tmp_path)
    message = str(info.value)
    assert "yolov8m.pt" in message and str(tmp_path / "yolo") in message
    assert "REFCOCOG_TOOLS_CACHE" in message
    with pytest.raises(BackboneError, match="not found"):
        make_proposer(str(tmp_path / "nowhere" / "best.pt"))


def test_tiny_yolo_offline_quiet_and_contract(dataset, session_cache, capfd, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything Ultralytics might write relative to the cwd lands here
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    proposer = make_proposer("yolo", cache=session_cache, max_det=5)
    assert isinstance(proposer, YoloProposer)
    assert proposer.name == EMBEDDED_YOLO and proposer.untrained is True
    assert yolo_untrained(proposer.model)
    checkpoint = session_cache / "yolo" / f"{EMBEDDED_YOLO}.pt"
    assert proposer.checksum == sha256_file(checkpoint)
    assert proposer.names[0] == "person" and len(proposer.names) == 80
    config = proposer.config()
    assert config["conf"] == 0.25 and config["max_det"] == 5
    assert config["checksum"] == proposer.checksum

    items = [dataset[0], _without_instances(dataset[1])]
    images = [item.image for item in items]

    def decoded_again(path):
        raise AssertionError(f"{path} decoded a second time")

    # Images already decoded by the caller are used as they are.
    monkeypatch.setattr("refcocog_tools.data.dataset.load_rgb_image", decoded_again)
    results = proposer.propose_many(items, images)  # one forward pass of two images
    assert len(results) == 2
    for item, props in zip(items, results, strict=True):
        assert isinstance(props, Proposals)
        assert 1 <= len(props) <= 5
        assert props.boxes.shape == (len(props), 4) and props.boxes.dtype == torch.float32
        width, height = item.image_size
        assert (props.boxes[:, 2] > props.boxes[:, 0]).all()
        assert (props.boxes[:, 0] >= 0).all() and (props.boxes[:, 2] <= width).all()
        assert (props.boxes[:, 3] <= height).all()
        if props.scores is None:  # untrained: nothing above threshold, whole image instead
            assert props.boxes.tolist() == [[0.0, 0.0, float(width), float(height)]]
        else:
            assert (props.scores >= 0.25).all()
            assert all(label in proposer.names.values() for label in props.labels)
    captured = capfd.readouterr()
    assert str(session_cache) not in captured.out + captured.err
    assert not (tmp_path / "runs").exists()

    # Detections (which the untrained model does not produce) are converted without a second
    # forward pass: a hand-made Results with one good and one zero-area box.
    import numpy as np
    from ultralytics.engine.results import Results

    result = Results(np.zeros((240, 320, 3), np.uint8), path="x.png", names=proposer.names,
                     boxes=torch.tensor([[10.0, 20.0, 110.0, 90.0, 0.9, 2.0],
                                         [50.0, 50.0, 50.0, 80.0, 0.8, 0.0]]))
    props = proposer._to_proposals(result, (320, 240))
    assert props.boxes.tolist() == [[10.0, 20.0, 110.0, 90.0]]
    assert props.labels == ["car"]
    torch.testing.assert_close(props.scores, torch.tensor([0.9]))

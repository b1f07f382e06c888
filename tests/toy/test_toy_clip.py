"""The toy CLIP: deterministic training on the train split only, the shipped toy-rn, its labels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from refcocog_tools.cli.main import main
from refcocog_tools.core.files import sha256_file
from refcocog_tools.data.minidata import generate
from refcocog_tools.engine.results import honesty_label
from refcocog_tools.models.clip_loading import load_clip, toy_metadata
from refcocog_tools.toy.config import ToyClipConfig
from refcocog_tools.toy.toy_clip import TOY_LABEL, train_toy_clip
from refcocog_tools.toy.training_pairs import build_pairs

# A few seconds: 8 generated images, 3 steps of 8 pairs.
SMALL = ToyClipConfig(data_images=8, data_seed=5, captions_per_image=2, steps=3, batch_size=8,
                      warmup=1)


def test_pairs_come_from_the_train_split_only() -> None:
    pairs = build_pairs(SMALL)
    refs, _, _ = generate(SMALL.data_images, SMALL.data_seed)
    split = {r["image_id"]: r["split"] for r in refs}
    assert {split[i] for i in pairs.image_ids} == {"train"}
    assert set(split.values()) == {"train", "val", "test"}  # there were others to leave out
    counts = pairs.counts()
    assert counts["image"] and counts["crop"] and counts["marked"]
    assert counts["painted"] == counts["crop"]  # painted_share 1: every referred object
    assert pairs.pixels.shape == (len(pairs.kinds), 3, 64, 64)
    for kind, captions in zip(pairs.kinds, pairs.captions, strict=True):
        assert captions
        assert all(c.startswith("This is ") for c in captions) == (kind == "marked")
        if kind == "painted":  # the bare expression, then "<it> on a <colour> background"
            assert captions[1] == f"{captions[0]} on a {captions[1].split(' on a ')[-1]}"
            assert captions[1].endswith(" background")
    scene = [c for k, cs in zip(pairs.kinds, pairs.captions, strict=True) if k == "image"
             for c in cs]
    assert any(w in c for c in scene for w in ("on the left", "on the right", "to the left of",
                                                "to the right of", "at the top", "at the bottom"))


def test_training_is_deterministic_and_records_its_parameters() -> None:
    first, meta = train_toy_clip(SMALL)
    second, _ = train_toy_clip(SMALL)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert meta["config"]["data_images"] == 8 and meta["config"]["marked_share"] == 0.5
    assert meta["data"]["split"] == "train" and meta["data"]["seed"] == 5
    assert len(meta["history"]["loss_per_step"]) == 3
    assert meta["label"] == TOY_LABEL
    # Training leaves the process as it found it.
    assert not torch.are_deterministic_algorithms_enabled()


def test_cli_writes_a_loadable_labelled_checkpoint_and_never_overwrites(tmp_path: Path,
                                                                       capsys) -> None:
    out = tmp_path / "toy.pt"
    args = ["train-toy-clip", "--out", str(out), "--images", "6", "--steps", "2",
            "--batch-size", "8", "--data-seed", "3", "--quiet"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "toy.pt.json").read_text())
    assert meta["sha256"] == sha256_file(out)
    assert meta["toy"] is True and meta["config"]["data_seed"] == 3
    stored = torch.load(out, weights_only=True)
    assert stored["toy_clip"]["data"]["images"] == 6
    backbone = load_clip(str(out))
    assert backbone.toy and not backbone.untrained
    before = out.read_bytes()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_shipped_toy_rn_is_the_recorded_checkpoint(session_cache: Path) -> None:
    meta = toy_metadata("toy-rn")
    backbone = load_clip("toy-rn", cache=session_cache)
    assert backbone.toy and not backbone.untrained
    assert backbone.checksum == meta["sha256"]
    assert meta["config"] == ToyClipConfig().as_dict()  # shipped with the defaults
    assert ToyClipConfig.from_dict(meta["config"]).as_dict() == meta["config"]
    assert len(meta["history"]["loss_per_step"]) == meta["config"]["steps"]
    provenance = {"synthetic_data": True, "untrained": False,
                  "clip": [{"name": "toy-rn", "toy": True, "untrained": False}]}
    assert honesty_label(provenance).strip() == f"[{TOY_LABEL}: not a RefCOCOg result]"
    # A damaged unpacked copy is replaced from the package on the next load.
    backbone.checkpoint.write_bytes(b"damaged")
    assert load_clip("toy-rn", cache=session_cache).checksum == meta["sha256"]


def test_pairs_of_the_first_images_are_those_of_a_full_build() -> None:
    full = build_pairs(SMALL)
    first = build_pairs(SMALL, images=1)
    k = len(first.kinds)
    assert 0 < k < len(full.kinds) and set(first.image_ids) == {full.image_ids[0]}
    assert torch.equal(first.pixels, full.pixels[:k])
    assert first.captions == full.captions[:k] and first.kinds == full.kinds[:k]


def test_painted_share_zero_leaves_the_other_pairs_unchanged() -> None:
    with_paint = build_pairs(SMALL)
    without = build_pairs(dataclasses.replace(SMALL, painted_share=0.0))
    assert "painted" not in without.kinds
    kept = [i for i, kind in enumerate(with_paint.kinds) if kind != "painted"]
    assert without.captions == [with_paint.captions[i] for i in kept]
    assert torch.equal(without.pixels, with_paint.pixels[kept])

"""CLIP backbones: embedded tiny models, local checkpoints, offline failures, encoding."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refcocog_tools.core.files import sha256_file
from refcocog_tools.models.backbones import BackboneError, ClipBackbone, clip
from refcocog_tools.models.clip_loading import load_clip, load_clips
from refcocog_tools.models.untrained_models import (
    EMBEDDED_CLIPS,
    EMBEDDED_YOLO,
    TINY_CLIP_CONFIGS,
    _PortableRandom,
)
from refcocog_tools.models.yolo_models import yolo_checksum


@pytest.fixture(scope="session")
def tiny(session_cache) -> dict[str, ClipBackbone]:
    return {b.name: b for b in load_clips(",".join(EMBEDDED_CLIPS), cache=session_cache)}


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    # Different sizes and contents, so preprocessing (resize + crop) is exercised.
    return [Image.new("RGB", (200 + 10 * i, 150 + 7 * i), (25 * i, 255 - 20 * i, 90))
            for i in range(10)]


@pytest.mark.parametrize("name", EMBEDDED_CLIPS)
def test_tiny_models_load_as_designed(tiny, name):
    backbone = tiny[name]
    config = TINY_CLIP_CONFIGS[name]
    assert backbone.name == name
    assert backbone.untrained is True
    assert isinstance(backbone.model, clip.model.CLIP)
    assert not backbone.model.training
    assert backbone.device == torch.device("cpu")
    assert backbone.input_resolution == config["image_resolution"]
    assert backbone.embed_dim == config["embed_dim"]
    assert all(p.dtype == torch.float32 for p in backbone.model.parameters())
    assert backbone.checkpoint.name == f"{name}.pt"
    assert backbone.checksum == sha256_file(backbone.checkpoint)
    # Small enough to live in a cache and a CI run.
    assert backbone.checkpoint.stat().st_size < 12e6


@pytest.mark.parametrize("name", EMBEDDED_CLIPS)
def test_build_model_infers_the_designed_architecture(tiny, name):
    """build_model() re-derives the architecture from tensor shapes: it must match the config."""
    designed = clip.model.CLIP(**TINY_CLIP_CONFIGS[name]).state_dict()
    loaded = tiny[name].model.state_dict()
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in designed.items()}
    model = tiny[name].model
    assert len(model.transformer.resblocks) == TINY_CLIP_CONFIGS[name]["transformer_layers"]
    if name == "tiny-rn":
        assert model.visual.attnpool.num_heads == 16 * 32 // 64
    else:
        assert len(model.visual.transformer.resblocks) == TINY_CLIP_CONFIGS[name]["vision_layers"]


def test_generated_checkpoints_are_byte_identical(tiny, tmp_path):
    before = torch.get_rng_state()
    again = {name: load_clip(name, cache=tmp_path) for name in EMBEDDED_CLIPS}
    assert torch.equal(torch.get_rng_state(), before), "generation must not touch the global RNG"
    for name in EMBEDDED_CLIPS:
        assert again[name].checkpoint.parent == tmp_path / "clip"
        assert again[name].checksum == tiny[name].checksum
    # Different seeds/architectures: the two embedded models are not the same file.
    assert tiny["tiny-rn"].checksum != tiny["tiny-vit"].checksum


_GENERATE_AND_HASH = """
import json, sys
from refcocog_tools.models.clip_loading import load_clip
from refcocog_tools.models.yolo_models import yolo_checksum
from refcocog_tools.models.untrained_models import EMBEDDED_CLIPS, EMBEDDED_YOLO
sums = {name: load_clip(name, cache=sys.argv[1]).checksum for name in EMBEDDED_CLIPS}
sums[EMBEDDED_YOLO] = yolo_checksum(EMBEDDED_YOLO, cache=sys.argv[1])
print(json.dumps(sums))
"""


def test_generation_does_not_depend_on_cpu_kernels(tiny, session_cache, tmp_path):
    """PyTorch's generic kernels and two threads give the same files as this process.

    ``ATEN_CPU_CAPABILITY=default`` changes the last bits of float32 results the way another
    CPU does; it is read once at start-up, hence the subprocess (about 10 s).
    """
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2",
           "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics")}
    done = subprocess.run([sys.executable, "-c", _GENERATE_AND_HASH, str(tmp_path)], env=env,
                          capture_output=True, text=True, check=True, timeout=300)
    generic = json.loads(done.stdout.strip().splitlines()[-1])
    here = {name: tiny[name].checksum for name in EMBEDDED_CLIPS}
    here[EMBEDDED_YOLO] = yolo_checksum(EMBEDDED_YOLO, cache=session_cache)
    assert generic == here


def test_a_file_of_an_older_recipe_is_generated_again(tiny, tmp_path):
    """A cache from before the CPU-independent recipe (no "generator" in the sidecar) is not
    used: its weights would differ from a fresh clone's."""
    path = tmp_path / "clip" / "tiny-rn.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights of the old recipe")
    Path(str(path) + ".json").write_text(json.dumps({"untrained": True}), encoding="utf-8")
    assert load_clip("tiny-rn", cache=tmp_path).checksum == tiny["tiny-rn"].checksum


def test_portable_random_draws_numpy_values_and_refuses_the_rest():
    expected = np.random.Generator(np.random.PCG64(7))
    with _PortableRandom(7):
        normal = torch.empty(2, 3).normal_(1.0, 2.0)
        uniform = torch.nn.init.kaiming_uniform_(torch.empty(4, 5), a=5**0.5)  # inside nn.init
        gauss = torch.randn(6)
        with pytest.raises(RuntimeError, match="no CPU-independent replacement"):
            torch.rand(3)
    assert torch.equal(normal, torch.from_numpy(expected.normal(1.0, 2.0, (2, 3))).float())
    bound = float(np.sqrt(6.0 / ((1 + 5.0) * 5)))  # gain sqrt(2 / (1 + a^2)), fan_in 5
    assert torch.equal(uniform, torch.from_numpy(expected.uniform(-bound, bound, (4, 5))).float())
    assert torch.equal(gauss, torch.from_numpy(expected.standard_normal(6)).float())


def test_cache_env_var_is_the_default(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv("REFCOCOG_TOOLS_CACHE", str(tmp_path))
    backbone = load_clip("tiny-vit")
    assert backbone.checkpoint == tmp_path / "clip" / "tiny-vit.pt"
    assert backbone.checksum == tiny["tiny-vit"].checksum


@pytest.mark.parametrize("name", EMBEDDED_CLIPS)
def test_encode_images_shapes_norms_and_tensor_input(tiny, images, name):
    backbone = tiny[name]
    emb = backbone.encode_images(images, batch_size=4)  # 3 batches, the last one partial
    assert emb.shape == (10, backbone.embed_dim)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(10))
    # Already-preprocessed input gives the same embeddings.
    batch = torch.stack([backbone.preprocess(im) for im in images])
    assert batch.shape[-1] == backbone.input_resolution
    torch.testing.assert_close(backbone.encode_images(batch), emb, rtol=1e-5, atol=1e-5)
    # Different images, different embeddings (the model is untrained but not constant).
    assert not torch.allclose(emb[0], emb[9], atol=1e-3)
    assert backbone.encode_images([]).shape == (0, backbone.embed_dim)


@pytest.mark.parametrize("name", EMBEDDED_CLIPS)
def test_encode_texts_and_long_text_truncation(tiny, name):
    backbone = tiny[name]
    long_text = "the man on the left " * 40  # ~200 tokens
    with pytest.raises(RuntimeError):
        clip.tokenize([long_text])  # really longer than the context
    texts = ["a red car", "the dog on the right", long_text]
    emb = backbone.encode_texts(texts, batch_size=2)
    assert emb.shape == (3, backbone.embed_dim)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # The truncated text is what is encoded: the first 75 tokens of it give the same vector.
    words = long_text.split()
    prefix = " ".join(words[:75])
    torch.testing.assert_close(backbone.encode_texts([prefix])[0], emb[2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)
    assert backbone.encode_texts("a red car").shape == (1, backbone.embed_dim)


def test_missing_named_model_fails_fast_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(BackboneError) as info:
        load_clip("RN50x16", cache=tmp_path)
    message = str(info.value)
    assert "RN50x16.pt" in message
    assert str(tmp_path / "clip") in message
    assert "REFCOCOG_TOOLS_CACHE" in message
    assert not (tmp_path / "clip" / "RN50x16.pt").exists()


def test_named_model_with_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "RN50.pt").write_bytes(b"not the model")
    with pytest.raises(BackboneError, match="SHA-256"):
        load_clip("RN50", cache=tmp_path)


def test_local_state_dict_round_trip(tiny, images, tmp_path):
    reference = tiny["tiny-rn"]
    path = tmp_path / "my_clip.pt"
    torch.save(reference.model.state_dict(), path)
    backbone = load_clip(str(path))
    assert backbone.name == "my_clip.pt"
    assert backbone.checkpoint == path
    assert backbone.checksum == sha256_file(path)
    assert backbone.untrained is False  # no sidecar: a user's checkpoint is taken as trained
    assert backbone.input_resolution == reference.input_resolution
    torch.testing.assert_close(
        backbone.encode_images(images[:3]), reference.encode_images(images[:3]), rtol=0, atol=0
    )
    torch.testing.assert_close(backbone.encode_texts(["a cat"]), reference.encode_texts(["a cat"]),
                               rtol=0, atol=0)
    (tmp_path / "my_clip.pt.json").write_text('{"untrained": true}')
    assert load_clip(path).untrained is True


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_archive_loads_like_openai_files(tiny, tmp_path):
    """OpenAI's released files are TorchScript; a traced tiny model stands in for one."""
    reference = tiny["tiny-vit"]
    image = torch.zeros(1, 3, reference.input_resolution, reference.input_resolution)
    traced = torch.jit.trace(reference.model, (image, clip.tokenize(["a cat"])), check_trace=False)
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    backbone = load_clip(path)
    assert backbone.input_resolution == reference.input_resolution
    assert isinstance(backbone.model, clip.model.CLIP)
    torch.testing.assert_close(backbone.encode_texts(["a cat"]), reference.encode_texts(["a cat"]),
                               rtol=0, atol=0)


def test_bad_specs(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(BackboneError, match="garbage.pt"):
        load_clip(garbage)
    not_clip = tmp_path / "not_clip.pt"
    torch.save({"weight": torch.zeros(3)}, not_clip)
    with pytest.raises(BackboneError, match="not a CLIP state_dict"):
        load_clip(not_clip)
    with pytest.raises(BackboneError, match="unknown CLIP spec"):
        load_clip("no-such-model", cache=tmp_path)
    with pytest.raises(BackboneError):
        load_clips(" , ")


def test_load_clips_keeps_order(session_cache):
    backbones = load_clips(["tiny-vit", "tiny-rn"], cache=session_cache)
    assert [b.name for b in backbones] == ["tiny-vit", "tiny-rn"]


def test_untrained_embeddings_are_not_all_parallel(tiny: dict[str, ClipBackbone]) -> None:
    """Distinct images must not embed to one direction, or every score of a method ties."""
    images = [Image.new("RGB", (80, 60), colour) for colour in
              ((220, 30, 30), (30, 200, 40), (20, 40, 210), (240, 240, 240))]
    for backbone in tiny.values():
        embeddings = backbone.encode_images(images)
        cosine = embeddings @ embeddings.T
        off_diagonal = cosine[~torch.eye(len(images), dtype=torch.bool)]
        assert float(off_diagonal.min()) < 0.99, backbone.name

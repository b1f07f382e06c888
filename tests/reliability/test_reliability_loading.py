"""One audited loading door: TorchScript archives are read as data, never run.

OpenAI ships CLIP as TorchScript, and ``torch.jit.load`` runs an archive's ``__setstate__``.
The archives here are made the way OpenAI's are (``torch.jit.trace`` of a ``clip.model.CLIP``,
fp16 weights, ``input_resolution``/``context_length``/``vocab_size`` buffers like their
``Multimodal`` class); the hostile ones carry a ``__setstate__`` that creates a marker file,
and each test first shows that ``torch.jit.load`` really would create it (only the test calls
``torch.jit.load``, and only on archives it built itself).
"""

from __future__ import annotations

import copy
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.core.files import (
    UnreadableFileError,
    UnsafeFileError,
    load_torch_file,
    load_weights_file,
)
from refcocog_tools.core.torchscript_archive import (
    is_torchscript_archive,
    read_torchscript_state_dict,
)
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.clip_loading import load_clip
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.models.untrained_models import tiny_clip_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning",
                                        "ignore::FutureWarning", "ignore::DeprecationWarning")


class _WritesOnLoad(torch.nn.Module):
    """Its TorchScript ``__setstate__`` creates the file ``marker`` when the archive is loaded."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.size = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        # from_file(shared=True) opens the path with O_CREAT: the file appears. Its result is
        # kept, so the TorchScript compiler cannot drop the call as dead code.
        self.size = torch.from_file(state[0], True, 1).numel()


def _openai_like_clip(model: clip.model.CLIP) -> clip.model.CLIP:
    """``model`` with the three shape buffers OpenAI's archives carry (build_model drops them)."""
    model = copy.deepcopy(model).eval()
    sizes = {"input_resolution": model.visual.input_resolution,
             "context_length": model.context_length, "vocab_size": model.vocab_size}
    for name, value in sizes.items():
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    return model


def _trace_clip(model: clip.model.CLIP, path: Path) -> Path:
    side = model.visual.input_resolution
    dtype = model.visual.conv1.weight.dtype
    image = torch.zeros(1, 3, side, side, dtype=dtype)
    with torch.no_grad():
        traced = torch.jit.trace_module(model, {"encode_image": image,
                                                "encode_text": clip.tokenize(["a cat"])},
                                        check_trace=False)
    torch.jit.save(traced, str(path))
    return path


def _fp16_tiny(name: str, cache: Path) -> clip.model.CLIP:
    """The embedded tiny model as OpenAI's files hold weights: fp16 where build_model puts it."""
    return clip.model.build_model(dict(load_torch_file(tiny_clip_checkpoint(name, cache))))


def _assert_same_state_dict(read: dict, expected: dict) -> None:
    assert list(read) == list(expected)  # the same names, in nn.Module.state_dict's order
    for key, value in expected.items():
        assert read[key].dtype == value.dtype and read[key].shape == value.shape, key
        assert torch.equal(read[key], value), key


# ----------------------------------------------------------------------------------------------
# The reader gives exactly torch.jit.load(path).state_dict()
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-rn", "tiny-vit"])
def test_reader_matches_torch_jit_load_and_load_clip_matches_the_model(
        name, tmp_path, session_cache, images_of_mini) -> None:
    reference = load_clip(name, cache=session_cache)
    path = _trace_clip(_openai_like_clip(_fp16_tiny(name, session_cache)), tmp_path / "arch.pt")
    assert is_torchscript_archive(path)
    read = read_torchscript_state_dict(path)
    _assert_same_state_dict(read, torch.jit.load(str(path)).state_dict())
    assert {"input_resolution", "context_length", "vocab_size"} <= set(read)
    assert {str(v.dtype) for v in read.values()} >= {"torch.float16", "torch.float32"}

    backbone = load_clip(path)
    assert isinstance(backbone.model, clip.model.CLIP)
    assert backbone.input_resolution == reference.input_resolution
    torch.testing.assert_close(backbone.encode_images(images_of_mini),
                               reference.encode_images(images_of_mini), rtol=0, atol=0)
    torch.testing.assert_close(backbone.encode_texts(["a cat", "the man on the left"]),
                               reference.encode_texts(["a cat", "the man on the left"]),
                               rtol=0, atol=0)


def test_reader_on_vit_b32_shapes_in_fp16(tmp_path) -> None:
    """ViT-B/32's published hyperparameters (about 20 s on one CPU core)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    clip.model.convert_weights(model)
    path = _trace_clip(_openai_like_clip(model), tmp_path / "ViT-B-32.pt")
    read = read_torchscript_state_dict(path)
    _assert_same_state_dict(read, torch.jit.load(str(path)).state_dict())
    assert len(read) == len(model.state_dict()) + 3
    rebuilt = load_clip(path).model
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value.float()), key


@pytest.fixture(scope="module")
def images_of_mini(mini_data):
    from refcocog_tools.data.dataset import RefCOCOg

    return [item.image for item in list(RefCOCOg(mini_data, split="val"))[:2]]


# ----------------------------------------------------------------------------------------------
# Archives that would run code, or are not archives at all
# ----------------------------------------------------------------------------------------------


def plant_torchscript(path: Path, marker: Path) -> Path:
    """A small TorchScript archive that creates ``marker`` when torch.jit.load runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), str(path))
    return path


@pytest.fixture
def hostile_clip(tmp_path, session_cache, marker) -> Path:
    """A real tiny CLIP archive with one extra, tensor-free submodule whose load writes a file:
    without the refusal its weights would build a working model."""
    model = _openai_like_clip(_fp16_tiny("tiny-rn", session_cache))
    model.hook = torch.jit.script(_WritesOnLoad(str(marker)))
    path = _trace_clip(model, tmp_path / "evil-clip.pt")
    torch.jit.load(str(path))  # control: torch.jit.load runs the archive's code ...
    assert marker.exists()  # ... and the file appears
    marker.unlink()
    return path


def test_planted_archive_is_live(tmp_path, marker) -> None:
    torch.jit.load(str(plant_torchscript(tmp_path / "evil.pt", marker)))
    assert marker.exists()


def test_reader_refuses_code_that_runs_at_load(hostile_clip, marker) -> None:
    with pytest.raises(UnsafeFileError, match="refused to load") as info:
        read_torchscript_state_dict(hostile_clip)
    message = str(info.value)
    assert message.startswith(str(hostile_clip)) and "state__" in message
    assert "\n" not in message and not marker.exists()


def test_reader_refuses_a_global_outside_the_allow_list(tmp_path, marker) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
    with pytest.raises(UnsafeFileError, match=r"refused to load: its data.pkl references "
                                              r"(builtins|io)\.open"):
        read_torchscript_state_dict(path)
    assert not marker.exists()


def test_plain_torch_door_refuses_any_torchscript_archive(tmp_path, session_cache) -> None:
    """load_torch_file (regressor checkpoints, caches) never hands TorchScript to torch.load,
    not even a clean archive; load_weights_file reads that one as data."""
    path = _trace_clip(_openai_like_clip(_fp16_tiny("tiny-rn", session_cache)), tmp_path / "a.pt")
    with pytest.raises(UnsafeFileError, match="TorchScript archive"):
        load_torch_file(path)
    assert "visual.conv1.weight" in load_weights_file(path)


@pytest.mark.parametrize("problem", ["text", "empty", "truncated"])
def test_unreadable_files_are_one_line_errors(problem, tmp_path, session_cache) -> None:
    path = tmp_path / "x.pt"
    if problem == "text":
        path.write_text("hello world\n")  # torch.load's KeyError: 101
    elif problem == "truncated":
        archive = _trace_clip(_openai_like_clip(_fp16_tiny("tiny-rn", session_cache)),
                              tmp_path / "whole.pt")
        path.write_bytes(archive.read_bytes()[:4000])
    else:
        path.write_bytes(b"")
    for reader in (load_torch_file, load_weights_file):
        with pytest.raises(UnreadableFileError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: not a readable")
        assert "\n" not in str(info.value)
    with pytest.raises(BackboneError, match=f"^{path}"):
        load_clip(path)


# ----------------------------------------------------------------------------------------------
# Through the command line: every CLIP entry point, the cache, the other file kinds
# ----------------------------------------------------------------------------------------------
def _evaluate(data: Path, out: Path, *extra: str) -> int:
    return cli_main(["evaluate", "--data-root", str(data), "--method", "baseline",
                     "--clip", "tiny-rn", "--proposals", "gt", "--limit", "2",
                     "--out", str(out), *extra])


def _assert_one_line_refusal(code: int, capsys, path: Path, marker: Path,
                             word: str = "refused") -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and word in lines[0], err
    assert "Traceback" not in err and not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "train-regressor", "bench"])
def test_hostile_clip_archive_by_path(command, hostile_clip, tmp_path, mini_data,
                                      isolated_cache, marker, capsys) -> None:
    common = ["--data-root", str(mini_data), "--clip", str(hostile_clip)]
    argv = {"evaluate": ["evaluate", *common, "--method", "baseline", "--limit", "2",
                         "--out", str(tmp_path / "r.json")],
            "train-regressor": ["train-regressor", *common, "--epochs", "1",
                                "--embedding-cache", str(tmp_path / "emb"),
                                "--out", str(tmp_path / "run")],
            "bench": ["bench", *common, "--method", "baseline", "--limit", "2"]}[command]
    _assert_one_line_refusal(cli_main(argv), capsys, hostile_clip, marker)


def test_hostile_clip_archive_planted_as_the_cached_tiny_model(
        hostile_clip, tmp_path, mini_data, isolated_cache, marker, capsys) -> None:
    cached = isolated_cache / "clip" / "tiny-rn.pt"
    shutil.copyfile(hostile_clip, cached)  # its sidecar still says "generated here"
    _assert_one_line_refusal(_evaluate(mini_data, tmp_path / "r.json"), capsys, cached, marker)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flag", ["--clip", "--proposals"])
@pytest.mark.parametrize("problem", ["text", "empty", "truncated"])
def test_unreadable_checkpoint_on_the_command_line(flag, problem, tmp_path, mini_data,
                                                   isolated_cache, capsys) -> None:
    path = tmp_path / "x.pt"
    payload = {"text": b"hello world\n", "empty": b"",
               "truncated": (isolated_cache / "clip" / "tiny-rn.pt").read_bytes()[:4000]}
    path.write_bytes(payload[problem])
    code = _evaluate(mini_data, tmp_path / "r.json", flag, str(path))
    _assert_one_line_refusal(code, capsys, path, tmp_path / "no-marker", word="not a")


@pytest.mark.parametrize("where", ["path", "cached name", "torchscript export"])
def test_hostile_torchscript_yolo(where, tmp_path, mini_data, isolated_cache, marker,
                                  capsys) -> None:
    path = {"path": tmp_path / "det.pt", "cached name": isolated_cache / "yolo" / "yolov8s.pt",
            "torchscript export": tmp_path / "yolov8s.torchscript"}[where]
    plant_torchscript(path, marker)
    spec = "yolov8s" if where == "cached name" else str(path)
    code = _evaluate(mini_data, tmp_path / "r.json", "--proposals", spec)
    _assert_one_line_refusal(code, capsys, path, marker)


def test_hostile_torchscript_regressor_checkpoint(tmp_path, mini_data, isolated_cache, marker,
                                                  capsys) -> None:
    evil = plant_torchscript(tmp_path / "best.pt", marker)
    code = _evaluate(mini_data, tmp_path / "r.json", "--method", "regressor",
                     "--checkpoint", str(evil))
    _assert_one_line_refusal(code, capsys, evil, marker)


def test_hostile_torchscript_training_state_on_resume(tmp_path, mini_data, isolated_cache,
                                                      marker, capsys) -> None:
    out = tmp_path / "run"
    evil = plant_torchscript(out / "last.pt", marker)
    code = cli_main(["train-regressor", "--data-root", str(mini_data), "--epochs", "1",
                     "--embedding-cache", str(tmp_path / "emb"), "--out", str(out),
                     "--resume"])
    _assert_one_line_refusal(code, capsys, evil, marker)


def test_hostile_torchscript_embedding_caches_are_recomputed(tmp_path, mini_data,
                                                             isolated_cache, marker,
                                                             tiny_rn) -> None:
    folder = isolated_cache / "embeddings" / tiny_rn.checksum[:16]
    planted = [plant_torchscript(folder / name, marker) for name in ("image.pt", "text.pt")]
    with pytest.warns(UserWarning, match="refused to load: it is a TorchScript archive"):
        assert _evaluate(mini_data, tmp_path / "r.json") == 0
    assert not marker.exists()
    for path in planted:  # rewritten by the run with plain data
        assert isinstance(load_torch_file(path), dict)


def test_hostile_torchscript_split_embedding_cache_is_recomputed(tmp_path, mini_data, tiny_rn,
                                                                 marker) -> None:
    from refcocog_tools.data.dataset import RefCOCOg
    from refcocog_tools.models.split_embeddings import cache_path, split_embeddings

    dataset = RefCOCOg(mini_data, split="val", view="expression")
    path = plant_torchscript(cache_path(tiny_rn, dataset, tmp_path / "emb"), marker)
    with pytest.warns(UserWarning, match="TorchScript archive"):
        embeddings = split_embeddings(dataset, tiny_rn, cache_root=tmp_path / "emb")
    assert not marker.exists()
    assert len(embeddings.image_ids) > 0 and isinstance(load_torch_file(path), dict)


def test_hostile_refs_pickle(tmp_path, mini_data, isolated_cache, marker, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = tmp_path / "data"
    shutil.copytree(mini_data, data)
    refs = data / "annotations" / "refs(umd).p"
    refs.write_bytes(pickle.dumps([{"ref_id": 0, "evil": Payload()}], protocol=2))
    pickle.loads(refs.read_bytes())  # control: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    code = _evaluate(data, tmp_path / "r.json")
    _assert_one_line_refusal(code, capsys, refs, marker, word="unsafe")

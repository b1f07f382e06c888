"""The engine does each thing once per evaluation: each image decoded once (the check before
the run reads headers only), each method's encode request built once per image however many
referred objects it has, each crop request once per distinct box, the grouping once; and the
seconds of each pipeline stage are recorded."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from refcocog_tools.cli.main import main as cli_main
from refcocog_tools.data.dataset import RefCOCOg, image_problem
from refcocog_tools.engine import metric_crops
from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
from refcocog_tools.engine.stage_clock import STAGES
from refcocog_tools.methods.red_circle import RedCircle, RedCircleOptions
from refcocog_tools.methods.registry import make_method
from refcocog_tools.methods.scoring import box_key
from refcocog_tools.models import backbones
from refcocog_tools.models.prompt_cache import EmbeddingCache, image_fingerprint
from refcocog_tools.proposals.proposers import GroundTruthProposer

# The plain loop, the batched one, and the batched one with DataLoader workers is left to
# tests/test_throughput.py (a worker's counts stay in the worker).
ENGINE_MODES = [{}, {"batch_size": 16}]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Full decodes per image file: every ``ImageFile.load`` that has pixel data to read."""
    counts: Counter = Counter()
    real = ImageFile.ImageFile.load

    def counting(self):  # type: ignore[no-untyped-def]
        if getattr(self, "tile", None):  # not yet decoded: this call reads the pixels
            counts[Path(getattr(self, "filename", "") or "?").name] += 1
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return counts


def _red_circle(tiny_rn, mini_data: Path) -> RedCircle:
    pool = RefCOCOg(mini_data, "train").sentences()
    return RedCircle([tiny_rn], pool, EmbeddingCache(), RedCircleOptions(n_debias=20))


def _groups(mini_data: Path) -> list:
    groups = group_by_image(RefCOCOg(mini_data, "test"))
    refs = [len({it.ref_id for it in items}) for items in groups]
    assert max(refs) > 1, "the test needs images with several referred objects"
    return groups


def test_evaluate_decodes_each_image_once(mini_data, isolated_cache, tmp_path, decodes
                                          ) -> None:
    out = tmp_path / "r.json"
    assert cli_main(["evaluate", "--data-root", str(mini_data), "--method", "red-circle",
                     "--n-debias", "20", "--clip", "tiny-rn", "--out", str(out),
                     "--quiet"]) == 0
    images = {Path(r.image_path).name for r in RefCOCOg(mini_data, "test").records}
    assert set(decodes) == images and set(decodes.values()) == {1}, decodes
    stages = json.loads(out.read_text())["timing"]["stages"]
    assert set(stages) == set(STAGES) and all(s >= 0 for s in stages.values())


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_engine_decodes_each_image_once(mode, mini_data, tiny_rn, decodes) -> None:
    groups = _groups(mini_data)
    evaluate_groups(groups, _red_circle(tiny_rn, mini_data), GroundTruthProposer(),
                    [tiny_rn], **mode)
    assert sum(decodes.values()) == len(groups) and set(decodes.values()) == {1}


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_red_circle_request_is_built_once_per_image(mode, mini_data, tiny_rn, monkeypatch
                                                    ) -> None:
    groups = _groups(mini_data)
    method = _red_circle(tiny_rn, mini_data)
    requests: Counter = Counter()
    kept: Counter = Counter()
    real_request, real_kept = RedCircle.encode_request, RedCircle.kept_proposals

    def counting_request(self, image, expressions, proposals):  # type: ignore[no-untyped-def]
        requests[image_fingerprint(image)] += 1
        return real_request(self, image, expressions, proposals)

    def counting_kept(self, image_size, boxes):  # type: ignore[no-untyped-def]
        kept[image_size, tuple(map(box_key, boxes))] += 1
        return real_kept(self, image_size, boxes)

    monkeypatch.setattr(RedCircle, "encode_request", counting_request)
    monkeypatch.setattr(RedCircle, "kept_proposals", counting_kept)
    rows = evaluate_groups(groups, method, GroundTruthProposer(), **mode)
    assert len(rows) == sum(len(g) for g in groups)
    assert len(requests) == len(groups) and set(requests.values()) == {1}, requests
    assert set(kept.values()) == {1}


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_each_crop_request_is_built_once_per_box(mode, mini_data, tiny_rn, monkeypatch
                                                 ) -> None:
    groups = _groups(mini_data)
    built: Counter = Counter()
    real = metric_crops.crop_request

    def counting(image, boxes, texts=()):  # type: ignore[no-untyped-def]
        built.update((image_fingerprint(image), box_key(b)) for b in boxes)
        return real(image, boxes, texts)

    monkeypatch.setattr(metric_crops, "crop_request", counting)
    rows = evaluate_groups(groups, _red_circle(tiny_rn, mini_data), GroundTruthProposer(),
                           [tiny_rn], **mode)
    assert set(built.values()) == {1}, [k for k, n in built.items() if n > 1]
    # And every crop the cosines need was built: the ground truth's and the predicted boxes'.
    by_image = Counter(image for image, _ in built)
    for items in groups:
        image = items[0].image
        mine = [r for r in rows if r["image_id"] == items[0].image_id]
        boxes = {box_key(torch.tensor(r[k])) for r in mine for k in ("box", "gt_box")}
        assert by_image[image_fingerprint(image)] == len(boxes)


def test_evaluate_groups_the_split_once(mini_data, isolated_cache, tmp_path, monkeypatch
                                        ) -> None:
    import refcocog_tools.cli.evaluate as cli_evaluate
    import refcocog_tools.engine.evaluate as engine_evaluate

    calls = []
    real = engine_evaluate.group_by_image

    def counting(dataset, limit=0):  # type: ignore[no-untyped-def]
        calls.append(limit)
        return real(dataset, limit)

    monkeypatch.setattr(cli_evaluate, "group_by_image", counting)
    monkeypatch.setattr(engine_evaluate, "group_by_image", counting)
    assert cli_main(["evaluate", "--data-root", str(mini_data), "--method", "largest",
                     "--clip", "tiny-rn", "--limit", "9", "--out", str(tmp_path / "r.json"),
                     "--quiet"]) == 0
    assert calls == [9]


def test_stage_seconds_add_up_to_at_most_the_run(mini_data, tiny_rn) -> None:
    groups = _groups(mini_data)
    seconds: dict[str, float] = {}
    import time

    started = time.perf_counter()
    evaluate_groups(groups, _red_circle(tiny_rn, mini_data), GroundTruthProposer(), [tiny_rn],
                    batch_size=16, stage_seconds=seconds)
    elapsed = time.perf_counter() - started
    assert list(seconds) == list(STAGES)
    assert all(s > 0 for s in seconds.values()), seconds
    assert sum(seconds.values()) <= elapsed


# ----------------------------------------------------------------------------------------------
# The check before the run: headers only, and what a header shows is still found
# ----------------------------------------------------------------------------------------------
def _png_with_late_exif(path: Path, size: tuple[int, int], orientation: int) -> None:
    """A PNG whose eXIf chunk comes after the pixel data (before IEND), where Pillow finds it
    only by decoding the image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "PNG")
    raw = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    data = data[6:] if data.startswith(b"Exif\x00\x00") else data
    chunk = (struct.pack(">I", len(data)) + b"eXIf" + data
             + struct.pack(">I", zlib.crc32(b"eXIf" + data)))
    end = raw.rindex(b"IEND") - 4
    path.write_bytes(raw[:end] + chunk + raw[end:])


def test_header_check_reads_no_pixels_and_still_sees_orientation(tmp_path, decodes) -> None:
    jpeg = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(jpeg, exif=exif)
    problem = image_problem(jpeg, (40, 20), decode=False)
    assert problem is not None and "after EXIF orientation" in problem
    assert sum(decodes.values()) == 0
    assert image_problem(jpeg, (20, 40), decode=False) is None

    late = tmp_path / "late.png"
    _png_with_late_exif(late, (40, 20), 6)
    assert Image.open(late).getexif().get(0x0112) == 6  # Pillow sees it (by decoding)
    problem = image_problem(late, (40, 20), decode=False)
    assert problem is not None and "after EXIF orientation" in problem
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 20)).save(plain)
    decodes.clear()
    assert image_problem(plain, (40, 20), decode=False) is None
    assert sum(decodes.values()) == 0


def test_a_truncated_image_passes_the_header_check_and_fails_the_decode(tmp_path) -> None:
    path = tmp_path / "cut.jpg"
    Image.effect_noise((64, 48), 40).convert("RGB").save(path, quality=95)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    assert image_problem(path, (64, 48), decode=False) is None
    problem = image_problem(path, (64, 48))
    assert problem is not None and problem.startswith(f"{path}: image unreadable")


def test_texts_are_encoded_in_whole_passes(tiny_rn, mini_data: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched engine encodes a run's texts in as few forward passes as they fill: a
    batch's texts that do not fill a pass wait for the next batch's (only the last pass of the
    run is padded), and the rows are the plain loop's."""
    # Passes of 3 texts: the split's texts then span several passes and batches.
    monkeypatch.setattr(backbones, "FIXED_BATCH_CPU", 3)
    groups = _groups(mini_data)
    plain = evaluate_groups(groups, _red_circle(tiny_rn, mini_data), GroundTruthProposer())
    method = _red_circle(tiny_rn, mini_data)  # the debias texts are encoded as it is made
    encoded: list[str] = []
    passes: list[int] = []
    real = type(tiny_rn).encode_texts

    def counting(self, texts, batch_size=256, normalize=True, *, pad_last=False):  # noqa: ANN001, ANN202
        encoded.extend(texts)
        passes.extend([batch_size] * -(-len(texts) // batch_size))
        return real(self, texts, batch_size, normalize, pad_last=pad_last)

    monkeypatch.setattr(type(tiny_rn), "encode_texts", counting)
    batched = evaluate_groups(groups, method, GroundTruthProposer(), batch_size=8)
    assert batched == plain
    assert len(encoded) == len(set(encoded))  # each text once
    assert len(passes) == -(-len(encoded) // 3)  # the fewest passes that hold them
    assert len(passes) >= 2, "the test needs texts over several batches"


class _PredictOnly:
    """A method seen through ``predict`` alone: the engine asks it once per referred object,
    building nothing once per image (the reference rows)."""

    def __init__(self, method) -> None:  # type: ignore[no-untyped-def]
        self.method, self.name = method, method.name

    def config(self):  # type: ignore[no-untyped-def]
        return self.method.config()

    def predict(self, image, expressions, proposals):  # type: ignore[no-untyped-def]
        return self.method.predict(image, expressions, proposals)


@pytest.mark.parametrize("name", ["baseline", "color-background", "color-overlay", "relations"])
@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_every_batched_method_builds_its_request_once_per_image(name, mode, mini_data, tiny_rn,
                                                                 monkeypatch) -> None:
    """Each method that declares its inputs predicts from the image's one request, however
    many referred objects the image has, with the rows its ``predict`` per ref gives."""
    groups = _groups(mini_data)
    pool = RefCOCOg(mini_data, "train").sentences()

    def method():  # type: ignore[no-untyped-def]
        return make_method(name, [tiny_rn], cache=EmbeddingCache(), debias_pool=pool)

    reference = evaluate_groups(groups, _PredictOnly(method()), GroundTruthProposer())
    built = method()
    requests: Counter = Counter()
    counted = [type(built)] + ([RedCircle] if name == "relations" else [])  # and its scorer's
    for cls in counted:
        real = cls.encode_request

        def counting(self, image, expressions, proposals, real=real, cls=cls):  # type: ignore[no-untyped-def]
            requests[cls.__name__, image_fingerprint(image)] += 1
            return real(self, image, expressions, proposals)

        monkeypatch.setattr(cls, "encode_request", counting)
    rows = evaluate_groups(groups, built, GroundTruthProposer(), **mode)
    assert rows == reference
    assert len(requests) == len(groups) * len(counted), requests
    assert set(requests.values()) == {1}, requests


@pytest.mark.parametrize("gpu_layout", [False, True])
def test_a_workers_request_serves_the_main_process(gpu_layout, mini_data, tiny_rn,
                                                   monkeypatch) -> None:
    """With DataLoader workers, the request a worker built comes back with its image (without
    its drawing closure) and the method predicts from it: the main process builds none, or,
    where it draws the prompts itself (models on a GPU), one per image."""
    groups = _groups(mini_data)
    reference = evaluate_groups(groups, _red_circle(tiny_rn, mini_data), GroundTruthProposer())
    if gpu_layout:  # tensor-drawn prompts are drawn in the main process, as for a GPU
        from refcocog_tools.engine import encoding
        monkeypatch.setattr(encoding.Encoding, "on_gpu", property(lambda self: True))
    method = _red_circle(tiny_rn, mini_data)
    requests: Counter = Counter()  # the main process's: a worker's counts stay in the worker
    real_request = RedCircle.encode_request

    def counting_request(self, image, expressions, proposals):  # type: ignore[no-untyped-def]
        requests[image_fingerprint(image)] += 1
        return real_request(self, image, expressions, proposals)

    monkeypatch.setattr(RedCircle, "encode_request", counting_request)
    rows = evaluate_groups(groups, method, GroundTruthProposer(), batch_size=8, workers=1)
    assert rows == reference
    if gpu_layout:
        assert len(requests) == len(groups) and set(requests.values()) == {1}, requests
    else:
        assert not requests, requests

"""``refcocog-tools bench``: throughput of each stage, end to end, and peak memory, as JSON.

Stages (images/s and expressions/s): decode (image files to RGB), proposals, render (the
red-circle visual prompts), encode (CLIP image encoding of those prompts, batched), score (the
method's ``predict`` with every embedding already cached) and end to end (the engine, batched,
with ``--workers`` DataLoader processes). Every timed run uses a fresh memory-only
``EmbeddingCache``, so no disk-cache hit flatters a number.

Two comparisons back the throughput targets:

* ``render_backends``: the engine end to end with the tensor render backend (``torch``)
  against the Pillow reference (``pil``), in three side-by-side pairs: median seconds, the
  median of the pairs' speed-ups, and whether every chosen proposal is the same.
* ``study_pattern``: the study's loop, one referred object at a time, rendering each proposal from
  scratch and calling the image encoder with its two visual prompts, no cache, against the
  engine's batched path; the predictions of both are compared too.

``--compile MODE`` wraps every CLIP image tower in ``torch.compile(mode=MODE)`` before any
stage runs ("reduce-overhead" adds CUDA graphs on a GPU), so a run with and one without it
say whether compiling pays. Compilation happens at the first call of each new batch shape,
inside the first timed stage that meets it (``encode``, and the end-to-end runs for their
partial batches); the encoder ceiling measures the compiled steady state. Off by default: on a
CPU it has not paid (the README gives the figures).

``--synthetic-workload IMAGES,PROPOSALS`` additionally times encoding IMAGES x PROPOSALS x 2
random visual prompts with the full RN50x16 architecture (random weights unless ``--clip``
names RN50x16): the cost of the full test split on a GPU. On a CPU it is very slow.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.data.dataset import RefItem, load_rgb_image
from refcocog_tools.engine.evaluate import evaluate_groups
from refcocog_tools.methods.interface import BatchedMethod, GroundingMethod
from refcocog_tools.methods.red_circle import RedCircle
from refcocog_tools.methods.registry import make_method
from refcocog_tools.models.backbones import ClipBackbone, prepare_for_device
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts.render import (
    RENDER_BACKENDS,
    input_difference,
    pil_preprocess,
    prompt_inputs,
)
from refcocog_tools.prompts.visual_prompts import STUDY_VARIANTS, render_variant
from refcocog_tools.proposals.structures import Proposals, Proposer


def per_second(count: int, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def stage_timing(seconds: float, images: int, expressions: int, **extra: Any) -> dict[str, Any]:
    return {"seconds": round(seconds, 4), "images_per_s": per_second(images, seconds),
            "expressions_per_s": per_second(expressions, seconds), **extra}


def peak_memory() -> dict[str, Any]:
    """Peak resident memory of this process and of its finished children (DataLoader workers),
    in MiB (``ru_maxrss`` is in KiB on Linux), and the CUDA peak when a GPU was used."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
    memory: dict[str, Any] = {"rss_peak_mib": round(self_kib * scale / 2**20, 1),
                              "children_rss_peak_mib": round(child_kib * scale / 2**20, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return memory


def bench_backends(groups: Sequence[Sequence[RefItem]], proposer: Proposer,
                   make_with_backend: Any, batch_size: int, workers: int,
                   repeats: int = 3) -> dict[str, Any]:
    """The engine end to end with each render backend (torch, the Pillow reference): median
    seconds and rates over ``repeats`` side-by-side pairs, whether every chosen proposal is
    the same, and the torch backend's speed-up (the median of the pairs' ratios).

    The backends run in turn, the first of each pair alternating (torch, pil, then pil,
    torch...), every run with a fresh method and cache: on a shared machine whose speed drifts,
    a pair's ratio is what stays meaningful.
    """
    n_img, n_expr = len(groups), sum(len(g) for g in groups)
    seconds: dict[str, list[float]] = {backend: [] for backend in RENDER_BACKENDS}
    chosen: dict[str, list[int]] = {}
    for repeat in range(max(1, repeats)):
        order = RENDER_BACKENDS if repeat % 2 == 0 else RENDER_BACKENDS[::-1]
        for backend in order:
            method = make_with_backend(backend)
            started = time.perf_counter()
            rows = evaluate_groups(groups, method, proposer, batch_size=batch_size,
                                   workers=workers)
            seconds[backend].append(time.perf_counter() - started)
            picked = [row["chosen"] for row in rows]
            if chosen.setdefault(backend, picked) != picked:
                raise RuntimeError(f"render backend {backend} chose differently on a rerun")
    result: dict[str, Any] = {backend: stage_timing(statistics.median(runs), n_img, n_expr,
                                              runs=[round(t, 4) for t in runs])
                              for backend, runs in seconds.items()}
    result["same_choices"] = chosen["torch"] == chosen["pil"]
    ratios = [p / t for t, p in zip(seconds["torch"], seconds["pil"], strict=True) if t > 0]
    result["torch_speedup"] = round(statistics.median(ratios), 3) if ratios else None
    result["pairs"] = len(ratios)
    return result


def study_pattern(groups: Sequence[Sequence[RefItem]], proposer: Proposer,
                  method: RedCircle) -> list[int]:
    """The study's loop, no cache: per referred object, per proposal, render the two visual
    prompts from scratch and encode them in one call; the ref's expressions encoded together
    and debiased together. Returns the chosen proposal per expression, in item order (compared
    with the engine's choices)."""
    chosen = []
    params = dict(method.render_params)
    params.pop("target_size", None)
    debias = [b.encode_texts(method.debias_sentences).mean(dim=0) if method.debias_sentences
              else None for b in method.backbones]  # once, as the method's constructor does
    for items in groups:
        by_ref: dict[int, list[int]] = {}
        for position, item in enumerate(items):
            by_ref.setdefault(item.ref_id, []).append(position)
        picked: dict[int, int] = {}
        for positions in by_ref.values():
            item = items[positions[0]]
            image = load_rgb_image(item.record.image_path)
            proposals = proposer(item, image)
            keep = method.kept_proposals(image.size, proposals.boxes)
            boxes = proposals.boxes[keep]
            total = None
            for backbone, debias_mean in zip(method.backbones, debias, strict=True):
                visual = torch.cat([
                    backbone.encode_images([render_variant(image, box, v, **params)
                                            for v in method.variants])
                    for box in boxes])  # the study's Pillow rendering and CLIP preprocessing
                text = backbone.encode_texts([method.prefix + items[i].sentence
                                              for i in positions])
                sim = method.debias(text @ visual.T, visual, debias_mean)
                total = sim if total is None else total + sim
            assert total is not None
            fused = method.fuse_variants(total, len(positions), len(boxes))
            for row, position in enumerate(positions):
                picked[position] = int(keep[int(fused[row].argmax())])
        chosen.extend(picked[position] for position in range(len(items)))
    return chosen


def choice_agreement(groups: Sequence[Sequence[RefItem]], backbones: Sequence[ClipBackbone],
                     proposer: Proposer, debias_pool: Sequence[str] = (),
                     **options: Any) -> dict[str, Any]:
    """Red-circle with the torch render backend against the Pillow reference: the share of
    expressions whose chosen proposal is the same, and the model inputs' largest and mean
    per-pixel difference in grey levels over every visual prompt of the groups."""
    options = {k: v for k, v in options.items() if k != "render_backend"}
    chosen = {}
    for backend in RENDER_BACKENDS:
        method = make_method("red-circle", backbones, cache=EmbeddingCache(None),
                             debias_pool=debias_pool, render_backend=backend, **options)
        rows = evaluate_groups(groups, method, proposer)
        chosen[backend] = [row["chosen"] for row in rows]
    same = sum(a == b for a, b in zip(chosen["torch"], chosen["pil"], strict=True))
    largest = mean = 0.0
    n_images = 0
    for items in groups:
        image = items[0].image
        boxes = proposer(items[0], image).boxes
        for resolution in dict.fromkeys(b.input_resolution for b in backbones):
            difference = input_difference(
                image, boxes[method.kept_proposals(image.size, boxes)], method.variants,
                resolution, preprocess=method.preprocess, **method.render_params)
            largest = max(largest, difference["max_levels"])
            mean += difference["mean_levels"]
            n_images += 1
    return {"expressions": len(chosen["torch"]), "same_choices": round(same / max(1, len(
                chosen["torch"])), 6),
            "max_levels": largest, "mean_levels": round(mean / max(1, n_images), 5),
            "preprocess": method.preprocess}


def bench_stages(groups: Sequence[Sequence[RefItem]], proposer: Proposer,
                 make: Any, batch_size: int) -> dict[str, Any]:
    """Each stage alone, in the main process, over every image group."""
    n_img = len(groups)
    n_expr = sum(len(g) for g in groups)
    stages: dict[str, Any] = {}
    started = time.perf_counter()
    images = [load_rgb_image(items[0].record.image_path) for items in groups]
    stages["decode"] = stage_timing(time.perf_counter() - started, n_img, n_expr)
    started = time.perf_counter()
    # Timed apart from decoding: the proposer gets the images decoded above.
    proposals: list[Proposals] = proposer.propose_many([items[0] for items in groups], images)
    stages["proposals"] = stage_timing(time.perf_counter() - started, n_img, n_expr)
    method: GroundingMethod = make()
    batched = isinstance(method, BatchedMethod)
    if batched:
        started = time.perf_counter()
        requests = [method.encode_request(image, [it.sentence for it in items], props)
                    for image, props, items in zip(images, proposals, groups, strict=True)]
        resolutions = list(dict.fromkeys(b.input_resolution for b in method.backbones))
        inputs = {r: torch.cat([q.draw(r, range(len(q.keys)), method.backbones[0].device)
                                for q in requests]) for r in resolutions}
        n_inputs = sum(len(q.keys) for q in requests)
        stages["render"] = stage_timing(time.perf_counter() - started, n_img, n_expr,
                                  visual_prompts=n_inputs,
                                  note="declared inputs drawn and preprocessed to model inputs")
        started = time.perf_counter()
        keys = [k for q in requests for k in q.keys]
        for backbone in method.backbones:
            vectors = backbone.encode_images(inputs[backbone.input_resolution], batch_size)
            method.cache.put_images(backbone, keys, vectors)
        seconds = time.perf_counter() - started
        stages["encode"] = stage_timing(seconds, n_img, n_expr,
                                  visual_prompts_per_s=per_second(n_inputs, seconds))
    else:
        stages["render"] = stages["encode"] = None  # done inside predict for other methods
    started = time.perf_counter()
    for image, props, items in zip(images, proposals, groups, strict=True):
        method.predict(image, [it.sentence for it in items], props)
    stages["score"] = stage_timing(time.perf_counter() - started, n_img, n_expr,
                             note="predict on cache hits (text encoding included)"
                             if batched else "predict, all work included")
    return stages


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_image_encoder(backbone: ClipBackbone, mode: str) -> None:
    """Wrap ``backbone``'s image tower in ``torch.compile(mode=mode)``, in place. Compilation
    happens at the first call of each new input shape; the weights, their dtype and layout
    stay as loaded (float32 on a CPU)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    # torch.compile's wrapper forwards attribute reads (conv1, input_resolution) to the tower.
    backbone.model.visual = torch.compile(backbone.model.visual, mode=mode)


def encoder_ceiling(backbone: ClipBackbone, batch_size: int, batches: int = 3
                    ) -> dict[str, Any]:
    """The image encoder alone on one batch of inputs made on its device, encoded
    ``batches`` times after a warm-up: the most prompts/s any pipeline can reach."""
    resolution = backbone.input_resolution
    gen = torch.Generator(device=backbone.device).manual_seed(0)  # the global RNG untouched
    inputs = torch.randn(batch_size, 3, resolution, resolution, device=backbone.device,
                         generator=gen)
    started = time.perf_counter()
    # Warm-up: cuDNN autotuning, allocations, and compilation under --compile.
    backbone.encode_images(inputs, batch_size)
    _synchronize(backbone.device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(batches):
        backbone.encode_images(inputs, batch_size)
    _synchronize(backbone.device)
    seconds = time.perf_counter() - started
    return {"backbone": backbone.name, "batch_size": batch_size, "prompts": batch_size * batches,
            "seconds": round(seconds, 4), "warmup_seconds": round(warmup, 4),
            "visual_prompts_per_s": per_second(batch_size * batches, seconds)}


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# RN50x16's configuration (what clip.model.build_model infers from its state dict).
RN50X16_CONFIG: dict[str, Any] = dict(
    embed_dim=768, image_resolution=384, vision_layers=(6, 8, 18, 8), vision_width=96,
    vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=768,
    transformer_heads=12, transformer_layers=12,
)


def synthetic_workload(spec: str, backbones: Sequence[ClipBackbone], device: str,
                       batch_size: int, seed: int, architecture: dict[str, Any] | None = None,
                       architecture_name: str = "RN50x16", compile_mode: str | None = None
                       ) -> dict[str, Any]:
    """The whole red-circle pipeline on IMAGES generated on the device, PROPOSALS each.

    Every 640 x 480 image is made on the device as uint8 (as a decoded JPEG arrives there),
    its PROPOSALS random boxes (in host memory, as proposals are) are drawn in the study's two
    variants by the tensor renderer, resized, centre-cropped and normalised there, and
    encoded in batches of ``batch_size`` by the RN50x16 architecture (loaded weights when
    ``--clip`` names RN50x16, else random ones: the same cost), one batch in flight while
    the next images are drawn, as in the engine. The encoder's ceiling is measured in the
    same run, so the ratio compares like with like. ``compile_mode``: compile a random-weight
    tower built here (see ``compile_image_encoder``; a backbone passed in is compiled by
    ``run_bench``).
    """
    n_images, n_proposals = (int(v) for v in spec.split(","))
    backbone = next((b for b in backbones if b.name == architecture_name), None)
    if backbone is None:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            model = clip.model.CLIP(**(architecture or RN50X16_CONFIG)).eval()
        model = prepare_for_device(model, torch.device(device))
        backbone = ClipBackbone(name=f"{architecture_name} (random weights)", model=model,
                                preprocess=pil_preprocess(model.visual.input_resolution),
                                device=torch.device(device), checksum="random",
                                checkpoint=Path("."), untrained=True)
        if compile_mode is not None:
            compile_image_encoder(backbone, compile_mode)
    resolution = backbone.input_resolution
    ceiling = encoder_ceiling(backbone, batch_size)
    pixels = torch.Generator(device=device).manual_seed(seed)
    geometry = torch.Generator().manual_seed(seed)  # boxes live in host memory, as proposals do
    _synchronize(device)
    started = time.perf_counter()
    pending: list[torch.Tensor] = []
    n_pending = 0
    in_flight = None  # one batch encoding while the next images are drawn (as in the engine)
    encoded = 0
    for _ in range(n_images):
        image = torch.randint(0, 256, (3, 480, 640), generator=pixels, device=device,
                              dtype=torch.uint8)
        corner = torch.rand(n_proposals, 2, generator=geometry) * torch.tensor([448.0, 336.0])
        extent = (0.1 + 0.3 * torch.rand(n_proposals, 2, generator=geometry)
                  ) * torch.tensor([640.0, 480.0])
        boxes = torch.cat([corner, corner + extent], dim=1)
        pending.append(prompt_inputs(image, boxes, STUDY_VARIANTS, resolution, device=device))
        n_pending += len(pending[-1])
        if n_pending >= batch_size:
            # Whole batches only: the rest waits for the next images (a small batch costs
            # a GPU nearly as much time as a full one).
            inputs = torch.cat(pending)
            whole = len(inputs) // batch_size * batch_size
            queued = backbone.queue_images(inputs[:whole], batch_size)
            encoded += whole
            if in_flight is not None:
                in_flight.result()
            in_flight, pending = queued, [inputs[whole:]]
            n_pending = len(inputs) - whole
    if n_pending:
        backbone.queue_images(torch.cat(pending), batch_size).result()
        encoded += n_pending
    if in_flight is not None:
        in_flight.result()
    _synchronize(device)
    seconds = time.perf_counter() - started
    rate = per_second(encoded, seconds)
    return {"images": n_images, "proposals_per_image": n_proposals, "visual_prompts": encoded,
            "image_size": [640, 480], "architecture": architecture_name,
            "random_weights": backbone.untrained, "resolution": resolution,
            "compile": compile_mode,
            "seconds": round(seconds, 3), "visual_prompts_per_s": rate,
            "images_per_s": per_second(n_images, seconds), "encoder_ceiling": ceiling,
            "share_of_ceiling": (round(rate / ceiling["visual_prompts_per_s"], 3)
                                 if rate and ceiling["visual_prompts_per_s"] else None)}



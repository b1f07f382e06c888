"""The evaluation engine: run a method over a split, score it, write one results file.

One prediction per expression. Expressions are grouped by image so that proposals and visual
prompts are computed once per image, and the method is asked once per referred object (see
``predict_per_ref``). The results file holds the metrics, the full config, the
provenance (package version, git commit, checkpoint checksums, data root, whether the weights
are untrained and the data synthetic) and every per-expression prediction.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from .backbones import ClipBackbone, load_clips
from .baseline import crop_request, request_embeddings
from .dataset import DatasetError, RefCOCOg, RefItem, image_problems
from .io_utils import atomic_write_json, cache_dir
from .layouts import DEFAULT_LAYOUT, add_layout_arguments, layout_from_args
from .methods import (
    ENTITY_SCORERS,
    METHOD_NAMES,
    NEEDS_CLIP,
    BatchedMethod,
    EncodeRequest,
    GroundingMethod,
    canonical_method,
    make_method,
)
from .metrics import box_iou_pairs
from .options import (
    OutputPathError,
    check_output_file,
    check_output_folder,
    colour_type,
    device_type,
    float_in,
    non_negative_float,
    non_negative_int,
    positive_int,
    variants_type,
)
from .prediction import Prediction
from .prompt_cache import EmbeddingCache
from .proposals import Proposals, Proposer, make_proposer
from .red_circle import DEBIAS_AT_ZERO, VARIANT_FUSIONS
from .render import DEFAULT_PREPROCESS, DEFAULT_RENDER_BACKEND, PREPROCESS_MODES, RENDER_BACKENDS
from .results import honesty_label, provenance, results_document


def group_by_image(dataset: RefCOCOg, limit: int = 0) -> list[list[RefItem]]:
    """Expression items grouped by image, in dataset order; ``limit`` > 0 keeps the first N."""
    if dataset.view != "expression":
        raise ValueError("the engine evaluates one prediction per expression: use "
                         "view='expression'")
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    groups: dict[int, list[RefItem]] = {}
    for index in range(count):
        item = dataset[index]
        groups.setdefault(item.image_id, []).append(item)
    return list(groups.values())


def predict_per_ref(method: GroundingMethod, image: Image.Image, items: Sequence[RefItem],
                    proposals: Proposals) -> Prediction:
    """One image's prediction, asking ``method`` once per referred object.

    The interface every method can rely on: the expressions of one ``predict`` call belong to
    one ref (red-circle's debiasing averages over them, as the study did per ref), so an
    expression's answer never depends on the other refs of its image. Visual prompts are still
    computed once per image: the calls share the image, its proposals and the method's cache.
    Rows come back in the order of ``items``.
    """
    by_ref: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        by_ref.setdefault(item.ref_id, []).append(position)
    if len(by_ref) == 1:
        return method.predict(image, [it.sentence for it in items], proposals)
    parts = [(positions, method.predict(image, [items[i].sentence for i in positions],
                                        proposals))
             for positions in by_ref.values()]
    order = torch.tensor([i for positions, _ in parts for i in positions]).argsort()
    return Prediction(boxes=torch.cat([p.boxes for _, p in parts])[order],
                      chosen=torch.cat([p.chosen for _, p in parts])[order],
                      scores=torch.cat([p.scores for _, p in parts])[order])


def _crop_cosines(cache: EmbeddingCache, backbones: Sequence[ClipBackbone], image: Image.Image,
                  pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Crop cosine of each (predicted, ground-truth) pair, from the cache where the crops are
    already encoded (the engine encodes every ground-truth crop in its batches)."""
    request = crop_request(image, torch.cat([pred, gt]))
    total = torch.zeros(len(pred))
    for backbone in backbones:
        embeddings = request_embeddings(cache, backbone, request)
        total += (embeddings[:len(pred)] * embeddings[len(pred):]).sum(dim=-1)
    return total / len(backbones)


def _rows(items: Sequence[RefItem], image: Image.Image, proposals: Proposals,
          prediction: Prediction, metric_backbones: Sequence[ClipBackbone],
          metric_cache: EmbeddingCache) -> list[dict[str, Any]]:
    """The result rows of one image's expressions."""
    boxes = prediction.boxes.float()
    gt = torch.tensor([it.box for it in items], dtype=torch.float32)
    ious = box_iou_pairs(boxes, gt)
    cosines = (_crop_cosines(metric_cache, metric_backbones, image, boxes, gt).tolist()
               if metric_backbones else [None] * len(items))
    return [{
        "ref_id": item.ref_id,
        "sent_id": item.sent_id,
        "image_id": item.image_id,
        "ann_id": item.ann_id,
        "category": item.category,
        "sentence": item.sentence,
        "box": [round(float(v), 3) for v in boxes[k]],
        "gt_box": [round(float(v), 3) for v in item.box],
        "iou": round(float(ious[k]), 6),
        "cosine": None if cosines[k] is None else round(float(cosines[k]), 6),
        "chosen": int(prediction.chosen[k]),
        "n_proposals": len(proposals),
    } for k, item in enumerate(items)]


class _Encoding:
    """One set of backbones sharing a cache, and what it already holds (workers skip that)."""

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache) -> None:
        self.backbones = list(backbones)
        self.cache = cache
        self.resolutions = list(dict.fromkeys(b.input_resolution for b in self.backbones))
        self.cached = frozenset.intersection(*(cache.image_keys(b) for b in self.backbones))

    def prepare(self, request: EncodeRequest) -> dict[str, Any]:
        """The request's inputs not cached yet: keys, and model inputs per resolution, drawn
        on the backbones' device in the main process and on the CPU in a DataLoader worker
        (the main process copies them over from pinned memory)."""
        in_worker = torch.utils.data.get_worker_info() is not None
        device = "cpu" if in_worker else self.backbones[0].device
        first = {k: i for i, k in reversed(list(enumerate(request.keys)))}
        missing = [k for k in first if k not in self.cached]
        indices = [first[k] for k in missing]
        return {"keys": missing, "texts": request.texts,
                "pixels": [request.draw(r, indices, device) if indices else None
                           for r in self.resolutions]}

    def encode(self, prepared: Sequence[dict[str, Any]], batch_size: int) -> None:
        """Encode the prepared inputs of many images in shared batches, into the cache."""
        keys = [k for p in prepared for k in p["keys"]]
        texts = list(dict.fromkeys(t for p in prepared for t in p["texts"]))
        for backbone in self.backbones:
            which = self.resolutions.index(backbone.input_resolution)
            pixels = [p["pixels"][which] for p in prepared if p["pixels"][which] is not None]
            if pixels:
                vectors = backbone.encode_images(torch.cat(pixels), batch_size)
                self.cache.put_images(backbone, keys, vectors)
            if texts:
                self.cache.texts(backbone, texts)  # every distinct prompt in one text batch


def _encodings(method: GroundingMethod, metric_backbones: Sequence[ClipBackbone],
               metric_cache: EmbeddingCache) -> list[_Encoding]:
    """What the engine batches: the method's declared inputs and the metric's crops."""
    found = []
    if isinstance(method, BatchedMethod):
        found.append(_Encoding(method.backbones, method.cache))
    if metric_backbones:
        found.append(_Encoding(metric_backbones, metric_cache))
    return found


def _requests(method: GroundingMethod, metric_on: bool, items: Sequence[RefItem],
              image: Image.Image, proposals: Proposals) -> list[EncodeRequest]:
    requests = []
    if isinstance(method, BatchedMethod):
        requests.append(method.encode_request(image, [it.sentence for it in items], proposals))
    if metric_on:
        gt = torch.tensor(sorted({tuple(it.box) for it in items}), dtype=torch.float32)
        requests.append(crop_request(image, gt.reshape(-1, 4)))
    return requests


class _ImageGroups(torch.utils.data.Dataset):
    """One sample per image group, computed in a DataLoader worker when ``--workers`` > 0:
    the decoded image, its proposals (ground-truth proposals only: a detector stays in the
    main process) and the model inputs the method and the metric need encoded."""

    def __init__(self, groups: Sequence[Sequence[RefItem]], proposer: Proposer | None,
                 method: GroundingMethod, encodings: Sequence[_Encoding],
                 metric_on: bool) -> None:
        self.groups = groups
        self.proposer = proposer
        self.method = method
        self.encodings = encodings
        self.metric_on = metric_on

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = self.groups[index]
        image = items[0].image
        sample: dict[str, Any] = {"index": index, "image": image,
                                  "proposals": self.proposer(items[0], image) if self.proposer
                                  else None}
        if sample["proposals"] is not None:
            sample["prepared"] = _prepare(self.method, self.encodings, self.metric_on, items,
                                          image, sample["proposals"])
        return sample


def _prepare(method: GroundingMethod, encodings: Sequence[_Encoding], metric_on: bool,
             items: Sequence[RefItem], image: Image.Image, proposals: Proposals
             ) -> list[dict[str, Any]]:
    requests = _requests(method, metric_on, items, image, proposals)
    return [encoding.prepare(request)
            for encoding, request in zip(encodings, requests, strict=True)]


def _loader(dataset: _ImageGroups, workers: int) -> Iterable[dict[str, Any]]:
    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_identity,
                                       prefetch_factor=4, persistent_workers=False)


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def evaluate_groups(
    groups: Sequence[Sequence[RefItem]],
    method: GroundingMethod,
    proposer: Proposer,
    metric_backbones: Sequence[ClipBackbone] = (),
    progress: bool = False,
    *,
    batch_size: int | None = None,
    workers: int = 0,
    metric_cache: EmbeddingCache | None = None,
) -> list[dict[str, Any]]:
    """Per-expression prediction rows for the given image groups (no summary).

    ``batch_size=None`` and ``workers=0``: the plain loop, one image at a time. Otherwise
    images are decoded (and ground-truth proposals computed) in ``workers`` DataLoader
    processes, which also draw the model inputs each method declares through
    ``encode_request`` (and the ground-truth crops of the crop-cosine metric); the main
    process encodes them in batches of ``batch_size`` across images, filling the caches,
    before ``predict`` runs on cache hits. The rows are the same either way. ``predict`` is
    called once per referred object (``predict_per_ref``). ``metric_cache``: where the
    metric's crop embeddings go (the method's cache is a good choice: the baseline's crops
    are the metric's).
    """
    metric_cache = metric_cache if metric_cache is not None else EmbeddingCache(None)
    if batch_size is None and workers <= 0:
        return _evaluate_plain(groups, method, proposer, metric_backbones, metric_cache,
                               progress)
    in_worker = proposer if getattr(proposer, "name", None) == "gt" else None
    encodings = _encodings(method, metric_backbones, metric_cache)
    metric_on = bool(metric_backbones)
    dataset = _ImageGroups(groups, in_worker, method, encodings, metric_on)
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    n_pending = 0
    batch = batch_size or 1
    bar = tqdm(total=len(groups), desc=method.name, unit="image", disable=not progress,
               file=sys.stderr)

    # A detector runs in the main process (one model, on the GPU when there is one), so its
    # images' inputs are drawn here, in threads (Pillow and torch release the GIL). Ground-
    # truth proposals are drawn in the DataLoader workers instead.
    painters = (ThreadPoolExecutor(max_workers=max(1, workers))
                if encodings and in_worker is None else None)

    def detect_and_draw() -> None:
        todo = [s for s in pending if s["proposals"] is None]
        if not todo:
            return
        found = proposer.propose_many([groups[s["index"]][0] for s in todo],
                                      [s["image"] for s in todo])
        for sample, proposals in zip(todo, found, strict=True):
            sample["proposals"] = proposals
        if painters is not None:
            drawn = painters.map(lambda s: _prepare(method, encodings, metric_on,
                                                    groups[s["index"]], s["image"],
                                                    s["proposals"]), todo)
            for sample, prepared in zip(todo, drawn, strict=True):
                sample["prepared"] = prepared

    def flush() -> None:
        nonlocal n_pending
        detect_and_draw()
        for k, encoding in enumerate(encodings):
            encoding.encode([s["prepared"][k] for s in pending if "prepared" in s], batch)
        for sample in pending:
            items = groups[sample["index"]]
            proposals = (sample["proposals"] if sample["proposals"] is not None
                         else proposer(items[0], sample["image"]))
            prediction = predict_per_ref(method, sample["image"], items, proposals)
            rows.extend(_rows(items, sample["image"], proposals, prediction, metric_backbones,
                              metric_cache))
            bar.update(1)
        pending.clear()
        n_pending = 0

    # Images per detector batch: their prompts (up to max_det x variants each) are encoded
    # together, so a few images already fill an encoder batch.
    detector_chunk = max(1, batch // 8)
    try:
        for sample in _loader(dataset, workers):
            pending.append(sample)
            n_pending += (sum(len(p["keys"]) for p in sample.get("prepared", ()))
                          if in_worker is not None else 1)
            if not encodings or n_pending >= (batch if in_worker is not None
                                              else detector_chunk):
                flush()
        flush()
    finally:
        if painters is not None:
            painters.shutdown()
    bar.close()
    return rows


def _evaluate_plain(groups: Sequence[Sequence[RefItem]], method: GroundingMethod,
                    proposer: Proposer, metric_backbones: Sequence[ClipBackbone],
                    metric_cache: EmbeddingCache, progress: bool) -> list[dict[str, Any]]:
    """The reference loop: decode, propose and predict one image at a time."""
    rows: list[dict[str, Any]] = []
    for items in tqdm(groups, desc=method.name, unit="image", disable=not progress,
                      file=sys.stderr):
        image = items[0].image
        proposals = proposer(items[0], image)
        prediction = predict_per_ref(method, image, items, proposals)
        rows.extend(_rows(items, image, proposals, prediction, metric_backbones, metric_cache))
    return rows


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with WORLD_SIZE > 1.

    Gloo on CPU, NCCL when CUDA is available. A single process returns (0, 1) and never touches
    ``torch.distributed``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _gather_rows(indexed: list[tuple[int, int, dict[str, Any]]], world: int
                 ) -> list[dict[str, Any]]:
    """Every rank's (group index, position, row) triples, in the single-process order."""
    if world > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, indexed)
        indexed = [entry for part in parts for entry in part]
    indexed.sort(key=lambda entry: (entry[0], entry[1]))
    return [row for _, _, row in indexed]


def evaluate(
    dataset: RefCOCOg,
    method: GroundingMethod,
    proposer: Proposer,
    backbones: Sequence[ClipBackbone] = (),
    *,
    limit: int = 0,
    progress: bool = False,
    threshold: float = 0.5,
    config: dict[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``method`` on ``dataset`` and return the results document.

    ``batch_size`` / ``workers``: see ``evaluate_groups`` (same rows, faster). Under torchrun
    (WORLD_SIZE > 1) each rank evaluates the image groups ``i`` with ``i % world == rank`` and
    every rank returns the full document, rows in single-process order; only ``"timing"``
    differs from a single-process run.
    """
    groups = group_by_image(dataset, limit)
    rank, world = distributed_context()
    mine = list(range(rank, len(groups), world))
    started = time.perf_counter()
    shard_rows = evaluate_groups([groups[i] for i in mine], method, proposer, backbones,
                                 progress=progress and rank == 0, batch_size=batch_size,
                                 workers=workers)
    # Tag each row with its image group and position, so rank 0 can restore the order.
    indexed, cursor = [], 0
    for i in mine:
        for position in range(len(groups[i])):
            indexed.append((i, position, shard_rows[cursor]))
            cursor += 1
    rows = _gather_rows(indexed, world)
    elapsed = time.perf_counter() - started
    return results_document(
        rows, threshold=threshold,
        config={"method": method.config(), "proposals": proposer.config(),
                "clip": [b.name for b in backbones], "split": dataset.split, "limit": limit,
                "threshold": threshold, **(config or {})},
        provenance=provenance(dataset.root, dataset.split, backbones, proposer,
                              getattr(dataset, "layout", DEFAULT_LAYOUT)),
        timing={"seconds": round(elapsed, 3), "images": len(groups), "expressions": len(rows),
                "world_size": world, "workers": workers, "batch_size": batch_size},
    )


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``bench``."""
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    add_layout_arguments(parser, split=True)
    parser.add_argument("--method", default="red-circle", choices=METHOD_NAMES,
                        type=canonical_method, help="colour-* is accepted for color-*")
    parser.add_argument("--proposals", default="gt",
                        help="'gt' (ground-truth boxes), a YOLO name (yolov8s, as the study's "
                        "final proposal; yolov5su stands in for the study's torch-hub yolov5s, "
                        "which cannot be loaded offline), a .pt path, 'tiny-yolov8s' (embedded, "
                        "untrained), or 'dets:PATH' (a detections JSON file as MAttNet and "
                        "ReCLIP use)")
    parser.add_argument("--clip", default="tiny-rn",
                        help="comma-separated CLIP backbones, ensembled: names (RN50x16, "
                        "ViT-B/32), checkpoint paths, tiny-rn / tiny-vit (embedded, untrained) or "
                        "toy-rn (embedded, trained here on the synthetic world)")
    detector = parser.add_argument_group(
        "detector options (a YOLO --proposals; default: the study's settings, YOLOv8: conf "
        "0.25, iou 0.7, max-det 300; YOLOv5 names: the torch-hub yolov5s's 0.25, 0.45, 1000)")
    detector.add_argument("--conf", type=float_in(0.0, 1.0), default=None,
                          help="confidence threshold")
    detector.add_argument("--iou", type=float_in(0.0, 1.0), default=None, help="NMS IoU threshold")
    detector.add_argument("--max-det", type=positive_int, default=None, help="most boxes per image")
    parser.add_argument("--device", default="cpu", type=device_type)
    parser.add_argument("--limit", type=non_negative_int, default=0,
                        help="first N expressions (0 = all)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="CLIP image batch size; red-circle batches visual prompts across "
                        "images")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes for image decoding, ground-truth "
                        "proposals and visual-prompt rendering (0 = in the main process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="regressor checkpoint (method regressor)")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the on-disk embedding cache")
    red = parser.add_argument_group("red-circle options")
    red.add_argument("--variants", default="blur,blur_gray", type=variants_type)
    red.add_argument("--blur-radius", type=non_negative_float, default=20.0)
    red.add_argument("--stroke-colour", "--stroke-color", dest="stroke_colour", default="red",
                     type=colour_type)
    red.add_argument("--stroke-width", type=positive_int, default=3)
    red.add_argument("--marker", default="ellipse", choices=("ellipse", "rectangle", "none"))
    red.add_argument("--n-debias", type=non_negative_int, default=5000,
                     help="debias prompts drawn with replacement from 'This is ' + every "
                     "training expression in file order, by numpy default_rng(--seed).choice; "
                     "each ref's scores minus the column mean over its own prompts and these "
                     "(the study: 5000)")
    red.add_argument("--debias-at-zero", default="none", choices=DEBIAS_AT_ZERO,
                     help="with --n-debias 0: 'none' skips debiasing; 'own-prompts' subtracts "
                     "the column mean over the ref's own prompts (the study's formula at N=0)")
    red.add_argument("--variant-fusion", default="max", choices=VARIANT_FUSIONS,
                     help="how the variants of a proposal combine: max (the study's code) or "
                     "mean (the study's prose)")
    red.add_argument("--area-filter", type=float_in(0.0, 1.0, low_open=True), default=None,
                     help="drop proposals covering at least this share of the image (study: 0.8)")
    red.add_argument("--class-prior", action="store_true")
    red.add_argument("--render-size", type=positive_int, default=None,
                     help="render visual prompts at this short side (approximation)")
    red.add_argument("--render-backend", default=DEFAULT_RENDER_BACKEND, choices=RENDER_BACKENDS,
                     help="draw visual prompts as tensor operations on the device (torch) or "
                     "with Pillow, the reference (pil)")
    red.add_argument("--preprocess", default=DEFAULT_PREPROCESS, choices=PREPROCESS_MODES,
                     help="how a whole image becomes CLIP's square input: CLIP's resize + "
                     "centre crop, or a resize of the whole image to the square (no crop)")
    rel = parser.add_argument_group("relations options")
    rel.add_argument("--entity-scorer", default="red-circle", choices=ENTITY_SCORERS,
                     help="what scores each noun phrase against each proposal (red-circle takes "
                     "the red-circle options above)")
    rel.add_argument("--no-labels", action="store_true",
                     help="ignore the proposals' class labels (ground-truth categories, YOLO "
                     "class names)")
    rel.add_argument("--label-floor", type=float, default=0.0,
                     help="weight of a proposal whose label does not name the noun")
    rel.add_argument("--temperature", type=float, default=0.01,
                     help="softmax temperature of the entity scores (0.01: CLIP's logit scale)")
    rel.add_argument("--superlative-rule", default="exclusive", choices=("exclusive", "reclip"))


def uses_debias_pool(args: argparse.Namespace) -> bool:
    """Whether the method runs red-circle (itself, or as the relations method's entity scorer),
    which draws its debiasing sample from the training expressions."""
    return args.method == "red-circle" or (args.method == "relations"
                                           and args.entity_scorer == "red-circle")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.method == "relations":
        return {"entity_scorer": args.entity_scorer, "use_labels": not args.no_labels,
                "label_floor": args.label_floor, "temperature": args.temperature,
                "superlative_rule": args.superlative_rule,
                "scorer_options": (_red_circle_options(args)
                                   if args.entity_scorer == "red-circle" else {})}
    if args.method != "red-circle":
        return {}
    return _red_circle_options(args)


def _red_circle_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"variants": tuple(v for v in args.variants.split(",") if v),
            "blur_radius": args.blur_radius, "stroke_colour": args.stroke_colour,
            "stroke_width": args.stroke_width, "marker": args.marker,
            "n_debias": args.n_debias, "debias_at_zero": args.debias_at_zero,
            "variant_fusion": args.variant_fusion, "area_filter": args.area_filter,
            "class_prior": args.class_prior, "render_size": args.render_size,
            "render_backend": args.render_backend, "preprocess": args.preprocess}


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    """The detector settings given on the command line (the rest stay the study's)."""
    given = {key: getattr(args, key) for key in ("conf", "iou", "max_det")
             if getattr(args, key, None) is not None}
    if given and (args.proposals == "gt" or args.proposals.startswith("dets:")):
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise SystemExit(f"{flags}: detector settings, but --proposals {args.proposals} runs "
                         "no detector")
    return given


def setup(args: argparse.Namespace) -> tuple[RefCOCOg, GroundingMethod, Proposer,
                                             list[ClipBackbone], EmbeddingCache]:
    """Dataset, method, proposer, backbones and cache from the shared command-line options."""
    from .minidata import default_data_root

    layout = layout_from_args(args)  # a combination the family lacks fails before any loading
    detector = detector_options(args)  # a misplaced flag fails before any loading
    data_root = args.data_root or default_data_root()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.device == "cuda":
        # torchrun: one GPU per local rank.
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dataset = RefCOCOg(data_root, args.split, view="expression", dataset=layout.dataset,
                       split_by=layout.split_by)
    proposer = make_proposer(args.proposals, device=args.device, **detector)
    check_proposer(proposer, dataset)
    needs_clip = args.method in NEEDS_CLIP
    backbones = load_clips(args.clip, device=args.device) if args.clip else []
    if needs_clip and not backbones:
        raise SystemExit(f"method {args.method} needs --clip")
    rank = int(os.environ.get("RANK", "0"))
    cache = EmbeddingCache(None if args.no_cache else cache_dir() / "embeddings",
                           batch_size=args.batch_size, shard=f"rank{rank}" if rank else "")
    debias_pool = (RefCOCOg(data_root, "train", view="expression", dataset=layout.dataset,
                            split_by=layout.split_by).sentences()
                   if uses_debias_pool(args) else ())
    method = make_method(args.method, backbones, cache=cache, debias_pool=debias_pool,
                         checkpoint=args.checkpoint, seed=args.seed, **method_options(args))
    return dataset, method, proposer, backbones, cache


def check_proposer(proposer: Proposer, dataset: RefCOCOg) -> None:
    """Let a proposer that reads a file check it against the split before any long work."""
    check = getattr(proposer, "check_dataset", None)
    if check is not None:
        check(dataset.records)


def preflight(args: argparse.Namespace, dataset: RefCOCOg, cache: EmbeddingCache,
              backbones: Sequence[ClipBackbone]) -> None:
    """What can be checked before the run: the cache files, a split with expressions, and
    every image the run touches (fully decoded, size after EXIF orientation against
    instances.json, as ``validate`` does). Image problems refuse the run, or with
    ``--warn-data-problems`` are printed as warnings."""
    for backbone in backbones:
        for path in cache.paths(backbone.checksum):
            if path.exists() and not path.is_file():
                raise OutputPathError(f"{path}: the embedding cache file is not a file; "
                                      "remove it or pass --no-cache")
            check_output_folder(path.parent, "embedding cache folder")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.root}: the {dataset.split} split has no expressions; "
                           "nothing to evaluate")
    records = [items[0].record for items in group_by_image(dataset, args.limit)]
    problems = image_problems(records, workers=max(4, args.workers))
    if not problems:
        return
    listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more"
                                            if len(problems) > 20 else "")
    if not args.warn_data_problems:
        raise DatasetError(f"{len(problems)} image problem(s) in the images this run "
                           f"touches (`refcocog-tools validate` lists them all):\n  {listing}"
                           "\npass --warn-data-problems to evaluate anyway")
    print(f"warning: {len(problems)} image problem(s); evaluating anyway "
          f"(--warn-data-problems):\n  {listing}", file=sys.stderr)


def _run_evaluate(args: argparse.Namespace) -> int:
    # The results file and the cache folder are checked before any work, not after it.
    check_output_file(args.out, "results file")
    if not args.no_cache:
        check_output_folder(cache_dir() / "embeddings", "embedding cache folder")
    rank, world = distributed_context()
    try:
        dataset, method, proposer, backbones, cache = setup(args)
        preflight(args, dataset, cache, backbones)
        progress = rank == 0 and not args.quiet and sys.stderr.isatty()
        results = evaluate(dataset, method, proposer, backbones, limit=args.limit,
                           progress=progress, batch_size=args.batch_size, workers=args.workers,
                           config={"device": args.device, "batch_size": args.batch_size,
                                   "seed": args.seed, "clip_spec": args.clip})
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    # Every rank keeps the embeddings it computed, in its own shard of the cache.
    cache.save()
    if rank != 0:
        return 0  # rank 0 holds every row and alone writes the results
    atomic_write_json(args.out, results)
    m = results["metrics"]
    print(f"{method.name}: mIoU {m['miou']:.3f}  acc@0.5 {m['accuracy']:.3f}  "
          f"cosine {m['cosine'] if m['cosine'] is None else round(m['cosine'], 3)}  "
          f"n={m['n']}{honesty_label(results['provenance'])}")
    print(f"results written to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="run a grounding method over a split and write a results file",
        description="Run a grounding method over a split; write metrics, config, provenance "
        "and per-expression predictions to a JSON results file (atomically).")
    add_common_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="results JSON path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--warn-data-problems", action="store_true",
                        help="evaluate even when images of the run have problems `validate` "
                        "reports (unreadable, size differs from instances.json): print them "
                        "as warnings instead of refusing")
    parser.set_defaults(func=_run_evaluate)

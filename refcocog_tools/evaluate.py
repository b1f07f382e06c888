"""The evaluation engine: run a method over a split, score it, write one results file.

One prediction per expression. Expressions are grouped by image so that proposals and visual
prompts are computed once per image. The results file holds the metrics, the full config, the
provenance (package version, git commit, checkpoint checksums, data root, whether the weights
are untrained and the data synthetic) and every per-expression prediction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__
from .backbones import ClipBackbone, load_clips
from .cache import EmbeddingCache
from .dataset import INSTANCES_FILE, RefCOCOg, RefItem
from .io_utils import atomic_write_json, cache_dir
from .methods import METHOD_NAMES, NEEDS_CLIP, GroundingMethod, make_method
from .metrics import box_iou_pairs, crop_cosine, summarize
from .proposals import Proposer, make_proposer


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


def evaluate_groups(
    groups: Sequence[Sequence[RefItem]],
    method: GroundingMethod,
    proposer: Proposer,
    metric_backbones: Sequence[ClipBackbone] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per-expression prediction rows for the given image groups (no summary)."""
    rows: list[dict[str, Any]] = []
    for items in tqdm(groups, desc=method.name, unit="image", disable=not progress,
                      file=sys.stderr):
        image = items[0].image
        proposals = proposer(items[0])
        prediction = method.predict(image, [it.sentence for it in items], proposals)
        gt = torch.tensor([it.box for it in items], dtype=torch.float32)
        ious = box_iou_pairs(prediction.boxes, gt)
        cosines = (crop_cosine([image] * len(items), prediction.boxes, gt, metric_backbones)
                   if metric_backbones else [None] * len(items))
        for k, item in enumerate(items):
            rows.append({
                "ref_id": item.ref_id,
                "sent_id": item.sent_id,
                "image_id": item.image_id,
                "ann_id": item.ann_id,
                "category": item.category,
                "sentence": item.sentence,
                "box": [round(float(v), 3) for v in prediction.boxes[k]],
                "gt_box": [round(float(v), 3) for v in item.box],
                "iou": round(float(ious[k]), 6),
                "cosine": None if cosines[k] is None else round(float(cosines[k]), 6),
                "chosen": int(prediction.chosen[k]),
                "n_proposals": len(proposals),
            })
    return rows


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def is_synthetic(data_root: str | Path) -> bool:
    """True for the embedded dataset (its instances.json says so in ``info.synthetic``)."""
    try:
        info = json.loads((Path(data_root) / "annotations" / INSTANCES_FILE).read_text())["info"]
        return bool(info.get("synthetic", False))
    except (OSError, KeyError, TypeError, ValueError):
        return False


def provenance(data_root: str | Path, split: str, backbones: Sequence[ClipBackbone],
               proposer: Proposer) -> dict[str, Any]:
    untrained = any(b.untrained for b in backbones) or bool(getattr(proposer, "untrained", False))
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "data_root": str(data_root),
        "split": split,
        "synthetic_data": is_synthetic(data_root),
        "untrained": untrained,
        "clip": [{"name": b.name, "checksum": b.checksum, "untrained": b.untrained}
                 for b in backbones],
        "proposals": {"name": proposer.name, "checksum": getattr(proposer, "checksum", None),
                      "untrained": bool(getattr(proposer, "untrained", False))},
    }


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
) -> dict[str, Any]:
    """Evaluate ``method`` on ``dataset`` and return the results document."""
    groups = group_by_image(dataset, limit)
    started = time.perf_counter()
    rows = evaluate_groups(groups, method, proposer, backbones, progress=progress)
    elapsed = time.perf_counter() - started
    return {
        "metrics": summarize(rows, threshold=threshold),
        "config": {"method": method.config(), "proposals": proposer.config(),
                   "clip": [b.name for b in backbones], "split": dataset.split, "limit": limit,
                   "threshold": threshold, **(config or {})},
        "provenance": provenance(dataset.root, dataset.split, backbones, proposer),
        "timing": {"seconds": round(elapsed, 3), "images": len(groups), "expressions": len(rows)},
        "predictions": rows,
    }


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``bench``."""
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--method", default="red-circle", choices=METHOD_NAMES)
    parser.add_argument("--proposals", default="gt",
                        help="'gt' (ground-truth boxes), a YOLO name (yolov8s, yolov5su), a .pt "
                        "path, or 'tiny-yolov8s' (embedded, untrained)")
    parser.add_argument("--clip", default="tiny-rn",
                        help="comma-separated CLIP backbones, ensembled: names (RN50x16, "
                        "ViT-B/32), checkpoint paths, or tiny-rn / tiny-vit (embedded, untrained)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=0, help="first N expressions (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64, help="CLIP image batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="regressor checkpoint (method regressor)")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the on-disk embedding cache")
    red = parser.add_argument_group("red-circle options")
    red.add_argument("--variants", default="blur,blur_gray")
    red.add_argument("--blur-radius", type=float, default=20.0)
    red.add_argument("--stroke-colour", default="red")
    red.add_argument("--stroke-width", type=int, default=3)
    red.add_argument("--marker", default="ellipse", choices=("ellipse", "rectangle", "none"))
    red.add_argument("--n-debias", type=int, default=5000)
    red.add_argument("--area-filter", type=float, default=None,
                     help="drop proposals covering at least this share of the image (study: 0.8)")
    red.add_argument("--class-prior", action="store_true")
    red.add_argument("--render-size", type=int, default=None,
                     help="render visual prompts at this short side (approximation)")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.method != "red-circle":
        return {}
    return {"variants": tuple(v for v in args.variants.split(",") if v),
            "blur_radius": args.blur_radius, "stroke_colour": args.stroke_colour,
            "stroke_width": args.stroke_width, "marker": args.marker,
            "n_debias": args.n_debias, "area_filter": args.area_filter,
            "class_prior": args.class_prior, "render_size": args.render_size}


def setup(args: argparse.Namespace) -> tuple[RefCOCOg, GroundingMethod, Proposer,
                                             list[ClipBackbone], EmbeddingCache]:
    """Dataset, method, proposer, backbones and cache from the shared command-line options."""
    from .minidata import default_data_root

    data_root = args.data_root or default_data_root()
    dataset = RefCOCOg(data_root, args.split, view="expression")
    needs_clip = args.method in NEEDS_CLIP
    backbones = load_clips(args.clip, device=args.device) if args.clip else []
    if needs_clip and not backbones:
        raise SystemExit(f"method {args.method} needs --clip")
    cache = EmbeddingCache(None if args.no_cache else cache_dir() / "embeddings",
                           batch_size=args.batch_size)
    debias_pool = (RefCOCOg(data_root, "train", view="expression").sentences()
                   if args.method == "red-circle" else ())
    method = make_method(args.method, backbones, cache=cache, debias_pool=debias_pool,
                         checkpoint=args.checkpoint, seed=args.seed, **method_options(args))
    proposer = make_proposer(args.proposals, device=args.device)
    return dataset, method, proposer, backbones, cache


def _run_evaluate(args: argparse.Namespace) -> int:
    dataset, method, proposer, backbones, cache = setup(args)
    progress = not args.quiet and sys.stderr.isatty()
    results = evaluate(dataset, method, proposer, backbones, limit=args.limit, progress=progress,
                       config={"device": args.device, "batch_size": args.batch_size,
                               "seed": args.seed, "clip_spec": args.clip})
    cache.save()
    atomic_write_json(args.out, results)
    m = results["metrics"]
    label = ("untrained weights, synthetic data" if results["provenance"]["untrained"]
             and results["provenance"]["synthetic_data"] else
             "untrained weights" if results["provenance"]["untrained"] else
             "synthetic data" if results["provenance"]["synthetic_data"] else "")
    print(f"{method.name}: mIoU {m['miou']:.3f}  acc@0.5 {m['accuracy']:.3f}  "
          f"cosine {m['cosine'] if m['cosine'] is None else round(m['cosine'], 3)}  "
          f"n={m['n']}" + (f"  [{label}: not a RefCOCOg result]" if label else ""))
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
    parser.set_defaults(func=_run_evaluate)

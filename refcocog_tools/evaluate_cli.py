"""The ``evaluate`` command: its arguments (shared with ``bench``), the run they describe, the
checks before it and the one-line summary after it.

Arguments become typed values here and nowhere else: ``method_options`` turns them into the
method's options object (``registry``), whose defaults are also the arguments' defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .annotations import DatasetError
from .backbones import ClipBackbone, load_clips
from .dataset import RefCOCOg, image_problems
from .evaluate import check_proposer, distributed_context, evaluate, group_by_image
from .io_utils import atomic_write_json, cache_dir
from .layouts import add_layout_arguments, layout_from_args
from .methods import GroundingMethod
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
from .prompt_cache import EmbeddingCache
from .proposals import Proposer, make_proposer
from .red_circle import DEBIAS_AT_ZERO, VARIANT_FUSIONS, RedCircleOptions
from .registry import (
    ENTITY_SCORERS,
    METHODS,
    NEEDS_CLIP,
    RelationsOptions,
    canonical_method,
    make_method,
)
from .regressors import RegressorOptions
from .render import PREPROCESS_MODES, RENDER_BACKENDS
from .results import honesty_label
from .visual_prompts import MARKER_SHAPES


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``bench``."""
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    add_layout_arguments(parser, split=True)
    parser.add_argument("--method", default="red-circle", choices=tuple(METHODS),
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
    red_circle = RedCircleOptions  # the defaults below are the options object's
    red = parser.add_argument_group("red-circle options")
    red.add_argument("--variants", default=",".join(red_circle.variants), type=variants_type)
    red.add_argument("--blur-radius", type=non_negative_float, default=red_circle.blur_radius)
    red.add_argument("--stroke-colour", "--stroke-color", dest="stroke_colour",
                     default=red_circle.stroke_colour, type=colour_type)
    red.add_argument("--stroke-width", type=positive_int, default=red_circle.stroke_width)
    red.add_argument("--marker", default=red_circle.marker, choices=MARKER_SHAPES)
    red.add_argument("--n-debias", type=non_negative_int, default=red_circle.n_debias,
                     help="debias prompts drawn with replacement from 'This is ' + every "
                     "training expression in file order, by numpy default_rng(--seed).choice; "
                     "each ref's scores minus the column mean over its own prompts and these "
                     "(the study: 5000)")
    red.add_argument("--debias-at-zero", default=red_circle.debias_at_zero,
                     choices=DEBIAS_AT_ZERO,
                     help="with --n-debias 0: 'none' skips debiasing; 'own-prompts' subtracts "
                     "the column mean over the ref's own prompts (the study's formula at N=0)")
    red.add_argument("--variant-fusion", default=red_circle.variant_fusion,
                     choices=VARIANT_FUSIONS,
                     help="how the variants of a proposal combine: max (the study's code) or "
                     "mean (the study's prose)")
    red.add_argument("--area-filter", type=float_in(0.0, 1.0, low_open=True),
                     default=red_circle.area_filter,
                     help="drop proposals covering at least this share of the image (study: 0.8)")
    red.add_argument("--class-prior", action="store_true", default=red_circle.class_prior)
    red.add_argument("--render-size", type=positive_int, default=red_circle.render_size,
                     help="render visual prompts at this short side (approximation)")
    red.add_argument("--render-backend", default=red_circle.render_backend,
                     choices=RENDER_BACKENDS,
                     help="draw visual prompts as tensor operations on the device (torch) or "
                     "with Pillow, the reference (pil)")
    red.add_argument("--preprocess", default=red_circle.preprocess, choices=PREPROCESS_MODES,
                     help="how a whole image becomes CLIP's square input: CLIP's resize + "
                     "centre crop, or a resize of the whole image to the square (no crop)")
    relations = RelationsOptions
    rel = parser.add_argument_group("relations options")
    rel.add_argument("--entity-scorer", default=relations.entity_scorer, choices=ENTITY_SCORERS,
                     help="what scores each noun phrase against each proposal (red-circle takes "
                     "the red-circle options above)")
    rel.add_argument("--no-labels", action="store_true",
                     help="ignore the proposals' class labels (ground-truth categories, YOLO "
                     "class names)")
    rel.add_argument("--label-floor", type=float, default=relations.label_floor,
                     help="weight of a proposal whose label does not name the noun")
    rel.add_argument("--temperature", type=float, default=relations.temperature,
                     help="softmax temperature of the entity scores (0.01: CLIP's logit scale)")
    rel.add_argument("--superlative-rule", default=relations.superlative_rule,
                     choices=("exclusive", "reclip"))


def uses_debias_pool(args: argparse.Namespace) -> bool:
    """Whether the method runs red-circle (itself, or as the relations method's entity scorer),
    which draws its debiasing sample from the training expressions."""
    return args.method == "red-circle" or (args.method == "relations"
                                           and args.entity_scorer == "red-circle")


def method_options(args: argparse.Namespace) -> Any:
    """The options object of ``args.method`` from the command line (see ``registry``)."""
    if args.method == "red-circle":
        return red_circle_options(args)
    if args.method == "relations":
        return RelationsOptions(
            entity_scorer=args.entity_scorer, use_labels=not args.no_labels,
            label_floor=args.label_floor, temperature=args.temperature,
            superlative_rule=args.superlative_rule,
            scorer_options=(red_circle_options(args) if args.entity_scorer == "red-circle"
                            else None))
    if args.method == "regressor":
        return RegressorOptions(checkpoint=args.checkpoint)
    return METHODS[args.method].options()


def red_circle_options(args: argparse.Namespace) -> RedCircleOptions:
    """The red-circle options given on the command line."""
    return RedCircleOptions(
        variants=tuple(v for v in args.variants.split(",") if v),
        blur_radius=args.blur_radius, stroke_colour=args.stroke_colour,
        stroke_width=args.stroke_width, marker=args.marker, n_debias=args.n_debias,
        debias_at_zero=args.debias_at_zero, variant_fusion=args.variant_fusion,
        area_filter=args.area_filter, class_prior=args.class_prior,
        render_size=args.render_size, render_backend=args.render_backend,
        preprocess=args.preprocess)


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
                           shard=f"rank{rank}" if rank else "")
    debias_pool = (RefCOCOg(data_root, "train", view="expression", dataset=layout.dataset,
                            split_by=layout.split_by).sentences()
                   if uses_debias_pool(args) else ())
    method = make_method(args.method, backbones, options=method_options(args), cache=cache,
                         debias_pool=debias_pool, seed=args.seed)
    return dataset, method, proposer, backbones, cache


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

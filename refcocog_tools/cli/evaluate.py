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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch.distributed as dist

from refcocog_tools.cli.options import (
    UsageError,
    add_layout_arguments,
    colour_type,
    device_type,
    float_in,
    layout_from_args,
    non_negative_float,
    non_negative_int,
    positive_int,
    variants_type,
)
from refcocog_tools.core.files import atomic_write_json, cache_dir
from refcocog_tools.core.output_paths import (
    OutputPathError,
    check_output,
    check_output_folder,
    output_lock,
)
from refcocog_tools.data.annotations import DatasetError, DuplicateIdError
from refcocog_tools.data.dataset import RefCOCOg, RefItem, image_problems
from refcocog_tools.engine.evaluate import (
    distributed_context,
    evaluate,
    group_by_image,
)
from refcocog_tools.engine.results import honesty_label
from refcocog_tools.engine.run import RunSpec, build_run
from refcocog_tools.engine.run_inputs import command_inputs
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.methods.red_circle import DEBIAS_AT_ZERO, VARIANT_FUSIONS, RedCircleOptions
from refcocog_tools.methods.registry import (
    ENTITY_SCORERS,
    METHODS,
    RelationsOptions,
    canonical_method,
)
from refcocog_tools.methods.regressor.method import RegressorOptions
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts.render import PREPROCESS_MODES, RENDER_BACKENDS
from refcocog_tools.prompts.visual_prompts import MARKER_SHAPES, WINDOW_SHAPES
from refcocog_tools.proposals.structures import Proposer


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``bench``."""
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    add_layout_arguments(parser, split=True)
    add_model_arguments(parser)
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
    add_method_option_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--proposals``, ``--clip``, the detector options and ``--device``
    (``evaluate``, ``bench``, ``ground``)."""
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


def add_method_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The red-circle and relations option groups (``evaluate``, ``bench``, ``ground``)."""
    red_circle = RedCircleOptions  # the defaults below are the options object's
    red = parser.add_argument_group("red-circle options")
    red.add_argument("--variants", default=",".join(red_circle.variants), type=variants_type)
    red.add_argument("--blur-radius", type=non_negative_float, default=red_circle.blur_radius)
    red.add_argument("--stroke-colour", "--stroke-color", dest="stroke_colour",
                     default=red_circle.stroke_colour, type=colour_type)
    red.add_argument("--stroke-width", type=positive_int, default=red_circle.stroke_width)
    red.add_argument("--marker", default=red_circle.marker, choices=MARKER_SHAPES,
                     help="what outlines a proposal: an ellipse or rectangle in its box, or "
                     "(proposals with masks) its mask's contour")
    red.add_argument("--window", default=red_circle.window, choices=WINDOW_SHAPES,
                     help="what stays sharp on a blurred / grayscale background: the "
                     "proposal's rectangle (the study), the ellipse in it, or (proposals with "
                     "masks) its mask: --variants blur --window mask is FGVP's blur reverse "
                     "mask")
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
        stroke_width=args.stroke_width, marker=args.marker, window=args.window,
        n_debias=args.n_debias,
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


def check_method_arguments(args: argparse.Namespace) -> None:
    """A method without what it cannot run without fails here, before any file is read."""
    if args.method == "regressor" and args.checkpoint is None:
        raise UsageError("--method regressor needs --checkpoint (the best.pt a "
                         "`refcocog-tools train-regressor` run wrote)")


def run_spec(args: argparse.Namespace) -> RunSpec:
    """The run the shared command-line options describe (``engine.run.RunSpec``); a bad
    combination fails here, before any file is read."""
    check_method_arguments(args)
    layout = layout_from_args(args)  # a combination the family lacks fails before any loading
    detector = detector_options(args)  # a misplaced flag fails before any loading
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.device == "cuda":
        # torchrun: one GPU per local rank.
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    rank = int(os.environ.get("RANK", "0"))
    return RunSpec(
        data_root=args.data_root, layout=layout, split=args.split, method=args.method,
        options=method_options(args), proposals=args.proposals, detector=detector,
        clip=args.clip, device=args.device, seed=args.seed,
        cache_dir=None if args.no_cache else cache_dir() / "embeddings",
        cache_shard=f"rank{rank}" if rank else "",
        keep_first_duplicates=bool(getattr(args, "warn_data_problems", False)))


def setup(args: argparse.Namespace) -> tuple[RefCOCOg, GroundingMethod, Proposer,
                                             list[ClipBackbone], EmbeddingCache]:
    """Dataset, method, proposer, backbones and cache from the shared command-line options
    (``run_spec`` then ``engine.run.build_run``).

    With ``--warn-data-problems`` a repeated id keeps the first record of the id (the
    dataset's ``problems`` name each repeat); otherwise it refuses the run.
    """
    spec = run_spec(args)
    try:
        run = build_run(spec)
    except DuplicateIdError as err:
        raise DuplicateIdError(f"{err}; pass --warn-data-problems to keep the first record "
                               "of each id and drop the later ones") from None
    dataset = run.dataset
    assert dataset is not None  # a spec's split, not records given directly
    if dataset.problems:
        print(f"warning: {len(dataset.problems)} repeated id(s); evaluating anyway "
              "(--warn-data-problems):\n  " + "\n  ".join(dataset.problems[:20]),
              file=sys.stderr)
    return dataset, run.method, run.proposer, run.backbones, run.cache


def preflight(args: argparse.Namespace, dataset: RefCOCOg, cache: EmbeddingCache,
              backbones: Sequence[ClipBackbone],
              groups: Sequence[Sequence[RefItem]] | None = None) -> list[str]:
    """What can be checked before the run: the cache files, a split with expressions, and
    every image the run touches (``groups``: the run's image groups, ``group_by_image`` of
    the split by default): its header read, not its pixels (the engine decodes each image
    once and names one that fails to decode), its size after EXIF orientation against
    instances.json. Image problems refuse the run, or with ``--warn-data-problems`` are
    printed as warnings and returned (for the results' ``problems``): an image that cannot
    be read is then skipped by the run."""
    for backbone in backbones:
        for path in cache.paths(backbone.checksum):
            if path.exists() and not path.is_file():
                raise OutputPathError(f"{path}: the embedding cache file is not a file; "
                                      "remove it or pass --no-cache")
            check_output_folder(path.parent, "embedding cache folder")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.root}: the {dataset.split} split has no expressions; "
                           "nothing to evaluate")
    if groups is None:
        groups = group_by_image(dataset, args.limit)
    records = [items[0].record for items in groups]
    problems = image_problems(records, workers=max(4, args.workers), decode=False)
    if not problems:
        return []
    listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more"
                                            if len(problems) > 20 else "")
    if not args.warn_data_problems:
        raise DatasetError(f"{len(problems)} image problem(s) in the images this run "
                           f"touches (`refcocog-tools validate` lists them all):\n  {listing}"
                           "\npass --warn-data-problems to evaluate anyway")
    print(f"warning: {len(problems)} image problem(s); evaluating anyway, without the images "
          f"that cannot be decoded (--warn-data-problems):\n  {listing}", file=sys.stderr)
    return problems


def command_inputs_of(args: argparse.Namespace) -> Any:
    """The files and folders an ``evaluate`` / ``bench`` run reads: what its output may never
    replace (``output_paths.command_inputs``)."""
    layout = layout_from_args(args)
    # No --data-root: the embedded data root, which lies in the cache command_inputs guards.
    return command_inputs(data_root=args.data_root,
                          refs_file=layout.refs_file, clip=args.clip or "",
                          proposals=args.proposals, checkpoint=args.checkpoint)


def check_results_file(args: argparse.Namespace, what: str) -> None:
    """``--out`` passes the output door (``output_paths.check_output``) before any work."""
    if args.out is not None:
        check_output(args.out, what, command_inputs_of(args), force=args.force)


def _run_evaluate(args: argparse.Namespace) -> int:
    check_method_arguments(args)  # before anything is created or read
    # The results file and the cache folder are checked before any work, not after it.
    check_results_file(args, "results file")
    if not args.no_cache:
        check_output_folder(cache_dir() / "embeddings", "embedding cache folder")
    rank, world = distributed_context()
    # Rank 0 alone writes the results, so it alone holds the results file's lock.
    with output_lock(args.out, "results file") if rank == 0 else nullcontext():
        return _evaluate_and_write(args, rank, world)


def _evaluate_and_write(args: argparse.Namespace, rank: int, world: int) -> int:
    try:
        dataset, method, proposer, backbones, cache = setup(args)
        groups = group_by_image(dataset, args.limit)  # once: the check and the run share it
        found = preflight(args, dataset, cache, backbones, groups)
        progress = rank == 0 and not args.quiet and sys.stderr.isatty()
        results = evaluate(dataset, method, proposer, backbones, limit=args.limit,
                           progress=progress, batch_size=args.batch_size, workers=args.workers,
                           config={"device": args.device, "batch_size": args.batch_size,
                                   "seed": args.seed, "clip_spec": args.clip},
                           skip_unreadable_images=args.warn_data_problems,
                           data_problems=found, groups=groups)
    finally:
        if world > 1:
            if dist.is_initialized():
                dist.destroy_process_group()
    # Every rank keeps the embeddings it computed, in its own shard of the cache.
    cache.save()
    if rank != 0:
        return 0  # rank 0 holds every row and alone writes the results
    atomic_write_json(args.out, results)
    skipped = [p for p in results["problems"] if "; skipped: " in p]
    if skipped:
        print(f"warning: {len(skipped)} image(s) could not be decoded and were skipped "
              f"(--warn-data-problems), first: {skipped[0]}; the results' problems list them",
              file=sys.stderr)
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
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out (never one of the run's own inputs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--warn-data-problems", action="store_true",
                        help="evaluate even when the data has problems `validate` reports: "
                        "an image that cannot be decoded is skipped, one whose size differs "
                        "from instances.json is evaluated, and of a repeated image, "
                        "annotation, ref or sentence id the first record is kept, the later "
                        "ones dropped; each is printed as a warning and listed in the "
                        "results' problems instead of refusing")
    parser.set_defaults(func=_run_evaluate)

"""The ``train-toy-clip`` command: train the toy CLIP on the synthetic world and pack it."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from refcocog_tools.cli.options import float_in, int_at_least, non_negative_int, positive_int
from refcocog_tools.core.output_paths import check_output, output_lock
from refcocog_tools.engine.results import TOY_LABEL
from refcocog_tools.engine.run_inputs import command_inputs
from refcocog_tools.toy.config import ToyClipConfig
from refcocog_tools.toy.toy_clip import train_toy_clip, write_checkpoint
from refcocog_tools.toy.training_pairs import build_pairs


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sidecar = Path(str(out) + ".json")
    inputs = command_inputs()  # the tool's caches and embedded weights
    check_output(out, "checkpoint", inputs, force=args.force,
                 earlier=[p for p in (out, sidecar) if p.exists()])
    check_output(sidecar, "checkpoint's sidecar", inputs, force=True)
    with output_lock(out, "checkpoint"):
        return _train_and_write(args, out)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = ToyClipConfig()
    parser = subparsers.add_parser(
        "train-toy-clip", help="train a small CLIP on the embedded world's train split",
        description="Train the real clip.model.CLIP class at a small size, contrastively, on "
        "image-caption pairs from the train split of a generated embedded dataset (whole "
        "images, object crops, red-ellipse-marked images, objects on painted backgrounds). "
        "Deterministic; a few minutes on a CPU. The result is toy weights for the synthetic "
        "world, never a RefCOCOg model.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    parser.add_argument("--images", type=int_at_least(3), default=defaults.data_images,
                        help="images generated; the train split (60%%) is used")
    parser.add_argument("--data-seed", type=non_negative_int, default=defaults.data_seed)
    parser.add_argument("--marked-share", type=float_in(0.0, 1.0), default=defaults.marked_share,
                        help="share of referred objects also shown red-ellipse-marked")
    parser.add_argument("--painted-share", type=float_in(0.0, 1.0),
                        default=defaults.painted_share,
                        help="share of referred objects also shown on a plain painted "
                        "background")
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed)
    parser.add_argument("--steps", type=positive_int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int_at_least(2), default=defaults.batch_size)
    parser.add_argument("--batch-by-image", action=argparse.BooleanOptionalAction,
                        default=defaults.batch_by_image,
                        help="compose batches of whole images' pairs (twins meet as negatives)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=_run)


def _train_and_write(args: argparse.Namespace, out: Path) -> int:
    defaults = ToyClipConfig()
    config = dataclasses.replace(
        defaults, data_images=args.images, data_seed=args.data_seed,
        marked_share=args.marked_share, painted_share=args.painted_share, seed=args.seed,
        steps=args.steps, batch_size=args.batch_size, batch_by_image=args.batch_by_image)
    if config.data_seed == 0:
        print("note: data seed 0 is the book's dataset seed; its first images are the book's "
              "images, and those of its val/test splits may be training images here")
    started = time.perf_counter()
    pairs = build_pairs(config)
    print(f"training pairs: {pairs.counts()} from {len(set(pairs.image_ids))} train images "
          f"(seed {config.data_seed}, {config.data_images} generated)")
    model, metadata = train_toy_clip(config, pairs, progress=not args.quiet)
    seconds = time.perf_counter() - started
    checksum = write_checkpoint(out, model, metadata, seconds)
    print(f"wrote {out} (sha256 {checksum}) in {seconds:.0f} s  [{TOY_LABEL}]")
    return 0

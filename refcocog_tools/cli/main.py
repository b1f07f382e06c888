"""The ``refcocog-tools`` command line.

Each command has a module in this folder whose ``add_parser(subparsers)`` registers its parser
and sets ``func``; this file holds the dataset commands and assembles the rest, by name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from refcocog_tools import __version__
from refcocog_tools.cli import bench, evaluate, ground, toy_clip, train_regressor
from refcocog_tools.cli.options import (
    UsageError,
    add_layout_arguments,
    layout_from_args,
    positive_int,
)
from refcocog_tools.core.files import UnreadableFileError
from refcocog_tools.core.output_paths import OutputPathError, check_output, output_lock
from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import split_stats, validate
from refcocog_tools.data.layouts import LayoutError
from refcocog_tools.data.minidata import is_mini_dataset, write_mini_dataset
from refcocog_tools.engine.run import RunSpecError
from refcocog_tools.engine.run_inputs import command_inputs
from refcocog_tools.methods.regressor.training import RegressorError
from refcocog_tools.models.backbones import BackboneError
from refcocog_tools.models.embedding_files import EmbeddingCacheError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The dataset subcommands: make-mini-dataset, stats, validate."""
    make = subparsers.add_parser(
        "make-mini-dataset",
        help="write the embedded synthetic dataset in the RefCOCOg layout",
        description="Write a small deterministic synthetic dataset in the exact RefCOCOg layout. "
        "Its numbers say nothing about RefCOCOg.",
    )
    make.add_argument("out_dir", type=Path)
    make.add_argument("--images", type=positive_int, default=30,
                      help="number of images (default 30)")
    make.add_argument("--force", action="store_true",
                      help="overwrite an existing dataset in OUT_DIR")
    make.add_argument("--seed", type=int, default=0)
    add_layout_arguments(make)
    make.set_defaults(func=_make_mini_dataset)

    stats = subparsers.add_parser("stats", help="per-split counts of a RefCOCOg data root")
    stats.add_argument("--data-root", type=Path, required=True)
    add_layout_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_stats)

    check = subparsers.add_parser("validate", help="check every file and ref; exit 1 on problems")
    check.add_argument("--data-root", type=Path, required=True)
    add_layout_arguments(check)
    check.add_argument("--skip-images", action="store_true", help="do not open the images")
    check.set_defaults(func=_validate)


def _make_mini_dataset(args: argparse.Namespace) -> int:
    layout = layout_from_args(args)
    out = args.out_dir
    existing = [p for p in (out / "annotations", out / "images")
                if p.is_dir() and any(p.iterdir())]
    check_output(out, "dataset folder", command_inputs(), force=args.force, folder=True,
                 earlier=existing, already="a dataset", alternative=", or choose another folder")
    if existing and not is_mini_dataset(out):
        # --force overwrites a synthetic dataset, never a real one (or anything else).
        raise OutputPathError(f"{existing[0]}: refused, even with --force: {out} holds a "
                              "dataset make-mini-dataset did not write; choose another folder")
    with output_lock(out, "dataset folder"):
        write_mini_dataset(out, n_images=args.images, seed=args.seed, layout=layout)
    print(f"wrote the embedded synthetic dataset ({args.images} images, seed {args.seed}) "
          f"to {out} as {layout.dataset} split by {layout.split_by} ({layout.refs_file})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    stats = split_stats(args.data_root, layout=layout_from_args(args))
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    import pandas as pd

    table = pd.DataFrame(stats).T
    for column in ("refs", "expressions", "images", "categories"):
        table[column] = table[column].astype(int)
    print(table.to_string())
    return 0


def _validate(args: argparse.Namespace) -> int:
    problems = validate(args.data_root, check_images=not args.skip_images,
                        layout=layout_from_args(args))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.data_root}: no problems found")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refcocog-tools",
        description="Training-free visual grounding with CLIP on RefCOCOg.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command module registers its parser, in the order `--help` lists them.
    for add in (add_parser, evaluate.add_parser, ground.add_parser, train_regressor.add_parser,
                bench.add_parser, toy_clip.add_parser):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Errors a user can fix (a bad file, a bad path, a missing checkpoint) end in one line.
    expected = (BackboneError, DatasetError, EmbeddingCacheError, LayoutError, OutputPathError,
                RegressorError, RunSpecError, UnreadableFileError, UsageError)
    try:
        return int(args.func(args) or 0)
    except expected as err:
        print(f"refcocog-tools: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`refcocog-tools stats | head`): stop quietly, as Unix tools do;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

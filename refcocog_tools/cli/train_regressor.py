"""The ``train-regressor`` command: train a box-regression head, keep the best epoch,
evaluate it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from refcocog_tools.cli.options import (
    add_layout_arguments,
    device_type,
    layout_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from refcocog_tools.core.files import atomic_write_json
from refcocog_tools.core.output_paths import (
    OutputPathError,
    check_output,
    check_output_folder,
    foreign_files,
    output_lock,
    recover_interrupted_swap,
    replacing_folder,
)
from refcocog_tools.data.layouts import Layout
from refcocog_tools.data.minidata import default_data_root
from refcocog_tools.engine.regressor_results import results_on_split
from refcocog_tools.engine.results import (
    clip_provenance,
    honesty_label,
)
from refcocog_tools.engine.run_inputs import check_run_inputs, command_inputs
from refcocog_tools.methods.regressor.data import split_data
from refcocog_tools.methods.regressor.heads import HEADS, IOU_VARIANTS, LOSSES
from refcocog_tools.methods.regressor.training import (
    EVALUATED_CHECKPOINTS,
    RUN_FILES,
    RegressorError,
    TrainConfig,
    save_checkpoint,
    train_regressor,
    trained_on,
)
from refcocog_tools.models.clip_loading import load_clips
from refcocog_tools.models.embedding_files import EmbeddingCacheError
from refcocog_tools.models.split_embeddings import default_cache_root


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-regressor``."""
    parser = subparsers.add_parser(
        "train-regressor",
        help="train a box-regression head on frozen CLIP embeddings (study sections 1-2)",
        description="Train a bottleneck or large head on the concatenated CLIP image and "
        "expression embeddings to regress the box directly. Embeddings are cached per backbone "
        "and split. Trains on the train split, keeps the epoch with the best validation mean "
        "IoU, and evaluates on --split. Writes history.json, curves.png, best.pt, last.pt, "
        "config.json and results.json (the evaluated checkpoint on --split).",
    )
    parser.add_argument("--data-root", type=Path, default=None,
                        help="RefCOCOg root (default: the embedded synthetic dataset)")
    add_layout_arguments(parser, split=True)
    parser.add_argument("--clip", default="tiny-rn",
                        help="CLIP backbone(s), comma-separated (default tiny-rn)")
    parser.add_argument("--head", choices=HEADS, default="bottleneck")
    parser.add_argument("--loss", choices=LOSSES, default="mse")
    parser.add_argument("--iou-variant", choices=IOU_VARIANTS, default="giou",
                        help="IoU loss for --loss iou/mix (default giou)")
    parser.add_argument("--epochs", type=non_negative_int, default=30)
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="Adam learning rate (default: the study's, 0.01 bottleneck, "
                        "0.001 large)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--normalize-targets", action="store_true",
                        help="regress boxes divided by the image size instead of pixels")
    parser.add_argument("--raw-embeddings", action="store_true",
                        help="feed CLIP's raw embeddings, as the study did (default: "
                        "L2-normalised)")
    parser.add_argument("--regressor-checkpoint", choices=EVALUATED_CHECKPOINTS, default="best",
                        help="weights evaluated on the test split: the best validation epoch's "
                        "(best.pt) or, as the study did, the last epoch's (written as final.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", type=device_type)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--force", action="store_true",
                        help="start afresh in an OUT that holds an earlier run (overwrites it)")
    parser.add_argument("--embedding-cache", type=Path, default=None,
                        help="embedding cache folder (default: <cache>/regressor-embeddings)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=_train_regressor_command)


def _train_regressor_command(args: argparse.Namespace) -> int:
    try:
        return _train_regressor(args)
    except (RegressorError, EmbeddingCacheError) as err:
        print(f"refcocog-tools: error: {err}", file=sys.stderr)
        return 2


def _train_regressor(args: argparse.Namespace) -> int:
    """``train-regressor``: every argument and input is checked before anything is written.

    A fresh run, and a ``--resume``, write in ``--out`` itself (so a killed run can be
    resumed). ``--force`` over an earlier run never deletes it first: the new run is written in
    a sibling folder and swapped in whole once complete (``output_paths.replacing_folder``);
    until then ``--out`` holds the earlier run untouched, and a failed or killed run leaves it
    so. The folder's lock (``output_paths.output_lock``) is held throughout: a second run into
    the same folder is refused, naming the holder's pid.
    """
    # A dataset / split-by / split the family lacks fails before anything is read or loaded.
    layout = layout_from_args(args)
    if args.resume and args.force:
        raise RegressorError("--resume continues the run in --out and --force discards it: "
                             "give one of them")
    embedding_cache = args.embedding_cache or default_cache_root()
    inputs = command_inputs(data_root=args.data_root, refs_file=layout.refs_file,
                            clip=args.clip, embedding_cache=embedding_cache)
    # Found now, not after the training: where the run and the embeddings will be written ...
    _claim_run_folder(args, inputs)
    check_output_folder(embedding_cache, "embedding cache folder")
    # ... and that what it reads is there: the data root's files, the CLIP names.
    data_root = args.data_root if args.data_root is not None else default_data_root()
    check_run_inputs(data_root, layout, args.clip)
    with output_lock(args.out, "training run"):
        recover_interrupted_swap(args.out)  # what a killed --force run left, settled first
        earlier = _claim_run_folder(args, inputs)
        if not (args.force and earlier):
            summary = _train_into(args.out, args, layout, data_root)
        else:
            strangers = foreign_files(args.out, RUN_FILES)
            if strangers:
                raise OutputPathError(f"{strangers[0]}: refused: --force replaces the whole "
                                      f"run folder {args.out} and this is not a file of a "
                                      "training run; move it or choose another --out")
            with replacing_folder(args.out) as staged:
                summary = _train_into(staged, args, layout, data_root)
    print(summary)
    return 0


def _claim_run_folder(args: argparse.Namespace, inputs: Any) -> list[Path]:
    """The earlier run's files in ``--out``, once ``--out`` has passed the output door."""
    earlier = [args.out / name for name in RUN_FILES if (args.out / name).exists()]
    check_output(args.out, "output folder", inputs, force=args.force or args.resume,
                 folder=True, earlier=earlier, already="an earlier training run",
                 alternative=", or --resume to continue it")
    return earlier


def _train_into(run_dir: Path, args: argparse.Namespace, layout: Layout,
                data_root: Path) -> str:
    """Train, evaluate and write the run's files into ``run_dir`` (``--out`` or the folder
    that replaces it); paths are recorded and reported as ``--out``'s. Returns the summary."""
    config = TrainConfig(head=args.head, loss=args.loss, iou_variant=args.iou_variant,
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay,
                         normalize_targets=args.normalize_targets, seed=args.seed,
                         raw_embeddings=args.raw_embeddings,
                         evaluated_checkpoint=args.regressor_checkpoint)
    backbones = load_clips(args.clip, device=args.device)
    data = {split: split_data(data_root, split, backbones, args.embedding_cache,
                              raw=config.raw_embeddings, layout=layout)
            for split in dict.fromkeys(("train", "val", args.split))}
    evaluated_split = data[args.split]
    print(f"{layout.dataset} split by {layout.split_by}: {len(data['train'])} train / "
          f"{len(data['val'])} val expressions, evaluated on {args.split} "
          f"({len(evaluated_split)}); embedding size {data['train'].embed_dim}")
    if args.split in ("train", "val"):
        print(f"warning: evaluating on {args.split}, the split the training "
              f"{'fits' if args.split == 'train' else 'chooses its epoch on'}: its numbers are "
              "optimistic", file=sys.stderr)
    result = train_regressor(data["train"], data["val"], config, out_dir=run_dir,
                             resume=args.resume, device=args.device,
                             clip=clip_provenance(backbones), log=print, layout=layout)
    checkpoint = run_dir / "best.pt"
    if config.evaluated_checkpoint == "last" and result.history:
        checkpoint = save_checkpoint(run_dir / "final.pt", result.head, config,
                                     data["train"].embed_dim, clip_provenance(backbones),
                                     **trained_on(layout), epoch=len(result.history),
                                     val_miou=result.history[-1]["val_miou"])
    results = results_on_split(result, evaluated_split.to(args.device), data_root, backbones,
                               checkpoint if checkpoint.is_file() else None,
                               split=args.split, layout=layout)
    if "checkpoint" in results["config"]:
        results["config"]["checkpoint"] = str(args.out / checkpoint.name)  # where it will be
    atomic_write_json(run_dir / "results.json", results)

    metrics = results["metrics"]
    evaluated = (f"epoch {len(result.history)} (last)" if config.evaluated_checkpoint == "last"
                 else f"epoch {result.best_epoch} (best)")
    return (f"best epoch {result.best_epoch} (val mIoU {result.best_val_miou:.3f}); "
            f"{layout.dataset} {layout.split_by} {args.split} mIoU of "
            f"{evaluated} {metrics['miou']:.3f}, accuracy {metrics['accuracy']:.3f} on "
            f"{metrics['n']} expressions{honesty_label(results['provenance'])} -> "
            f"{args.out / 'results.json'}")

"""Command-line option types: bad values fail before any work starts.

Each ``*_type`` function is an ``argparse`` ``type=``: it returns the parsed value or raises
``argparse.ArgumentTypeError``, so argparse prints ``argument --name: <why>`` and exits with
status 2 before a model is loaded or an image decoded. Output paths are checked by
``core.output_paths``, first thing in a command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from PIL import ImageColor

from refcocog_tools.data.layouts import ALL_SPLITS, DATASETS, SPLIT_BYS, Layout, get_layout
from refcocog_tools.prompts.visual_prompts import VARIANTS


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low}, {high}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


non_negative_float = float_in(0.0, float("inf"))
positive_float = float_in(0.0, float("inf"), low_open=True)


def device_type(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N < device count)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:0 ...)"
                                         ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available here")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: only {count} CUDA GPU(s) here")
    elif device.type not in ("cpu", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: unsupported device type {device.type!r}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here")
    return text


def colour_type(text: str) -> str:
    """A colour PIL understands: a name (``red``) or ``#rrggbb``."""
    try:
        ImageColor.getrgb(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a colour (a name such as red, or "
                                         "#rrggbb)") from None
    return text


def variants_type(text: str) -> str:
    """A comma-separated, non-empty list of visual-prompt variants."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(VARIANTS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return ",".join(names)


class UsageError(ValueError):
    """Options that cannot run together (a method without the file it needs); raised before
    any file is read, and printed as one line."""


def add_layout_arguments(parser: argparse.ArgumentParser, split: bool = False) -> None:
    """``--dataset`` and ``--split-by`` (and ``--split`` when ``split``), one way everywhere."""
    parser.add_argument("--dataset", default="refcocog", choices=tuple(DATASETS),
                        help="which dataset of the family the data root holds (default refcocog)")
    parser.add_argument("--split-by", default=None, choices=SPLIT_BYS,
                        help="whose split: umd or google for refcocog (default umd), unc or "
                        "google for refcoco (default unc), unc for refcoco+")
    if split:
        parser.add_argument("--split", default=None, choices=ALL_SPLITS,
                            help="split to run on (default test, or val where the dataset has "
                            "no test split); refcoco/refcoco+ unc: train, val, testA, testB")


def layout_from_args(args: argparse.Namespace) -> Layout:
    """The layout the options name, checked, with ``args.split`` filled in when it has one.

    Raises ``LayoutError`` before any file is read when the combination does not exist.
    """
    layout = get_layout(args.dataset, args.split_by)
    args.split_by = layout.split_by
    if hasattr(args, "split"):
        args.split = layout.check_split(args.split or layout.default_split)
    return layout

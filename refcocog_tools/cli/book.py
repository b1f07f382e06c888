"""The report's command line: ``python -m refcocog_tools.cli.book build`` executes the
chapters and builds the book; ``regen-baselines`` rewrites the nbval baselines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from refcocog_tools.report.book_build import build, regen_baselines
from refcocog_tools.report.chapter_files import (
    ReportError,
    find_root,
    parse_value,
)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refcocog_tools.report.chapter",
        description="Execute the report's chapters and build the Jupyter Book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_p = sub.add_parser("build", help="execute every chapter, then build the book")
    build_p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                         metavar=("NAME", "VALUE"),
                         help="chapter parameter, e.g. -p data_root /data/refcocog")
    build_p.add_argument("--chapters", nargs="+", help="only these chapters (NN_<idea>)")
    build_p.add_argument("--no-book", action="store_true", help="execute only, skip the book")
    build_p.add_argument("--force", action="store_true",
                         help="re-execute every chapter, even those whose source, parameters "
                              "and package are unchanged")
    regen = sub.add_parser("regen-baselines",
                           help="execute with defaults into notebooks/*.ipynb (nbval baselines)")
    regen.add_argument("--chapters", nargs="+", help="only these chapters (NN_<idea>)")
    for p in (build_p, regen):
        p.add_argument("--root", type=Path, default=None, help="book root (default: find it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m refcocog_tools.report.chapter``."""
    args = _parser().parse_args(argv)
    try:
        root = find_root(args.root)
        if args.command == "build":
            parameters = {name: parse_value(value) for name, value in args.parameter}
            build(root, parameters, args.chapters, book=not args.no_book, force=args.force)
        else:
            regen_baselines(root, args.chapters)
    except ReportError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make book-check``: every built page of the book checked in headless Chromium."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from refcocog_tools.report.book_check import (
    DEFAULT_HTML,
    INSTALL_HINT,
    check_book,
    find_chromium,
    pages,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refcocog_tools.cli.book_check",
                                     description="Check every built page of the book in "
                                                 "headless Chromium.")
    parser.add_argument("html_dir", nargs="?", type=Path, default=DEFAULT_HTML)
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="also write a full-page 1280 px screenshot of each page here")
    args = parser.parse_args(argv)
    if not args.html_dir.is_dir() or not pages(args.html_dir):
        print(f"book-check: error: {args.html_dir}: no built pages (run `make book` first)",
              file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print(f"book-check: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    defects = check_book(args.html_dir, chromium, args.screenshots)
    for defect in defects:
        print(defect)
    checked = len(pages(args.html_dir))
    print(f"book-check: {len(defects)} defect(s) on {len({d.page for d in defects})} of "
          f"{checked} page(s)", file=sys.stderr)
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())

"""Byte-identity check of two checkouts' engines: every registered method through
``evaluate`` on the embedded dataset, run with each checkout's code, ``predictions``
compared byte for byte (``metrics``, ``config`` and ``problems`` reported as same or not).

    python scripts/compare_engines.py OLD_CHECKOUT NEW_CHECKOUT OUT_DIR [--clip toy-rn]
        [--checkpoint best.pt] [--extra "--workers 2"]

Each run is a fresh process with ``--no-cache``; a method the run cannot build (the
regressor without ``--checkpoint``) is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

METHODS = ("baseline", "color-background", "color-overlay", "red-circle", "gradcam",
           "regressor", "relations", "random", "largest", "center")


def run(checkout: Path, method: str, out: Path, clip: str, checkpoint: str | None,
        extra: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    argv = [sys.executable, "-m", "refcocog_tools", "evaluate", "--method", method,
            "--clip", clip, "--out", str(out), "--no-cache", "--quiet", *extra]
    if method == "regressor":
        argv += ["--checkpoint", str(checkpoint)]
    # Checkouts from before the output door (872d9b4 and older) know no --force; their
    # evaluate overwrote an existing --out, so the file is removed first instead.
    out.unlink(missing_ok=True)
    subprocess.run(argv, env=env, check=True, cwd=checkout, stdout=subprocess.DEVNULL)


def differing_rows(docs: dict[str, dict]) -> int:
    """How many prediction rows differ between the two documents."""
    pairs = zip(docs["old"]["predictions"], docs["new"]["predictions"], strict=False)
    return sum(json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True) for a, b in pairs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--clip", default="toy-rn")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--extra", default="")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    different = 0
    for method in args.methods.split(","):
        if method == "regressor" and args.checkpoint is None:
            print(f"{method}: skipped (no --checkpoint)")
            continue
        docs = {}
        for name, checkout in (("old", args.old), ("new", args.new)):
            path = args.out / f"{method}.{name}.json"
            run(checkout.resolve(), method, path, args.clip, args.checkpoint, extra)
            docs[name] = json.loads(path.read_text())
        same = {part: json.dumps(docs["old"].get(part), sort_keys=True)
                == json.dumps(docs["new"].get(part), sort_keys=True)
                for part in ("predictions", "metrics", "config", "problems")}
        n = len(docs["new"]["predictions"])
        # The predictions are what must be byte-identical; the other parts are reported (a
        # checkout of results schema 1 has no intervals in its metrics and no "problems").
        others = ", ".join(f"{part} {'same' if ok else 'differs'}"
                           for part, ok in same.items() if part != "predictions")
        verdict = ("predictions identical" if same["predictions"]
                   else f"predictions DIFFERENT in {differing_rows(docs)} row(s)")
        different += not same["predictions"]
        print(f"{method}: {n} predictions, {verdict} ({others})", flush=True)
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())

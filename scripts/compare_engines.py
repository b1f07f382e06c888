"""Byte-identity check of two checkouts' engines: every registered method through
``evaluate`` on the embedded dataset, run with each checkout's code, ``predictions`` and
``metrics`` compared (the rest of the document: only ``timing`` and the provenance's git
fields may differ).

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
            "--clip", clip, "--out", str(out), "--no-cache", "--quiet", "--force", *extra]
    if method == "regressor":
        argv += ["--checkpoint", str(checkpoint)]
    subprocess.run(argv, env=env, check=True, cwd=checkout, stdout=subprocess.DEVNULL)


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
        same = {part: json.dumps(docs["old"][part], sort_keys=True)
                == json.dumps(docs["new"][part], sort_keys=True)
                for part in ("predictions", "metrics", "config", "problems")}
        rest = {k for k in docs["old"] if k not in ("timing", "provenance", *same)}
        same["rest"] = all(docs["old"][k] == docs["new"].get(k) for k in rest)
        n = len(docs["new"]["predictions"])
        verdict = "identical" if all(same.values()) else f"DIFFERENT {same}"
        different += not all(same.values())
        print(f"{method}: {n} predictions, {verdict}", flush=True)
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``ground`` command: where each expression is in one's own photo.

``refcocog-tools ground IMAGE EXPRESSION [EXPRESSION ...]`` prints, per expression, the chosen
box and its score and the runner-up's, as text or ``--json``; ``--out picture.png`` draws them
on the photo. The method, its options, the CLIP and the detector options are ``evaluate``'s
(``cli.evaluate``'s argument groups); the run is built by ``engine.ground``.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

from PIL import ImageDraw, ImageFont

from refcocog_tools.cli.evaluate import (
    add_method_option_arguments,
    add_model_arguments,
    detector_options,
    method_options,
)
from refcocog_tools.cli.options import UsageError, add_layout_arguments, layout_from_args
from refcocog_tools.core.files import atomic_write_bytes, cache_dir
from refcocog_tools.core.output_paths import check_output
from refcocog_tools.engine.ground import NOT_ZERO_SHOT, Grounding, ground_photo
from refcocog_tools.engine.results import clip_provenance
from refcocog_tools.engine.run_inputs import command_inputs

# Box colours per expression (the chosen box; its runner-up is drawn thin and dashed).
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def box_type(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2``: four finite numbers, in pixels, with x2 > x1 and y2 > y1."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(abs(v) != float("inf") and v == v for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not x1,y1,x2,y2 (four numbers, pixels)")
    x1, y1, x2, y2 = values
    if not (x2 > x1 and y2 > y1):
        raise argparse.ArgumentTypeError(f"{text!r}: x2 must exceed x1 and y2 exceed y1")
    return x1, y1, x2, y2


def draw_grounding(found: Grounding) -> Any:
    """The photo with each expression's chosen box (thick, labelled with the expression and
    its score) and its runner-up (thin, dashed)."""
    picture = found.image.copy()
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 150))
    font_size = max(11, round(min(picture.size) / 40))
    font = ImageFont.load_default(size=font_size)  # Pillow's own font: no font file to find
    for k, row in enumerate(found.rows()):
        colour = COLOURS[k % len(COLOURS)]
        if row["runner_up_box"] is not None:
            _dashed_rectangle(draw, row["runner_up_box"], colour, max(1, width // 2))
        draw.rectangle(row["box"], outline=colour, width=width)
        score = "" if row["score"] is None else f" ({row['score']:.3f})"
        text = f"{k + 1}: {row['expression']}{score}"
        y = max(0.0, row["box"][1] - font_size - 4)
        text_width = draw.textlength(text, font=font)
        # Kept inside the photo: a box at the right edge gets its label moved left.
        x = max(0.0, min(row["box"][0], picture.width - text_width - 3))
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
        draw.text((x, y), text, fill="white", font=font)
    if found.label:
        # The picture says what its numbers are, as the text output does.
        note = found.label.strip(" []")
        bottom = picture.height - font_size - 6
        left, top, right, low = draw.textbbox((4, bottom), note, font=font)
        draw.rectangle((0, top - 3, picture.width, picture.height), fill="black")
        draw.text((4, bottom), note, fill="white", font=font)
    return picture


def _dashed_rectangle(draw: Any, box: list[float], colour: str, width: int,
                      dash: float = 8.0) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                               ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min(1.0, (i + 1) / steps)
            draw.line((ax + (bx - ax) * t0, ay + (by - ay) * t0,
                       ax + (bx - ax) * t1, ay + (by - ay) * t1), fill=colour, width=width)


def report(found: Grounding, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON document ``--json`` prints."""
    return {"image": str(args.image), "image_size": list(found.image.size),
            "method": found.method.config(), "proposals": found.proposer.config(),
            "n_proposals": len(found.proposals), "clip": clip_provenance(found.backbones),
            "debias": found.debias, "label": found.label, "expressions": found.rows()}


def text_lines(found: Grounding, args: argparse.Namespace) -> list[str]:
    """The plain-text answer: a header naming the models (and the honesty label), the
    debiasing, then one line per expression."""
    clip = ",".join(b.name for b in found.backbones) or "none"
    label = f"  [{found.label}]" if found.label else ""
    lines = [f"{found.method.name} on {args.image} ({found.image.width}x{found.image.height}): "
             f"{len(found.proposals)} proposal(s) from {found.proposer.name}, CLIP {clip}"
             f"{label}"]
    if found.debias:
        lines.append(f"debiasing: {found.debias}")

    def described(box: list[float] | None, score: float | None) -> str:
        shown = "[" + ", ".join(f"{v:.1f}" for v in box) + "]" if box is not None else "none"
        return shown + ("" if score is None else f" score {score:.4f}")

    for row in found.rows():
        lines.append(f"{row['expression']!r}: {described(row['box'], row['score'])}; "
                     f"runner-up {described(row['runner_up_box'], row['runner_up_score'])}")
    return lines


def _inputs(args: argparse.Namespace) -> Any:
    layout = layout_from_args(args)
    inputs = command_inputs(data_root=args.debias_from, refs_file=layout.refs_file,
                            clip=args.clip or "", proposals="" if args.box else args.proposals)
    inputs.add_file(args.image, "input image")
    return inputs


def _run(args: argparse.Namespace) -> int:
    if args.method in NOT_ZERO_SHOT:
        raise UsageError(f"--method {args.method}: ground runs the zero-shot methods (a "
                         "regressor is trained on a split's boxes)")
    layout = layout_from_args(args)
    if args.box and any(getattr(args, k) is not None for k in ("conf", "iou", "max_det")):
        raise UsageError("--conf/--iou/--max-det: detector settings, but --box gives the "
                         "proposals")
    detector = {} if args.box else detector_options(args)
    if args.out is not None:  # before any model loads; never over the photo itself
        check_output(args.out, "picture", _inputs(args), force=args.force)
    found = ground_photo(
        args.image, args.expressions, args.method, clip=args.clip, proposals=args.proposals,
        boxes=args.box or None, options=method_options(args), detector=detector,
        device=args.device, seed=args.seed, debias_from=args.debias_from, layout=layout,
        image_id=args.image_id,
        cache_dir=None if args.no_cache else cache_dir() / "embeddings")
    if args.json:
        print(json.dumps(report(found, args), indent=1))
    else:
        print("\n".join(text_lines(found, args)))
    if args.out is not None:
        buffer = io.BytesIO()
        draw_grounding(found).save(buffer, format="PNG")
        atomic_write_bytes(args.out, buffer.getvalue())
        if not args.json:
            print(f"picture written to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ground", help="where each expression is in one photo (JPEG/PNG)",
        description="Ground referring expressions in one photo: per expression the chosen box, "
        "its score and the runner-up. Debiasing draws from a train split; one photo has none, "
        "so red-circle runs without its debias sample unless --debias-from names a data root.")
    parser.add_argument("image", type=Path, help="the photo (JPEG or PNG; EXIF orientation "
                        "honoured)")
    parser.add_argument("expressions", nargs="+", metavar="EXPRESSION",
                        help="referring expression(s), each grounded on its own")
    add_model_arguments(parser)
    parser.set_defaults(proposals="yolov8s", clip="toy-rn", checkpoint=None)
    parser.add_argument("--box", action="append", type=box_type, metavar="X1,Y1,X2,Y2",
                        help="a proposal box in pixels (repeatable); replaces --proposals")
    parser.add_argument("--image-id", type=int, default=None,
                        help="the photo's image_id in a --proposals dets: file (default: the "
                        "file's only image)")
    parser.add_argument("--debias-from", type=Path, default=None, metavar="DATA_ROOT",
                        help="draw red-circle's debias prompts from this data root's train "
                        "split (--dataset / --split-by); default: no debiasing")
    add_layout_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the on-disk embedding cache")
    add_method_option_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", type=Path, default=None,
                        help="also draw the boxes and expressions on the photo, as a PNG here")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out (never the input image)")
    parser.set_defaults(func=_run)

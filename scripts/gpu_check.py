"""One prepared GPU check: sizing workload, a generated dataset end to end, tensor vs Pillow.

Run from the repository root on a machine with one GPU and PyTorch (``make gpu-check``)::

    PYTHONPATH=wheels/openai_clip-1.0.1-py3-none-any.whl:... python scripts/gpu_check.py \
        --out gpu_check.json

Wheels named on ``PYTHONPATH`` (or put in ``--wheels DIR``) are unpacked into a folder
beside the output first: openai-clip and ultralytics read data files next to their modules,
which a wheel on ``sys.path`` cannot give them. Every step writes its figures into one JSON
file, rewritten after each step, so a step that fails or runs out of time loses nothing
before it. Sizes default to the GPU check (about 4-5 minutes on one H100); ``--small`` runs the
same steps at sizes a CPU finishes in a few minutes (with a tiny architecture). ``--compile
MODE`` adds a second sizing run with the image tower under ``torch.compile``: the first
compilation falls in its encoder ceiling's warm-up (``warmup_seconds``), recompilations for
other batch shapes inside the timed run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def unpack_wheels(folder: Path, extra: Path | None) -> list[str]:
    """Unpack every ``.whl`` on ``sys.path`` (and in ``extra``) under ``folder``, put the
    unpacked folder first on ``sys.path``; returns the wheels' names."""
    wheels = [Path(p) for p in sys.path if p.endswith(".whl") and Path(p).is_file()]
    if extra is not None and extra.is_dir():
        wheels += sorted(extra.glob("*.whl"))
    if not wheels:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
    sys.path.insert(0, str(folder))
    return [w.name for w in wheels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels",
                        help="a folder of wheels to unpack and use (default: ./wheels)")
    parser.add_argument("--small", action="store_true",
                        help="CPU sizes: workload 4,3, 24 images, a tiny architecture")
    parser.add_argument("--workload", default="2600,10", help="IMAGES,PROPOSALS")
    parser.add_argument("--images", type=int, default=4000, help="generated dataset size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--compile", default=None, metavar="MODE",
                        choices=("default", "reduce-overhead", "max-autotune"),
                        help="also run the sizing workload with the image tower in "
                        "torch.compile(mode=MODE) (reduce-overhead: CUDA graphs), after the "
                        "eager run, so one JSON says whether compiling pays")
    args = parser.parse_args(argv)
    if args.small:
        args.workload, args.images, args.batch_size, args.workers = "4,3", 24, 16, 0
    if args.out.exists() and not args.out.is_file():
        parser.error(f"{args.out}: exists and is not a file")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    scratch = Path(tempfile.mkdtemp(prefix="refcocog-gpu-check-"))
    wheels = unpack_wheels(scratch / "site", args.wheels)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(scratch / "ultralytics"))
    os.environ.setdefault("REFCOCOG_TOOLS_CACHE", str(scratch / "cache"))
    sys.path.insert(0, str(ROOT))

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {
        "device": device, "device_name": (torch.cuda.get_device_name(0)
                                          if device.startswith("cuda") else "cpu"),
        "torch": torch.__version__, "wheels": wheels, "small": args.small,
        "note": "random weights and generated data: throughput and agreement only, "
                "not RefCOCOg results",
    }

    def save() -> None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.out)

    def step(name: str, work: Any) -> None:
        started = time.perf_counter()
        try:
            report[name] = work()
        except Exception as err:  # noqa: BLE001 - one failed step must not lose the others
            report[name] = {"error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()[-2000:]}
        report[name + "_seconds"] = round(time.perf_counter() - started, 2)
        save()
        print(f"{name}: {report[name + '_seconds']} s", file=sys.stderr)

    from refcocog_tools.engine.bench import RN50X16_CONFIG, synthetic_workload
    from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS

    architecture = TINY_CLIP_CONFIGS["tiny-rn"] if args.small else RN50X16_CONFIG
    name = "tiny-rn architecture" if args.small else "RN50x16"
    step("sizing_workload", lambda: synthetic_workload(
        args.workload, [], device, args.batch_size, 0, architecture=architecture,
        architecture_name=name))
    if args.compile:
        step("sizing_workload_compiled", lambda: synthetic_workload(
            args.workload, [], device, args.batch_size, 0, architecture=architecture,
            architecture_name=name, compile_mode=args.compile))
    step("generated_dataset", lambda: generated_dataset(
        scratch, args.images, architecture, device, args.batch_size, args.workers))
    step("agreement", lambda: agreement(device))
    if device.startswith("cuda"):
        step("host_waits", lambda: host_waits(device))
        step("device_precision", lambda: device_precision(device))
    report["total_seconds"] = round(sum(v for k, v in report.items()
                                        if k.endswith("_seconds")), 2)
    save()
    print(json.dumps(report, indent=2))
    return 0


def generated_dataset(scratch: Path, n_images: int, architecture: dict[str, Any], device: str,
                      batch_size: int, workers: int) -> dict[str, Any]:
    """``evaluate --method red-circle --proposals gt`` on a generated dataset of ``n_images``
    with a random-weight checkpoint of ``architecture`` (a plain fp16 state_dict, as
    ``--clip PATH`` reads)."""
    import clip.model
    import torch

    from refcocog_tools.cli.main import main as cli_main
    from refcocog_tools.data.minidata import write_mini_dataset

    started = time.perf_counter()
    root = write_mini_dataset(scratch / "data", n_images=n_images, seed=0)
    generated = time.perf_counter() - started
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = clip.model.CLIP(**architecture)
    clip.model.convert_weights(model)
    checkpoint = scratch / "random-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    out = scratch / "results.json"
    code = cli_main(["evaluate", "--data-root", str(root), "--method", "red-circle",
                     "--proposals", "gt", "--clip", str(checkpoint), "--device", device,
                     "--batch-size", str(batch_size), "--workers", str(workers),
                     "--no-cache", "--quiet", "--out", str(out)])
    results = json.loads(out.read_text())
    timing = results["timing"]
    return {"exit_code": code, "images_total": n_images,
            "seconds_generating_data": round(generated, 2), **timing,
            "expressions_per_s": round(timing["expressions"] / timing["seconds"], 2),
            "accuracy": results["metrics"]["accuracy"],
            "note": "random weights on generated data: the accuracy means nothing"}


def host_waits(device: str) -> dict[str, Any]:
    """The operations that make the host wait for the GPU while one image's visual prompts
    become RN50x16 model inputs (CUDA's sync debug mode warns at each): there should be none,
    so the host can draw the next image while the GPU encodes."""
    import warnings

    import torch

    from refcocog_tools.engine.bench import RN50X16_CONFIG
    from refcocog_tools.prompts.render import prompt_inputs
    from refcocog_tools.prompts.visual_prompts import STUDY_VARIANTS

    image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8, device=device)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [200.5, 100.2, 630.0, 470.9]])
    resolution = RN50X16_CONFIG["image_resolution"]

    def draw() -> None:
        prompt_inputs(image, boxes, STUDY_VARIANTS, resolution, device=device)

    draw()  # warm-up: pinned-memory blocks and kernels are allocated once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            draw()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = [str(w.message).splitlines()[0] for w in caught]
    return {"rendering_host_waits": len(messages), "messages": messages[:10]}


def device_precision(device: str) -> dict[str, Any]:
    """The fp16 GPU path against the float32 CPU one for the embedded tiny models: cosine of
    the image and text embeddings, and a Grad-CAM map (a backward pass in fp16) for each."""

    from refcocog_tools.data.dataset import RefCOCOg
    from refcocog_tools.data.minidata import default_data_root
    from refcocog_tools.methods.gradcam import gradcam_map
    from refcocog_tools.models.clip_loading import load_clip

    items = list(RefCOCOg(default_data_root(), "test", view="expression"))[:8]
    images = [item.image for item in items]
    texts = [item.sentence for item in items]
    result: dict[str, Any] = {}
    for name in ("tiny-rn", "tiny-vit"):
        on = {where: load_clip(name, device=where) for where in ("cpu", device)}
        image_vectors = {w: b.encode_images(images) for w, b in on.items()}
        text_vectors = {w: b.encode_texts(texts) for w, b in on.items()}
        maps = {w: gradcam_map(b, images[0], text_vectors[w][0]) for w, b in on.items()}
        result[name] = {
            "image_cosine_min": round(float((image_vectors["cpu"] * image_vectors[device])
                                            .sum(-1).min()), 5),
            "text_cosine_min": round(float((text_vectors["cpu"] * text_vectors[device])
                                           .sum(-1).min()), 5),
            "gradcam_max_difference": round(float((maps["cpu"] - maps[device]).abs().max()), 4),
            "weights_dtype": str(on[device].model.visual.conv1.weight.dtype),
        }
    return result


def agreement(device: str) -> dict[str, Any]:
    """Tensor vs Pillow rendering: chosen boxes on the embedded test split with tiny-rn and
    tiny-vit, and model-input differences on ultralytics' photographs."""
    import torch
    from PIL import Image

    from refcocog_tools.data.dataset import RefCOCOg
    from refcocog_tools.data.minidata import default_data_root
    from refcocog_tools.engine.bench import choice_agreement
    from refcocog_tools.engine.evaluate import group_by_image
    from refcocog_tools.models.clip_loading import load_clip
    from refcocog_tools.prompts.render import PREPROCESS_MODES, input_difference
    from refcocog_tools.proposals.proposers import GroundTruthProposer
    from refcocog_tools.report.figure_panels import ultralytics_photo

    root = default_data_root()
    groups = group_by_image(RefCOCOg(root, "test", view="expression"))
    pool = RefCOCOg(root, "train", view="expression").sentences()
    result: dict[str, Any] = {}
    for name in ("tiny-rn", "tiny-vit"):
        backbone = load_clip(name, device=device)
        result[name] = choice_agreement(groups, [backbone], GroundTruthProposer(), pool)
    for photo in ("bus.jpg", "zidane.jpg"):
        image = Image.open(ultralytics_photo(photo)).convert("RGB")
        w, h = image.size
        boxes = torch.tensor([[0.0, 0.3 * h, 0.2 * w, 0.9 * h],
                              [0.35 * w, 0.25 * h, 0.7 * w, 0.8 * h],
                              [0.5 * w, 0.1 * h, 0.52 * w, 0.6 * h]])
        result[photo] = {mode: input_difference(image, boxes, ("blur", "blur_gray"), 384,
                                                preprocess=mode)
                         for mode in PREPROCESS_MODES}
    return result


if __name__ == "__main__":
    sys.exit(main())

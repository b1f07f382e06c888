"""The ``bench`` command: throughput per stage and end to end, written as one JSON document."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.cli.evaluate import add_common_arguments, check_results_file, run_spec
from refcocog_tools.core.files import atomic_write_json
from refcocog_tools.core.output_paths import output_lock
from refcocog_tools.data.dataset import is_synthetic
from refcocog_tools.engine.bench import (
    COMPILE_MODES,
    bench_backends,
    bench_stages,
    compile_image_encoder,
    encoder_ceiling,
    peak_memory,
    per_second,
    stage_timing,
    study_pattern,
    synthetic_workload,
)
from refcocog_tools.engine.evaluate import evaluate_groups, group_by_image
from refcocog_tools.engine.run import build_run
from refcocog_tools.methods.interface import BatchedMethod, GroundingMethod
from refcocog_tools.methods.red_circle import RedCircle


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    # The run as evaluate builds it (engine.run), without a disk cache: the debias texts are
    # encoded once into the run's memory cache; every timed method starts from a copy holding
    # only them (no disk-cache hits).
    spec = replace(run_spec(args), cache_dir=None, cache_shard="",
                   keep_first_duplicates=False)
    run = build_run(spec)
    dataset, proposer, backbones, data_root = (run.dataset, run.proposer, run.backbones,
                                               spec.resolved_root())
    for backbone in backbones if args.compile else ():
        compile_image_encoder(backbone, args.compile)
    text_cache, text_method = run.cache, run.method

    def make() -> GroundingMethod:
        return run.make_method(cache=text_cache.texts_only_copy())

    groups = group_by_image(dataset, args.limit)
    n_img, n_expr = len(groups), sum(len(g) for g in groups)
    report: dict[str, Any] = {
        "method": args.method, "clip": [b.name for b in backbones], "device": args.device,
        "proposals": proposer.name, "images": n_img, "expressions": n_expr,
        "batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
        "torch_threads": torch.get_num_threads(),
        "untrained": any(b.untrained for b in backbones), "data_root": str(data_root),
        # Throughput does not depend on trained weights, but say what ran all the same.
        "synthetic_data": is_synthetic(data_root),
    }
    report["stages"] = bench_stages(groups, proposer, make, args.batch_size)

    method = make()
    started = time.perf_counter()
    engine_stages: dict[str, float] = {}
    engine_rows = evaluate_groups(groups, method, proposer, batch_size=args.batch_size,
                                  workers=args.workers, stage_seconds=engine_stages)
    report["end_to_end"] = stage_timing(
        time.perf_counter() - started, n_img, n_expr,
        stage_seconds={stage: round(s, 4) for stage, s in engine_stages.items()})
    method = make()
    started = time.perf_counter()
    plain_rows = evaluate_groups(groups, method, proposer)  # the plain loop
    report["end_to_end_unbatched"] = stage_timing(time.perf_counter() - started, n_img, n_expr,
                                            same_predictions=plain_rows == engine_rows)
    if isinstance(method, BatchedMethod):
        prompts = report["stages"]["render"]["visual_prompts"]
        ceiling = encoder_ceiling(method.backbones[0], args.batch_size)
        pipeline = per_second(prompts, report["end_to_end"]["seconds"])
        report["encoder_ceiling"] = ceiling
        report["pipeline"] = {
            "visual_prompts": prompts, "visual_prompts_per_s": pipeline,
            "expressions_per_s": report["end_to_end"]["expressions_per_s"],
            "share_of_ceiling": (round(pipeline / ceiling["visual_prompts_per_s"], 3)
                                 if pipeline and ceiling["visual_prompts_per_s"] else None)}
    if isinstance(text_method, RedCircle):
        def with_backend(backend: str) -> GroundingMethod:
            return run.make_method(cache=text_cache.texts_only_copy(), render_backend=backend)

        report["render_backends"] = bench_backends(groups, proposer, with_backend,
                                                   args.batch_size, args.workers)
        started = time.perf_counter()
        chosen = study_pattern(groups, proposer, text_method)
        seconds = time.perf_counter() - started
        report["study_pattern"] = stage_timing(
            seconds, n_img, n_expr,
            same_choices=chosen == [row["chosen"] for row in engine_rows],
            engine_speedup=round(seconds / report["end_to_end"]["seconds"], 2)
            if report["end_to_end"]["seconds"] > 0 else None)
    if args.synthetic_workload:
        report["synthetic_workload"] = synthetic_workload(
            args.synthetic_workload, backbones, args.device, args.batch_size, args.seed,
            compile_mode=args.compile)
    report["memory"] = peak_memory()
    return report


def _run(args: argparse.Namespace) -> int:
    check_results_file(args, "bench report")  # before the timing runs, not after them
    with output_lock(args.out, "bench report") if args.out is not None else nullcontext():
        report = run_bench(args)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out is not None:
            atomic_write_json(args.out, report)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="throughput of each stage and end to end, peak memory (JSON)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--synthetic-workload", metavar="IMAGES,PROPOSALS", default=None,
                        help="also time encoding IMAGES x PROPOSALS x 2 random visual prompts "
                        "with the RN50x16 architecture (e.g. 2600,10 on a GPU; slow on a CPU)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default=None, metavar="MODE",
                        help="wrap the CLIP image towers in torch.compile(mode=MODE) first: "
                        f"{', '.join(COMPILE_MODES)} (reduce-overhead: CUDA graphs on a GPU); "
                        "default off")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out (never one of the run's own inputs)")
    parser.set_defaults(func=_run)

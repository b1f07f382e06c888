"""The evaluation engine: run a method over a split and score it into one results document.

One prediction per expression. Expressions are grouped by image (``grouping``) so that each
image is decoded, proposed and encoded once, and the method is asked once per referred object
(``choosing.predict_per_ref``); the stages themselves are ``pipeline``'s. The results
document holds the metrics, the full config, the provenance (package version, git commit,
checkpoint checksums, data root, whether the weights are untrained and the data synthetic),
the seconds per stage and every per-expression prediction. The engine is method-neutral: it
knows the method interface (``methods``) only; the ``evaluate`` command, which builds a
method from its options and writes the file, is ``cli.evaluate``.

The names other modules import from here (``group_by_image``, ``predict_per_ref``,
``evaluate_groups``, ``distributed_context``) stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from refcocog_tools.core.masks import mask_fallbacks
from refcocog_tools.data.dataset import RefCOCOg, RefItem
from refcocog_tools.engine.choosing import predict_per_ref
from refcocog_tools.engine.distributed import distributed_context, gather_rows
from refcocog_tools.engine.grouping import group_by_image
from refcocog_tools.engine.pipeline import evaluate_groups
from refcocog_tools.engine.results import provenance, results_document
from refcocog_tools.engine.stage_clock import StageClock
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.proposals.structures import Proposer

__all__ = ["check_proposer", "distributed_context", "evaluate", "evaluate_groups",
           "group_by_image", "predict_per_ref"]


def check_proposer(proposer: Proposer, dataset: RefCOCOg) -> None:
    """Let a proposer that reads a file check it against the split before any long work."""
    check = getattr(proposer, "check_dataset", None)
    if check is not None:
        check(dataset.records)


def evaluate(
    dataset: RefCOCOg,
    method: GroundingMethod,
    proposer: Proposer,
    backbones: Sequence[ClipBackbone] = (),
    *,
    limit: int = 0,
    progress: bool = False,
    threshold: float = 0.5,
    config: dict[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    skip_unreadable_images: bool = False,
    data_problems: Sequence[str] = (),
    groups: Sequence[Sequence[RefItem]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``method`` on ``dataset`` and return the results document.

    ``batch_size`` / ``workers``: see ``evaluate_groups`` (same rows, faster). Under torchrun
    (WORLD_SIZE > 1) each rank evaluates the image groups ``i`` with ``i % world == rank`` and
    every rank returns the full document, rows in single-process order; only ``"timing"``
    differs from a single-process run. ``skip_unreadable_images``: an image that cannot be
    decoded loses its expressions instead of ending the run. The document's ``problems``:
    ``data_problems`` (what was found before the run) not about a skipped image, the
    dataset's ``problems`` (repeated ids), then each skipped image. ``groups``: the split's
    ``group_by_image(dataset, limit)`` when the caller has it already (the check before the
    run took it); ``timing["stages"]``: this process's seconds per pipeline stage.
    """
    if groups is None:
        groups = group_by_image(dataset, limit)
    rank, world = distributed_context()
    mine = list(range(rank, len(groups), world))
    started = time.perf_counter()
    skipped: dict[int, str] | None = {} if skip_unreadable_images else None
    clock = StageClock()
    shard_rows = evaluate_groups([groups[i] for i in mine], method, proposer, backbones,
                                 progress=progress and rank == 0, batch_size=batch_size,
                                 workers=workers, skipped=skipped,
                                 stage_seconds=clock.seconds)
    # Tag each row with its image group and position, so rank 0 can restore the order.
    indexed, cursor = [], 0
    for local, i in enumerate(mine):
        if skipped and local in skipped:
            continue
        for position in range(len(groups[i])):
            indexed.append((i, position, shard_rows[cursor]))
            cursor += 1
    rows, skipped_problems = gather_rows(
        indexed, world, [(mine[local], f"{problem}; skipped: its {len(groups[mine[local]])} "
                          "expression(s) were not evaluated")
                         for local, problem in (skipped or {}).items()])
    # A skipped image's problem starts with its path: the check before the run may list it.
    skipped_paths = {problem.split(": ", 1)[0] for problem in skipped_problems}
    problems = [p for p in data_problems if p.split(": ", 1)[0] not in skipped_paths]
    problems += list(getattr(dataset, "problems", ())) + skipped_problems
    elapsed = time.perf_counter() - started
    masks = mask_fallbacks(rows)
    document = results_document(
        rows, threshold=threshold,
        config={"method": method.config(), "proposals": proposer.config(),
                "clip": [b.name for b in backbones], "split": dataset.split, "limit": limit,
                "threshold": threshold, **(config or {})},
        provenance=provenance(dataset.root, dataset.split, backbones, proposer,
                              getattr(dataset, "layout", None)),
        timing={"seconds": round(elapsed, 3), "images": len(groups), "expressions": len(rows),
                "world_size": world, "workers": workers, "batch_size": batch_size,
                "stages": clock.rounded()},
        problems=problems,
    )
    if masks is not None:  # how many "masks" were only boxes, once per run
        document["provenance"]["proposals"].update(masks)
    return document

"""torchrun: this process's rank, and every rank's rows gathered in single-process order."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with WORLD_SIZE > 1.

    Gloo on CPU, NCCL when CUDA is available. A single process returns (0, 1) and never touches
    ``torch.distributed``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def gather_rows(indexed: list[tuple[int, int, dict[str, Any]]], world: int,
                skipped: list[tuple[int, str]] | None = None
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every rank's (group index, position, row) triples, in the single-process order, and
    every rank's (group index, problem) pairs of skipped images, in the same order."""
    skipped = list(skipped or ())
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (indexed, skipped))
        indexed = [entry for part in parts for entry in part[0]]
        skipped = [entry for part in parts for entry in part[1]]
    indexed.sort(key=lambda entry: (entry[0], entry[1]))
    return [row for _, _, row in indexed], [problem for _, problem in sorted(skipped)]

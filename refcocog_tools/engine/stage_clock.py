"""Main-process seconds per stage of the engine's pipeline (prepare, encode, choose, score,
write), as the results document's ``timing["stages"]`` records them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

STAGES = ("prepare", "encode", "choose", "score", "write")
Item = TypeVar("Item")


class StageClock:
    """Seconds spent in each stage, summed over the run (the main process's wall clock: a
    DataLoader worker's work shows as the time the main process waits for it in "prepare",
    a GPU's as the time it waits for the embeddings in "encode")."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = {} if seconds is None else seconds
        for stage in STAGES:
            self.seconds.setdefault(stage, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in self.seconds:
            raise ValueError(f"unknown engine stage {stage!r}; the stages are {STAGES}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started

    def timed(self, stage: str, iterable: Iterable[Item]) -> Iterator[Item]:
        """``iterable``'s items, the time spent producing each counted to ``stage``."""
        iterator = iter(iterable)
        while True:
            with self(stage):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def rounded(self) -> dict[str, float]:
        """The seconds per stage, in stage order, to the millisecond."""
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}

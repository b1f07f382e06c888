"""The engine's pipeline over image groups: prepare -> encode -> choose -> score -> write.

- prepare: decode each image once, propose, build the method's request and the ground-truth
  crops' once, draw the inputs not cached (in ``--workers`` DataLoader processes, or here);
- encode: the inputs of many images in shared batches, one batch in flight while the host
  works (``Encoding``), the forward passes of fixed size (``ClipBackbone.fixed_batch``);
- choose: the method's boxes, asked once per referred object (``predict_per_ref``) on cache
  hits, from the image's one request;
- score: IoU and crop cosine, the predicted boxes' crops riding in the next batch;
- write: the result rows.

``StageClock`` records the main process's seconds in each stage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.engine.choosing import predict_per_ref
from refcocog_tools.engine.encoding import Encoding, Queued, encodings_of
from refcocog_tools.engine.loading import ImageGroups, image_works, unreadable
from refcocog_tools.engine.metric_crops import ImageCrops
from refcocog_tools.engine.preparing import ImageWork, prepare_inputs
from refcocog_tools.engine.rows import result_rows, score_image
from refcocog_tools.engine.stage_clock import StageClock
from refcocog_tools.methods.interface import BatchedMethod, GroundingMethod
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache, fingerprints_remembered
from refcocog_tools.proposals.structures import Proposer


class _Run:
    """What every stage of one run shares: the groups, the method, the metric, the rows."""

    def __init__(self, groups: Sequence[Sequence[RefItem]], method: GroundingMethod,
                 proposer: Proposer, metric_backbones: Sequence[ClipBackbone],
                 metric_cache: EmbeddingCache, clock: StageClock, bar: tqdm,
                 skipped: dict[int, str] | None) -> None:
        self.groups, self.method, self.proposer = groups, method, proposer
        self.metric_backbones, self.metric_cache = list(metric_backbones), metric_cache
        self.clock, self.bar, self.skipped = clock, bar, skipped
        self.rows: list[dict[str, Any]] = []

    def choose(self, work: ImageWork) -> Prediction:
        items = self.groups[work.index]
        if work.proposals is None:
            with self.clock("prepare"):
                work.proposals = self.proposer(items[0], work.image)
        with self.clock("choose"):
            prediction = predict_per_ref(self.method, work.image, items, work.proposals,
                                         work.request)
        work.request = None  # its closures hold drawing state: free them once chosen
        return prediction

    def score_and_write(self, work: ImageWork, prediction: Prediction) -> None:
        items = self.groups[work.index]
        with self.clock("score"):
            if self.metric_backbones and work.crops is None:
                work.crops = ImageCrops(work.image)
            ious, cosines = score_image(items, prediction, work.crops, self.metric_backbones,
                                        self.metric_cache)
        with self.clock("write"):
            self.rows.extend(result_rows(items, work.proposals, prediction, ious, cosines))
        self.bar.update(1)

    def refused(self, work: ImageWork) -> bool:
        """Whether ``work``'s image could not be decoded (then recorded, or the run stops)."""
        if work.problem is None:
            return False
        unreadable(work.index, work.problem, self.skipped)
        self.bar.update(1)
        return True


def _plain(run: _Run) -> None:
    """The reference loop: decode, propose, choose, score and write one image at a time (the
    encoding happens inside "choose" and "score", on cache misses)."""
    for index, items in enumerate(run.groups):
        with run.clock("prepare"):
            try:
                work = ImageWork(index, image=items[0].image)
            except DatasetError as err:
                work = ImageWork(index, problem=str(err))
        if not run.refused(work):
            run.score_and_write(work, run.choose(work))


class _Batched:
    """The batched pipeline: works pending encoding, the one batch in flight, and the
    predictions waiting for their predicted crops to be encoded."""

    def __init__(self, run: _Run, batch_size: int, workers: int) -> None:
        self.run, self.clock = run, run.clock
        self.encodings: list[Encoding] = encodings_of(run.method, run.metric_backbones,
                                                      run.metric_cache)
        self.metric = next((e for e in self.encodings if e.role == "metric"), None)
        # Ground-truth proposals are computed with the decode, in the workers if any; a
        # detector runs here (one model, on the GPU when there is one) on batches of images.
        self.gt_in_loader = run.proposer if getattr(run.proposer, "name", None) == "gt" else None
        self.workers = workers
        # Images per detector batch: their prompts (up to max_det x variants each) are
        # encoded together, so a few images already fill an encoder batch.
        self.fill = batch_size if self.gt_in_loader is not None else max(1, batch_size // 8)
        # A detector's images are drawn here: in threads on a CPU (Pillow and torch release
        # the GIL), in this thread when models run on a GPU (what is drawn there is queued).
        on_gpu = any(e.on_gpu for e in self.encodings)
        self.painters = (ThreadPoolExecutor(max_workers=max(1, workers))
                         if self.encodings and self.gt_in_loader is None and not on_gpu
                         else None)
        self.pending: list[ImageWork] = []
        self.n_pending = 0
        self.in_flight: tuple[list[ImageWork], list[Queued],
                              list[tuple[ImageWork, Prediction]]] | None = None
        self.waiting: list[tuple[ImageWork, Prediction]] = []  # crops in the next batch
        self.predicted_crops: list[dict[str, Any]] = []

    def execute(self) -> None:
        dataset = ImageGroups(self.run.groups, self.gt_in_loader, self.run.method,
                              self.encodings)
        try:
            for work in self.clock.timed("prepare", image_works(dataset, self.workers)):
                if not self.run.refused(work):
                    self.add(work)
            self.flush()
            self.land()
            self.flush()  # the last images' predicted crops
            self.land()
        finally:
            if self.painters is not None:
                self.painters.shutdown()

    def prepare(self, work: ImageWork) -> ImageWork:
        return prepare_inputs(work, self.run.groups[work.index], self.run.method,
                              self.encodings)

    def add(self, work: ImageWork) -> None:
        if work.prepared is not None and not work.ready:
            with self.clock("prepare"):
                self.prepare(work)  # the device's part, queued there at once
        self.pending.append(work)
        self.n_pending += (sum(len(p["keys"]) for p in work.prepared or ())
                           if self.gt_in_loader is not None else 1)
        if not self.encodings or self.n_pending >= self.fill:
            self.flush()

    def detect_and_draw(self) -> None:
        todo = [w for w in self.pending if w.proposals is None]
        if not todo:
            return
        found = self.run.proposer.propose_many([self.run.groups[w.index][0] for w in todo],
                                               [w.image for w in todo])
        for work, proposals in zip(todo, found, strict=True):
            work.proposals = proposals
        if self.encodings:
            list(self.painters.map(self.prepare, todo) if self.painters is not None
                 else map(self.prepare, todo))

    def flush(self) -> None:
        """Queue the pending works' inputs (and earlier predicted crops) as the next batch,
        then land the batch in flight, so the device is never idle while the host works."""
        with self.clock("prepare"):
            self.detect_and_draw()
        with self.clock("encode"):
            queued = []
            for k, encoding in enumerate(self.encodings):
                prepared = [w.prepared[k] for w in self.pending if w.prepared is not None]
                if encoding is self.metric:
                    prepared += self.predicted_crops
                queued.append(encoding.queue(prepared))
        ready = list(self.waiting)  # their predicted crops are in this batch
        self.waiting.clear()
        self.predicted_crops.clear()
        self.land()
        self.in_flight = (list(self.pending), queued, ready)
        self.pending.clear()
        self.n_pending = 0

    def land(self) -> None:
        """Store the batch in flight; write the rows whose crops it carried; choose for its
        images, their predicted crops waiting for the next batch."""
        if self.in_flight is None:
            return
        works, queued, ready = self.in_flight
        with self.clock("encode"):
            for encoding, handles in zip(self.encodings, queued, strict=True):
                encoding.store(handles)
        for work, prediction in ready:
            self.run.score_and_write(work, prediction)
        for work in works:
            prediction = self.run.choose(work)
            self.waiting.append((work, prediction))
            if self.metric is not None:
                with self.clock("score"):
                    if work.crops is None:
                        work.crops = ImageCrops(work.image)
                    request = work.crops.request(prediction.boxes.float())
                    self.predicted_crops.append(self.metric.prepare(request))
        self.in_flight = None


@fingerprints_remembered()  # the engine never changes an image: hash each one once
def evaluate_groups(
    groups: Sequence[Sequence[RefItem]],
    method: GroundingMethod,
    proposer: Proposer,
    metric_backbones: Sequence[ClipBackbone] = (),
    progress: bool = False,
    *,
    batch_size: int | None = None,
    workers: int = 0,
    metric_cache: EmbeddingCache | None = None,
    skipped: dict[int, str] | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Per-expression prediction rows for the given image groups (no summary).

    Each image is decoded once; the method's request and each crop request once per image.
    An image that cannot be decoded (in the main process or a DataLoader worker) raises a
    ``DatasetError`` naming it; with a ``skipped`` dict its group gets no rows instead, and
    ``skipped[group index]`` says why. ``stage_seconds``: filled with the main process's
    seconds per stage (``StageClock``).

    ``batch_size=None`` and ``workers=0``: the plain loop, one image at a time. Otherwise
    images are decoded (and ground-truth proposals computed) in ``workers`` DataLoader
    processes, and the model inputs each method declares through ``encode_request`` (and the
    ground-truth crops of the crop-cosine metric) are drawn: in those workers, except inputs
    drawn by tensor operations (``EncodeRequest.on_device``) for models on a GPU, which the
    main process draws there from the decoded image. The main process encodes them in
    batches of about ``batch_size`` inputs across images, filling the caches, before
    ``predict`` runs on cache hits; while a GPU encodes one batch, the main process already
    draws the next and predicts the last. Each batch runs as forward passes of the
    backbone's ``fixed_batch`` inputs, so the rows are byte-identical whatever ``batch_size``
    and ``workers`` are, and the same as the plain loop's. ``metric_cache``: where the
    metric's crop embeddings go; by default the method's cache when it declares one (a
    ``BatchedMethod``), so a crop the method encodes (the baseline encodes every proposal's)
    is not encoded again for the metric.
    """
    if metric_cache is None:
        metric_cache = method.cache if isinstance(method, BatchedMethod) else EmbeddingCache()
    bar = tqdm(total=len(groups), desc=method.name, unit="image", disable=not progress,
               file=sys.stderr)
    run = _Run(groups, method, proposer, metric_backbones, metric_cache,
               StageClock(stage_seconds), bar, skipped)
    if batch_size is None and workers <= 0:
        _plain(run)
    else:
        _Batched(run, batch_size or 1, workers).execute()
    bar.close()
    return run.rows

"""The evaluation engine: run a method over a split and score it into one results document.

One prediction per expression. Expressions are grouped by image so that proposals and visual
prompts are computed once per image, and the method is asked once per referred object (see
``predict_per_ref``). The results document holds the metrics, the full config, the
provenance (package version, git commit, checkpoint checksums, data root, whether the weights
are untrained and the data synthetic) and every per-expression prediction. The engine is
method-neutral: it knows the method interface (``methods``) only; the ``evaluate`` command, which
builds a method from its options and writes the file, is ``evaluate_cli``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from refcocog_tools.core.boxes import box_iou_pairs
from refcocog_tools.core.devices import concatenate_for
from refcocog_tools.core.masks import MASKS_FROM_BOXES, mask_fallbacks
from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import RefCOCOg, RefItem
from refcocog_tools.data.layouts import DEFAULT_LAYOUT
from refcocog_tools.engine.results import provenance, results_document
from refcocog_tools.methods.interface import BatchedMethod, EncodeRequest, GroundingMethod
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.scoring import crop_request, request_embeddings
from refcocog_tools.models.backbones import ClipBackbone, QueuedEmbeddings
from refcocog_tools.models.prompt_cache import EmbeddingCache, fingerprints_remembered
from refcocog_tools.proposals.structures import Proposals, Proposer


def group_by_image(dataset: RefCOCOg, limit: int = 0) -> list[list[RefItem]]:
    """Expression items grouped by image, in dataset order; ``limit`` > 0 keeps the first N."""
    if dataset.view != "expression":
        raise ValueError("the engine evaluates one prediction per expression: use "
                         "view='expression'")
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    groups: dict[int, list[RefItem]] = {}
    for index in range(count):
        item = dataset[index]
        groups.setdefault(item.image_id, []).append(item)
    return list(groups.values())


def predict_per_ref(method: GroundingMethod, image: Image.Image, items: Sequence[RefItem],
                    proposals: Proposals) -> Prediction:
    """One image's prediction, asking ``method`` once per referred object.

    The interface every method can rely on: the expressions of one ``predict`` call belong to
    one ref (red-circle's debiasing averages over them, as the study did per ref), so an
    expression's answer never depends on the other refs of its image. Visual prompts are still
    computed once per image: the calls share the image, its proposals and the method's cache.
    Rows come back in the order of ``items``.
    """
    by_ref: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        by_ref.setdefault(item.ref_id, []).append(position)
    if len(by_ref) == 1:
        return method.predict(image, [it.sentence for it in items], proposals)
    parts = [(positions, method.predict(image, [items[i].sentence for i in positions],
                                        proposals))
             for positions in by_ref.values()]
    order = torch.tensor([i for positions, _ in parts for i in positions]).argsort()
    return Prediction(boxes=torch.cat([p.boxes for _, p in parts])[order],
                      chosen=torch.cat([p.chosen for _, p in parts])[order],
                      scores=torch.cat([p.scores for _, p in parts])[order])


def _crop_cosines(cache: EmbeddingCache, backbones: Sequence[ClipBackbone], image: Image.Image,
                  pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Crop cosine of each (predicted, ground-truth) pair, from the cache where the crops are
    already encoded (the engine encodes every ground-truth crop in its batches)."""
    request = crop_request(image, torch.cat([pred, gt]))
    total = torch.zeros(len(pred))
    for backbone in backbones:
        embeddings = request_embeddings(cache, backbone, request)
        total += (embeddings[:len(pred)] * embeddings[len(pred):]).sum(dim=-1)
    return total / len(backbones)


def _rows(items: Sequence[RefItem], image: Image.Image, proposals: Proposals,
          prediction: Prediction, metric_backbones: Sequence[ClipBackbone],
          metric_cache: EmbeddingCache) -> list[dict[str, Any]]:
    """The result rows of one image's expressions (with masks: also how many of the image's
    proposals fell back to their box, which ``evaluate`` sums per run and removes)."""
    boxes = prediction.boxes.float()
    gt = torch.tensor([it.box for it in items], dtype=torch.float32)
    ious = box_iou_pairs(boxes, gt)
    cosines = (_crop_cosines(metric_cache, metric_backbones, image, boxes, gt).tolist()
               if metric_backbones else [None] * len(items))
    return [{
        "ref_id": item.ref_id,
        "sent_id": item.sent_id,
        "image_id": item.image_id,
        "ann_id": item.ann_id,
        "category": item.category,
        "sentence": item.sentence,
        "box": [round(float(v), 3) for v in boxes[k]],
        "gt_box": [round(float(v), 3) for v in item.box],
        "iou": round(float(ious[k]), 6),
        "cosine": None if cosines[k] is None else round(float(cosines[k]), 6),
        "chosen": int(prediction.chosen[k]),
        "n_proposals": len(proposals),
        **({} if proposals.masks is None else {MASKS_FROM_BOXES: proposals.masks_from_boxes}),
    } for k, item in enumerate(items)]



class _Encoding:
    """One set of backbones sharing a cache: what the engine encodes for them, in batches."""

    def __init__(self, backbones: Sequence[ClipBackbone], cache: EmbeddingCache) -> None:
        self.backbones = list(backbones)
        self.cache = cache
        self.resolutions = list(dict.fromkeys(b.input_resolution for b in self.backbones))

    def prepare(self, request: EncodeRequest, skip: Collection[str] = ()) -> dict[str, Any]:
        """The request's inputs not cached yet (nor in ``skip``: keys another encoding of the
        same cache draws already): keys, and model inputs per resolution, drawn on the
        backbones' device in the main process and on the CPU in a DataLoader worker (whose
        copy of the cache is the one the run started with)."""
        in_worker = torch.utils.data.get_worker_info() is not None
        device = "cpu" if in_worker else self.backbones[0].device
        first = {k: i for i, k in reversed(list(enumerate(request.keys)))}
        missing = [k for k in first if k not in skip
                   and not all(self.cache.has_image(b, k) for b in self.backbones)]
        indices = [first[k] for k in missing]
        return {"keys": missing, "texts": request.texts,
                "pixels": [request.draw(r, indices, device) if indices else None
                           for r in self.resolutions]}

    def shares(self, other: _Encoding) -> bool:
        """Whether ``other`` fills the same cache tables (the same cache and backbones)."""
        return (self.cache is other.cache
                and [b.checksum for b in self.backbones] == [b.checksum for b in other.backbones])

    @property
    def on_gpu(self) -> bool:
        """Whether the models run on an accelerator rather than the CPU."""
        return any(b.device.type != "cpu" for b in self.backbones)

    def drawn_on_device(self, request: EncodeRequest) -> bool:
        """Whether ``request``'s inputs are drawn by the main process on the models' device
        (tensor drawing, models on a GPU: drawing and resizing there keeps the CPU from
        bounding the GPU) rather than in host memory (in the DataLoader workers, if any)."""
        return request.on_device and self.on_gpu

    def queue(self, prepared: Sequence[dict[str, Any]]
              ) -> list[tuple[ClipBackbone, list[str], QueuedEmbeddings]]:
        """Encode the prepared inputs of many images in shared batches, without waiting for
        the images' embeddings (``store`` puts them into the cache). The texts are encoded
        first, at once: waiting for them then waits only for work queued before. Every
        forward pass has the backbone's ``fixed_batch`` inputs (the last one padded): which
        inputs share a batch depends on ``--batch-size`` and ``--workers``, and a kernel's
        float sums on the batch's shape, so an embedding would otherwise too."""
        texts = list(dict.fromkeys(t for p in prepared for t in p["texts"]))
        for backbone in self.backbones if texts else ():
            self.cache.texts(backbone, texts)  # every distinct prompt in one text batch
        keys = [k for p in prepared for k in p["keys"]]
        queued = []
        for backbone in self.backbones:
            which = self.resolutions.index(backbone.input_resolution)
            pixels = [p["pixels"][which] for p in prepared if p["pixels"][which] is not None]
            if pixels:
                inputs = concatenate_for(pixels, backbone.device)
                queued.append((backbone, keys, backbone.queue_images(
                    inputs, backbone.fixed_batch, pad_last=True)))
        for p in prepared:
            p["pixels"] = None  # the queued batch holds its own copy: free these meanwhile
        return queued

    def store(self, queued: Sequence[tuple[ClipBackbone, list[str], QueuedEmbeddings]]
              ) -> None:
        for backbone, keys, embeddings in queued:
            self.cache.put_images(backbone, keys, embeddings.result())


def _encodings(method: GroundingMethod, metric_backbones: Sequence[ClipBackbone],
               metric_cache: EmbeddingCache) -> list[_Encoding]:
    """What the engine batches: the method's declared inputs and the metric's crops."""
    found = []
    if isinstance(method, BatchedMethod):
        found.append(_Encoding(method.backbones, method.cache))
    if metric_backbones:
        found.append(_Encoding(metric_backbones, metric_cache))
    return found


def _requests(method: GroundingMethod, metric_on: bool, items: Sequence[RefItem],
              image: Image.Image, proposals: Proposals) -> list[EncodeRequest]:
    requests = []
    if isinstance(method, BatchedMethod):
        requests.append(method.encode_request(image, [it.sentence for it in items], proposals))
    if metric_on:
        gt = torch.tensor(sorted({tuple(it.box) for it in items}), dtype=torch.float32)
        requests.append(crop_request(image, gt.reshape(-1, 4)))
    return requests


class _ImageGroups(torch.utils.data.Dataset):
    """One sample per image group, computed in a DataLoader worker when ``--workers`` > 0:
    the decoded image, its proposals (ground-truth proposals only: a detector stays in the
    main process) and the model inputs the method and the metric need encoded."""

    def __init__(self, groups: Sequence[Sequence[RefItem]], proposer: Proposer | None,
                 method: GroundingMethod, encodings: Sequence[_Encoding],
                 metric_on: bool) -> None:
        self.groups = groups
        self.proposer = proposer
        self.method = method
        self.encodings = encodings
        self.metric_on = metric_on

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = self.groups[index]
        try:
            image = items[0].image
        except DatasetError as err:
            # Sent back as data: raised in a worker it would reach the main process as a
            # traceback, and the main process decides whether to skip the image.
            return {"index": index, "problem": str(err)}
        sample: dict[str, Any] = {"index": index, "image": image,
                                  "proposals": self.proposer(items[0], image) if self.proposer
                                  else None}
        if sample["proposals"] is not None:
            sample["prepared"] = _prepare(self.method, self.encodings, self.metric_on, items,
                                          image, sample["proposals"])
        return sample


def _prepare(method: GroundingMethod, encodings: Sequence[_Encoding], metric_on: bool,
             items: Sequence[RefItem], image: Image.Image, proposals: Proposals,
             earlier: Sequence[dict[str, Any] | None] | None = None
             ) -> list[dict[str, Any] | None]:
    """Each encoding's prepared inputs for one image. In a DataLoader worker the inputs to be
    drawn on the device are left out (None); the main process passes that list back as
    ``earlier`` and only those are drawn."""
    in_worker = torch.utils.data.get_worker_info() is not None
    requests = _requests(method, metric_on, items, image, proposals)
    prepared: list[dict[str, Any] | None] = []
    for k, (encoding, request) in enumerate(zip(encodings, requests, strict=True)):
        if earlier is not None and earlier[k] is not None:
            prepared.append(earlier[k])
        elif in_worker and encoding.drawn_on_device(request):
            prepared.append(None)
        else:
            drawn = {key for j, other in enumerate(prepared)
                     if other is not None and encodings[j].shares(encoding)
                     for key in other["keys"]}
            prepared.append(encoding.prepare(request, drawn))
    return prepared


def _loader(dataset: _ImageGroups, workers: int) -> Iterable[dict[str, Any]]:
    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_identity,
                                       prefetch_factor=4, persistent_workers=False)


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def _unreadable(index: int, problem: str, skipped: dict[int, str] | None) -> None:
    """An image that cannot be decoded: refuses the run, or is recorded in ``skipped``."""
    if skipped is None:
        raise DatasetError(problem)
    skipped[index] = problem


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
) -> list[dict[str, Any]]:
    """Per-expression prediction rows for the given image groups (no summary).

    An image that cannot be decoded (in the main process or a DataLoader worker) raises a
    ``DatasetError`` naming it; with a ``skipped`` dict its group gets no rows instead, and
    ``skipped[group index]`` says why.

    ``batch_size=None`` and ``workers=0``: the plain loop, one image at a time. Otherwise
    images are decoded (and ground-truth proposals computed) in ``workers`` DataLoader
    processes, and the model inputs each method declares through ``encode_request`` (and the
    ground-truth crops of the crop-cosine metric) are drawn: in those workers, except inputs
    drawn by tensor operations (``EncodeRequest.on_device``) for models on a GPU, which the
    main process draws there from the decoded image. The main
    process encodes them in batches of about ``batch_size`` inputs across images, filling the
    caches, before ``predict`` runs on cache hits; while a GPU encodes one batch, the main
    process already draws the next and predicts the last. Each batch runs as forward passes
    of the backbone's ``fixed_batch`` inputs, so the rows are byte-identical whatever
    ``batch_size`` and ``workers`` are, and the same as the plain loop's.
    ``predict`` is called once per referred object (``predict_per_ref``). ``metric_cache``:
    where the metric's crop embeddings go; by default the method's cache when it declares
    one (a ``BatchedMethod``), so a crop the method encodes (the baseline encodes every
    proposal's) is not encoded again for the metric.
    """
    if metric_cache is None:
        metric_cache = method.cache if isinstance(method, BatchedMethod) else EmbeddingCache()
    if batch_size is None and workers <= 0:
        return _evaluate_plain(groups, method, proposer, metric_backbones, metric_cache,
                               progress, skipped)
    in_worker = proposer if getattr(proposer, "name", None) == "gt" else None
    encodings = _encodings(method, metric_backbones, metric_cache)
    on_gpu = any(e.on_gpu for e in encodings)
    metric_on = bool(metric_backbones)
    dataset = _ImageGroups(groups, in_worker, method, encodings, metric_on)
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    n_pending = 0
    batch = batch_size or 1
    bar = tqdm(total=len(groups), desc=method.name, unit="image", disable=not progress,
               file=sys.stderr)

    def prepare(sample: dict[str, Any]) -> list[dict[str, Any] | None]:
        return _prepare(method, encodings, metric_on, groups[sample["index"]], sample["image"],
                        sample["proposals"], sample.get("prepared"))

    # A detector runs in the main process (one model, on the GPU when there is one), so its
    # images' inputs are drawn here: in threads on a CPU (Pillow and torch release the GIL),
    # in this thread when models run on a GPU (what is drawn on the device is only queued).
    painters = (ThreadPoolExecutor(max_workers=max(1, workers))
                if encodings and in_worker is None and not on_gpu else None)

    def detect_and_draw() -> None:
        todo = [s for s in pending if s["proposals"] is None]
        if not todo:
            return
        found = proposer.propose_many([groups[s["index"]][0] for s in todo],
                                      [s["image"] for s in todo])
        for sample, proposals in zip(todo, found, strict=True):
            sample["proposals"] = proposals
        if encodings:
            drawn = painters.map(prepare, todo) if painters is not None else map(prepare, todo)
            for sample, prepared in zip(todo, drawn, strict=True):
                sample["prepared"] = prepared

    # The crop-cosine metric also needs the crops of the predicted boxes. Those no batch has
    # encoded (a proposal no expression refers to) go into the next batch with everything
    # else, and the rows of their images wait for it; no crop is encoded on its own.
    metric = encodings[-1] if metric_on else None
    waiting: list[tuple[dict[str, Any], Proposals, Prediction]] = []
    predicted_crops: list[dict[str, Any]] = []

    def predict(samples: Sequence[dict[str, Any]]) -> None:
        for sample in samples:
            items = groups[sample["index"]]
            proposals = (sample["proposals"] if sample["proposals"] is not None
                         else proposer(items[0], sample["image"]))
            prediction = predict_per_ref(method, sample["image"], items, proposals)
            waiting.append((sample, proposals, prediction))
            if metric is not None:
                request = crop_request(sample["image"], prediction.boxes.float())
                predicted_crops.append(metric.prepare(request))

    def write_rows(predicted: Sequence[tuple[dict[str, Any], Proposals, Prediction]]) -> None:
        for sample, proposals, prediction in predicted:
            items = groups[sample["index"]]
            rows.extend(_rows(items, sample["image"], proposals, prediction, metric_backbones,
                              metric_cache))
            bar.update(1)

    # One batch in flight: its embeddings are stored and its images predicted only after the
    # next batch is queued, so the device is never idle while the host works. A batch also
    # carries the predicted crops of earlier images, whose rows are written when it lands.
    in_flight: tuple[list[dict[str, Any]], list[list[Any]], list[Any]] | None = None

    def land() -> None:
        nonlocal in_flight
        if in_flight is not None:
            samples, queued, ready = in_flight
            for encoding, handles in zip(encodings, queued, strict=True):
                encoding.store(handles)
            write_rows(ready)
            predict(samples)
            in_flight = None

    def flush() -> None:
        nonlocal n_pending, in_flight
        detect_and_draw()
        queued = []
        for k, encoding in enumerate(encodings):
            prepared = [s["prepared"][k] for s in pending if "prepared" in s]
            if encoding is metric:
                prepared += predicted_crops
            queued.append(encoding.queue(prepared))
        ready = list(waiting)  # their predicted crops are in this batch
        waiting.clear()
        predicted_crops.clear()
        land()
        in_flight = (list(pending), queued, ready)
        pending.clear()
        n_pending = 0

    # Images per detector batch: their prompts (up to max_det x variants each) are encoded
    # together, so a few images already fill an encoder batch.
    detector_chunk = max(1, batch // 8)
    try:
        for sample in _loader(dataset, workers):
            if "problem" in sample:
                _unreadable(sample["index"], sample["problem"], skipped)
                bar.update(1)
                continue
            if any(p is None for p in sample.get("prepared", ())):
                sample["prepared"] = prepare(sample)  # the device's part, queued there at once
            pending.append(sample)
            n_pending += (sum(len(p["keys"]) for p in sample.get("prepared", ()))
                          if in_worker is not None else 1)
            if not encodings or n_pending >= (batch if in_worker is not None
                                              else detector_chunk):
                flush()
        flush()
        land()
        flush()  # the last images' predicted crops
        land()
    finally:
        if painters is not None:
            painters.shutdown()
    bar.close()
    return rows


def _evaluate_plain(groups: Sequence[Sequence[RefItem]], method: GroundingMethod,
                    proposer: Proposer, metric_backbones: Sequence[ClipBackbone],
                    metric_cache: EmbeddingCache, progress: bool,
                    skipped: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """The reference loop: decode, propose and predict one image at a time."""
    rows: list[dict[str, Any]] = []
    for index, items in enumerate(tqdm(groups, desc=method.name, unit="image",
                                       disable=not progress, file=sys.stderr)):
        try:
            image = items[0].image
        except DatasetError as err:
            _unreadable(index, str(err), skipped)
            continue
        proposals = proposer(items[0], image)
        prediction = predict_per_ref(method, image, items, proposals)
        rows.extend(_rows(items, image, proposals, prediction, metric_backbones, metric_cache))
    return rows


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with WORLD_SIZE > 1.

    Gloo on CPU, NCCL when CUDA is available. A single process returns (0, 1) and never touches
    ``torch.distributed``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _gather_rows(indexed: list[tuple[int, int, dict[str, Any]]], world: int,
                 skipped: list[tuple[int, str]] | None = None
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every rank's (group index, position, row) triples, in the single-process order, and
    every rank's (group index, problem) pairs of skipped images, in the same order."""
    skipped = list(skipped or ())
    if world > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (indexed, skipped))
        indexed = [entry for part in parts for entry in part[0]]
        skipped = [entry for part in parts for entry in part[1]]
    indexed.sort(key=lambda entry: (entry[0], entry[1]))
    return [row for _, _, row in indexed], [problem for _, problem in sorted(skipped)]


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
) -> dict[str, Any]:
    """Evaluate ``method`` on ``dataset`` and return the results document.

    ``batch_size`` / ``workers``: see ``evaluate_groups`` (same rows, faster). Under torchrun
    (WORLD_SIZE > 1) each rank evaluates the image groups ``i`` with ``i % world == rank`` and
    every rank returns the full document, rows in single-process order; only ``"timing"``
    differs from a single-process run. ``skip_unreadable_images``: an image that cannot be
    decoded loses its expressions instead of ending the run. The document's ``problems``:
    ``data_problems`` (what was found before the run) not about a skipped image, the
    dataset's ``problems`` (repeated ids), then each skipped image.
    """
    groups = group_by_image(dataset, limit)
    rank, world = distributed_context()
    mine = list(range(rank, len(groups), world))
    started = time.perf_counter()
    skipped: dict[int, str] | None = {} if skip_unreadable_images else None
    shard_rows = evaluate_groups([groups[i] for i in mine], method, proposer, backbones,
                                 progress=progress and rank == 0, batch_size=batch_size,
                                 workers=workers, skipped=skipped)
    # Tag each row with its image group and position, so rank 0 can restore the order.
    indexed, cursor = [], 0
    for local, i in enumerate(mine):
        if skipped and local in skipped:
            continue
        for position in range(len(groups[i])):
            indexed.append((i, position, shard_rows[cursor]))
            cursor += 1
    rows, skipped_problems = _gather_rows(
        indexed, world, [(mine[local], f"{problem}; skipped: its {len(groups[mine[local]])} "
                          "expression(s) were not evaluated")
                         for local, problem in (skipped or {}).items()])
    # A skipped image's problem starts with its path: the check before the run found it too.
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
                              getattr(dataset, "layout", DEFAULT_LAYOUT)),
        timing={"seconds": round(elapsed, 3), "images": len(groups), "expressions": len(rows),
                "world_size": world, "workers": workers, "batch_size": batch_size},
        problems=problems,
    )
    if masks is not None:  # how many "masks" were only boxes, once per run
        document["provenance"]["proposals"].update(masks)
    return document

"""The engine's "prepare" stage: one image's work, its requests built once and its inputs drawn.

``ImageWork`` travels through the pipeline: decoded (once), proposed, its method request and
ground-truth crops requested (once each), its inputs drawn for every ``Encoding``. A
DataLoader worker sends the request back without its ``draw`` (a closure over the image that
cannot leave the worker), and the main process hands it to ``predict_per_ref``; only inputs
left to the main process (drawn on the GPU) make it build the request again, to draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from refcocog_tools.data.dataset import RefItem
from refcocog_tools.engine.encoding import Encoding
from refcocog_tools.engine.metric_crops import ImageCrops, ground_truth_boxes
from refcocog_tools.methods.interface import BatchedMethod, EncodeRequest, GroundingMethod
from refcocog_tools.proposals.structures import Proposals


@dataclass
class ImageWork:
    """One image group's way through the engine. ``prepared``: each encoding's inputs (None
    where a worker left them to the main process); ``request``: the method's encode request
    (from a worker: without its drawing closure); ``problem``: why the image could not be
    decoded."""

    index: int
    image: Image.Image | None = None
    proposals: Proposals | None = None
    prepared: list[dict[str, Any] | None] | None = None
    crops: ImageCrops | None = None
    request: EncodeRequest | None = None
    problem: str | None = None

    @property
    def ready(self) -> bool:
        """Whether every encoding's inputs are drawn."""
        return self.prepared is not None and all(p is not None for p in self.prepared)


def method_request(work: ImageWork, items: Sequence[RefItem], method: BatchedMethod
                   ) -> EncodeRequest:
    """The method's request for the image and all its expressions, built once and kept on
    ``work``: a DataLoader worker sends it back without its drawing closure
    (``without_drawing``), which is all the method reads once the inputs are encoded. Only
    inputs a worker left to the main process (drawn on the GPU) make the main process build
    it again, to draw them."""
    if work.request is not None and work.request.can_draw:
        return work.request
    assert work.image is not None and work.proposals is not None
    request = method.encode_request(work.image, [it.sentence for it in items], work.proposals)
    in_worker = torch.utils.data.get_worker_info() is not None
    work.request = request.without_drawing() if in_worker else request
    return request


def prepare_inputs(work: ImageWork, items: Sequence[RefItem], method: GroundingMethod,
                   encodings: Sequence[Encoding]) -> ImageWork:
    """Draw each encoding's inputs for ``work`` not drawn yet, in place; returns ``work``."""
    assert work.image is not None
    in_worker = torch.utils.data.get_worker_info() is not None
    prepared = list(work.prepared) if work.prepared is not None else [None] * len(encodings)
    for k, encoding in enumerate(encodings):
        if prepared[k] is not None:
            continue
        if encoding.role == "method":
            assert isinstance(method, BatchedMethod)
            request = method_request(work, items, method)
        else:
            if work.crops is None:
                work.crops = ImageCrops(work.image)
            request = work.crops.request(ground_truth_boxes(items))
        if in_worker and encoding.drawn_on_device(request):
            continue  # the main process draws these on the device
        drawn = {key for j, other in enumerate(prepared[:k])
                 if other is not None and encodings[j].shares(encoding)
                 for key in other["keys"]}
        prepared[k] = encoding.prepare(request, drawn)
    work.prepared = prepared
    return work

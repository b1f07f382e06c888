"""The engine's "choose" stage: one image's boxes, the method asked once per referred object."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from refcocog_tools.data.dataset import RefItem
from refcocog_tools.methods.interface import EncodeRequest, GroundingMethod, PredictsFromRequest
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.proposals.structures import Proposals


def predict_per_ref(method: GroundingMethod, image: Image.Image, items: Sequence[RefItem],
                    proposals: Proposals, request: EncodeRequest | None = None) -> Prediction:
    """One image's prediction, asking ``method`` once per referred object.

    The interface every method can rely on: the expressions of one ``predict`` call belong to
    one ref (red-circle's debiasing averages over them, as the study did per ref), so an
    expression's answer never depends on the other refs of its image. A method that predicts
    from a request (``PredictsFromRequest``) gets the image's one request, ``request`` (or one
    built here, for every expression of the image), in each call, so it is built once per
    image, not once per ref. Rows come back in the order of ``items``.
    """
    if isinstance(method, PredictsFromRequest):
        if request is None:
            request = method.encode_request(image, [it.sentence for it in items], proposals)
        shared = request

        def ask(sentences: list[str]) -> Prediction:
            return method.predict_from_request(shared, image, sentences, proposals)
    else:
        def ask(sentences: list[str]) -> Prediction:
            return method.predict(image, sentences, proposals)

    by_ref: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        by_ref.setdefault(item.ref_id, []).append(position)
    if len(by_ref) == 1:
        return ask([it.sentence for it in items])
    parts = [(positions, ask([items[i].sentence for i in positions]))
             for positions in by_ref.values()]
    order = torch.tensor([i for positions, _ in parts for i in positions]).argsort()
    return Prediction(boxes=torch.cat([p.boxes for _, p in parts])[order],
                      chosen=torch.cat([p.chosen for _, p in parts])[order],
                      scores=torch.cat([p.scores for _, p in parts])[order])

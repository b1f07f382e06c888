"""Scoring helpers shared by the CLIP methods and the engine's crop-cosine metric.

Three methods (the crop baseline, the colour encodings, red-circle) key their visual prompts by
box, look their embeddings up in the prompt cache and average similarities over the backbones;
the baseline and the metric encode the same crops. Each of those steps is written once, here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from refcocog_tools.methods.interface import EncodeRequest
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache, image_fingerprint
from refcocog_tools.prompts.render import pil_inputs, pil_preprocess
from refcocog_tools.prompts.visual_prompts import crop


def box_key(box: torch.Tensor | Sequence[float]) -> str:
    """Boxes in cache keys, rounded to 1/100 px so float noise does not split entries."""
    return ",".join(f"{float(v):.2f}" for v in box)


def crop_inputs(image: Image.Image, boxes: torch.Tensor | Sequence[torch.Tensor],
                indices: Sequence[int], resolution: int, device: str | torch.device = "cpu"
                ) -> torch.Tensor:
    """CLIP inputs ``(len(indices), 3, R, R)`` of the crops of ``boxes[i]`` (CLIP's own
    preprocessing)."""
    return pil_inputs((crop(image, boxes[i]) for i in indices), pil_preprocess(resolution),
                      device)


def crop_key(fingerprint: str, box: torch.Tensor | Sequence[float]) -> str:
    """The cache key of the crop of ``box`` in the image of ``fingerprint``."""
    return f"crop:{fingerprint}:{box_key(box)}"


def crop_request(image: Image.Image, boxes: torch.Tensor, texts: Sequence[str] = ()
                 ) -> EncodeRequest:
    """The crops of ``boxes`` as CLIP inputs (CLIP's own preprocessing): the baseline's inputs
    and the crop-cosine metric's, under the same keys so neither encodes a crop twice."""
    fingerprint = image_fingerprint(image)

    def draw(resolution: int, indices: Sequence[int], device: str | torch.device = "cpu"
             ) -> torch.Tensor:
        return crop_inputs(image, boxes, indices, resolution, device)

    return EncodeRequest([crop_key(fingerprint, b) for b in boxes], draw, list(texts))


def request_embeddings(cache: EmbeddingCache, backbone: ClipBackbone, request: EncodeRequest
                       ) -> torch.Tensor:
    """``(len(request.keys), D)`` embeddings of a request's inputs, drawing only those not
    cached (the engine has usually encoded them all already)."""
    return cache.images(backbone, request.keys,
                        lambda idx: request.draw(backbone.input_resolution, idx, backbone.device))


def ensemble_similarity(
    backbones: Sequence[ClipBackbone],
    cache: EmbeddingCache,
    texts: Sequence[str],
    request: EncodeRequest,
) -> torch.Tensor:
    """(len(texts), len(request.keys)) cosine similarities averaged over the backbones.

    Averaging the similarity matrices is the study's ensemble of several CLIP backbones.
    """
    total = None
    for backbone in backbones:
        text = cache.texts(backbone, texts)
        sim = text @ request_embeddings(cache, backbone, request).T
        total = sim if total is None else total + sim
    assert total is not None, "at least one backbone is needed"
    return total / len(backbones)

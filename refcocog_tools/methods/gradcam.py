"""The study's idea 3: a Grad-CAM heat map of the expression on the image, thresholded to a box.

The map is the ReLU of the activations of a visual stage of CLIP (by default the last one:
ResNet ``layer4``; ViT: the patch tokens of the last residual block), weighted by the spatially
averaged gradient of the image-text cosine similarity. ``target_layer`` names another stage, a
submodule path of ``model.visual`` such as ``"layer3"``: the study used RN50's ``layer4`` at
224 px, a 7 x 7 grid, while a small model at a small input has a coarser last stage (the toy
CLIP's ``layer4`` at 64 px is 2 x 2; its ``layer3`` is 4 x 4). The image is resized to the
model's square input *without* cropping, so the map covers the whole image and scales straight
back to it. The predicted box encloses every pixel at or above ``threshold`` times the map's
maximum; ``snap_to_proposal`` instead picks the proposal with the most mean heat. The study
found these boxes imprecise and dropped the idea; the method is here so that finding can be
re-checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.prompts.render import CLIP_MEAN, CLIP_STD
from refcocog_tools.proposals.structures import Proposals


def _input_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    resized = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    return TF.normalize(TF.to_tensor(resized), CLIP_MEAN, CLIP_STD).unsqueeze(0)


def _target_layer(backbone: ClipBackbone, name: str | None = None) -> torch.nn.Module:
    visual = backbone.model.visual
    if name is not None:
        try:
            return visual.get_submodule(name)
        except AttributeError:
            raise ValueError(f"target_layer {name!r} is not a submodule of the CLIP visual "
                             "encoder (ResNet: layer1..layer4; ViT: transformer.resblocks.N)"
                             ) from None
    if hasattr(visual, "layer4"):
        return visual.layer4
    return visual.transformer.resblocks[-1]


def _as_grid(activation: torch.Tensor, backbone: ClipBackbone) -> torch.Tensor:
    """(1, C, h, w) activations: ResNet outputs are already spatial; ViT tokens are reshaped."""
    if activation.dim() == 4:
        return activation
    tokens = activation.permute(1, 0, 2)[:, 1:, :]  # LND -> NLD, drop the class token
    side = int(round(tokens.shape[1] ** 0.5))
    return tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2)


def gradcam_map(backbone: ClipBackbone, image: Image.Image, text_embedding: torch.Tensor,
                target_layer: str | None = None) -> torch.Tensor:
    """(H, W) Grad-CAM map in [0, 1] at the image's size, for one normalised text embedding;
    ``target_layer``: the stage whose activations make the map (default: the last)."""
    model = backbone.model
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["activation"] = output

    handle = _target_layer(backbone, target_layer).register_forward_hook(hook)
    try:
        dtype = model.visual.conv1.weight.dtype
        pixels = _input_tensor(image, backbone.input_resolution).to(backbone.device, dtype)
        pixels.requires_grad_(True)  # builds the graph even if the weights are frozen
        with torch.enable_grad(), backbone.autocast():
            embedding = F.normalize(model.encode_image(pixels).float(), dim=-1)
            score = (embedding[0] * text_embedding.to(embedding.device)).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
        activation = captured["activation"]
        grid = _as_grid(activation.detach().float(), backbone)
        grads = _as_grid(activation.grad.float(), backbone)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * grid).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=(image.height, image.width), mode="bilinear",
                        align_corners=False)[0, 0].cpu()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def box_from_map(heat: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The box (xyxy, pixel edges) around every pixel with ``heat >= threshold * max``.

    An all-zero map gives the whole image.
    """
    height, width = heat.shape
    peak = float(heat.max())
    if peak <= 0:
        return torch.tensor([0.0, 0.0, float(width), float(height)])
    ys, xs = torch.nonzero(heat >= threshold * peak, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@dataclass(frozen=True)
class GradCamOptions:
    """Grad-CAM's settings: the heat-map ``threshold`` (share of the peak), whether the box
    snaps to the best-overlapping proposal, and the visual stage the map is taken from
    (``target_layer``; None: the last)."""

    threshold: float = 0.5
    snap_to_proposal: bool = False
    target_layer: str | None = None


class GradCam:
    """Grad-CAM boxes, averaged over backbones; proposals are scored only for inspection."""

    name = "gradcam"

    def __init__(self, backbones: Sequence[ClipBackbone],
                 options: GradCamOptions = GradCamOptions()) -> None:
        if not backbones:
            raise ValueError("gradcam needs at least one CLIP backbone")
        self.backbones = list(backbones)
        for backbone in self.backbones:  # a wrong name fails here, before any image is read
            _target_layer(backbone, options.target_layer)
        self.options = options
        self.threshold = options.threshold
        self.snap_to_proposal = options.snap_to_proposal
        self.target_layer = options.target_layer

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "threshold": self.threshold,
                "snap_to_proposal": self.snap_to_proposal, "target_layer": self.target_layer}

    def heatmaps(self, image: Image.Image, expressions: Sequence[str]) -> torch.Tensor:
        """(E, H, W) maps averaged over the backbones."""
        total = torch.zeros(len(expressions), image.height, image.width)
        for backbone in self.backbones:
            texts = backbone.encode_texts(list(expressions))
            for i, text in enumerate(texts):
                total[i] += gradcam_map(backbone, image, text, self.target_layer)
        return total / len(self.backbones)

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        heat = self.heatmaps(image, expressions)
        boxes = proposals.boxes
        # Mean heat inside each proposal: what the map says about the proposals.
        scores = torch.zeros(len(expressions), len(boxes))
        for j, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            scores[:, j] = heat[:, y1:y2, x1:x2].mean(dim=(1, 2))
        if self.snap_to_proposal:
            return Prediction.from_scores(scores, proposals)
        predicted = torch.stack([box_from_map(h, self.threshold) for h in heat])
        chosen = torch.full((len(expressions),), -1, dtype=torch.long)
        return Prediction(boxes=predicted, chosen=chosen, scores=scores)

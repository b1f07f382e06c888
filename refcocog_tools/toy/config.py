"""The toy CLIP's configuration: the world it is trained on and how, in one frozen record that
the checkpoint carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS


@dataclass(frozen=True)
class ToyClipConfig:
    """Everything that decides the toy CLIP's bytes; written into the checkpoint."""

    # The training world: ``generate(data_images, data_seed)``, train split only. The seed is
    # not the book's (0), so no image of the book's val/test splits can be a training image.
    data_images: int = 600
    data_seed: int = 1000
    marked_share: float = 0.5  # share of referred objects that also appear red-ellipse-marked
    # The red-circle method's own prompts (marker on a blurred / blurred grey background) and
    # the bare marker.
    marked_variants: tuple[str, ...] = ("marker", "blur", "blur_gray")
    # Share of referred objects also shown with everything outside their box painted one plain
    # colour, captioned with their expression alone and with "<expression> on a <colour>
    # background": web data's product shots, which the pretrained CLIP has seen and the colour
    # encodings rely on. The colour is drawn at random, never from the object's position, so
    # the model learns to tell a background's colour from an object's, not the study's code of
    # position. Without them toy-rn read the paint as the object's colour (colour background
    # at chance; tests/test_toy_world.py).
    painted_share: float = 1.0
    captions_per_image: int = 6  # distinct whole-image captions drawn per training image
    # Training.
    seed: int = 0
    steps: int = 700  # about 17 passes over the 2,660 default pairs
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.0
    # Batches of whole images' pairs (the scene, its crops, its marked copies) instead of pairs
    # drawn at random: see ``_epoch_order``.
    batch_by_image: bool = False
    # clip.model.CLIP arguments (build_model re-derives all of them from the tensor shapes): the
    # embedded tiny-rn architecture, with a context as long as the longest toy caption.
    model: dict[str, Any] = field(default_factory=lambda: {
        **TINY_CLIP_CONFIGS["tiny-rn"], "context_length": 24})

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["marked_variants"] = list(self.marked_variants)
        out["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        if not self.batch_by_image:
            # Written only when on: the checkpoints trained before the option, whose bytes
            # embed this dictionary, have no such key.
            del out["batch_by_image"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyClipConfig:
        """The configuration ``as_dict`` wrote (a checkpoint's recorded one)."""
        return cls(**{**data, "marked_variants": tuple(data["marked_variants"])})

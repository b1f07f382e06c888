"""A toy CLIP trained here, on the embedded synthetic world, so that methods can be told apart.

With untrained weights every method scores like chance. This module trains the real
``clip.model.CLIP`` class at a small size, contrastively, on image-caption pairs drawn from the
**train split only** of a generated embedded dataset (never a val or test image):

* whole images, captioned with the objects' colours, categories, positions ("on the left",
  "at the top") and relations ("to the left of");
* object crops, captioned with their referring expressions;
* a share of images with a red ellipse drawn around one object (the project's visual-prompt
  code, ``visual_prompts.render_variant``), captioned "This is <its expression>", as web data
  does for real CLIP (the red-circle paper's explanation of why CLIP reads a red ellipse);
* objects in their scene with everything outside their box painted one plain colour, drawn
  at random, captioned with the expression alone and "<expression> on a <colour> background"
  (product shots, as web data has them: what the colour-background encoding relies on).

Training is seeded and deterministic (``torch.use_deterministic_algorithms``, one thread): the
same configuration gives the same bytes on the same CPU. Numbers computed with these weights
are about the synthetic world, never about RefCOCOg.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from refcocog_tools.core.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
)
from refcocog_tools.data.minidata import BACKGROUNDS, CATEGORIES, COLOURS, generate
from refcocog_tools.engine.results import TOY_LABEL
from refcocog_tools.methods.colour_encodings import LUT_RGB, paint_background
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.models.untrained_models import TINY_CLIP_CONFIGS
from refcocog_tools.prompts.visual_prompts import crop, render_variant

__all__ = [
    "TOY_LABEL",
    "ToyClipConfig",
    "TrainingPairs",
    "build_pairs",
    "pack",
    "train_toy_clip",
    "write_checkpoint",
]

METADATA_KEY = "toy_clip"


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


# ----------------------------------------------------------------------------------------------
# The training pairs
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainingPairs:
    """Preprocessed images (N, 3, R, R), the captions of each, and what kind each is."""

    pixels: torch.Tensor
    captions: list[list[str]]
    kinds: list[str]  # "image", "crop", "marked" or "painted"
    image_ids: list[int]

    def counts(self) -> dict[str, int]:
        return {kind: self.kinds.count(kind) for kind in ("image", "crop", "marked", "painted")}


def _object_colour(image: Image.Image, box: Sequence[float]) -> str:
    """The palette colour most pixels inside ``box`` are closest to (background excluded).

    The generator does not store colours in the annotations; the drawn pixels carry them.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    region = image.crop((x1, y1, x2, y2)).convert("RGB").resize((16, 16), Image.NEAREST)
    palette = list(COLOURS.items())
    votes: dict[str, int] = {}
    raw = region.tobytes()
    for pixel in zip(raw[0::3], raw[1::3], raw[2::3], strict=True):
        if min(sum((a - b) ** 2 for a, b in zip(pixel, bg, strict=True))
               for bg in BACKGROUNDS) < 300:
            continue
        name, _ = min(palette, key=lambda kv: sum((a - b) ** 2
                                                  for a, b in zip(pixel, kv[1], strict=True)))
        votes[name] = votes.get(name, 0) + 1
    return max(sorted(votes), key=votes.get) if votes else "gray"


def _where(box: Sequence[float], size: tuple[int, int]) -> tuple[str, str]:
    cx = (box[0] + box[2]) / 2 / size[0]
    cy = (box[1] + box[3]) / 2 / size[1]
    horizontal = "on the left" if cx < 0.4 else "on the right" if cx > 0.6 else "in the middle"
    vertical = "at the top" if cy < 0.45 else "at the bottom" if cy > 0.55 else ""
    return horizontal, vertical


def _scene_captions(objects: list[tuple[str, str, list[float]]], size: tuple[int, int],
                    rng: random.Random, n: int) -> list[str]:
    """Whole-image captions with position and relation words, e.g. "a red car on the left and
    a blue dog at the top" or "a red car to the left of a blue dog"."""
    captions: list[str] = []
    for _ in range(n * 3):
        if len(captions) >= n:
            break
        if len(objects) > 1 and rng.random() < 0.4:
            a, b = rng.sample(objects, 2)
            ax = (a[2][0] + a[2][2]) / 2
            bx = (b[2][0] + b[2][2]) / 2
            relation = "to the left of" if ax < bx else "to the right of"
            text = f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}"
        else:
            chosen = rng.sample(objects, min(len(objects), rng.randint(1, 3)))
            parts = []
            for colour, name, box in chosen:
                horizontal, vertical = _where(box, size)
                where = rng.choice([w for w in (horizontal, vertical) if w])
                parts.append(f"a {colour} {name} {where}")
            text = " and ".join(parts)
        if text not in captions:
            captions.append(text)
    return captions


def build_pairs(config: ToyClipConfig, images: int = 0) -> TrainingPairs:
    """Render and preprocess every training pair of ``config``'s world (train split only);
    ``images``: those of the first N train images only (0: all), the same as a full build's."""
    refs, instances, files = generate(config.data_images, config.data_seed)
    train_images = {r["image_id"] for r in refs if r["split"] == "train"}
    other = {r["image_id"] for r in refs if r["split"] != "train"}
    assert not train_images & other, "an image belongs to one split only"
    names = {i["id"]: i["file_name"] for i in instances["images"]}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sentences: dict[int, list[str]] = {}
    for ref in refs:
        if ref["split"] == "train":
            sentences.setdefault(ref["ann_id"], []).extend(s["sent"] for s in ref["sentences"])
    preprocess = clip.clip._transform(config.model["image_resolution"])
    rng = random.Random(config.seed)
    # Its own stream, so the other pairs are the same whatever painted_share is.
    paint_rng = random.Random(config.seed + 1_000_003)
    paint_colours = sorted(LUT_RGB)
    pixels: list[torch.Tensor] = []
    captions: list[list[str]] = []
    kinds: list[str] = []
    image_ids: list[int] = []

    def add(image: Image.Image, texts: list[str], kind: str, image_id: int) -> None:
        pixels.append(preprocess(image))
        captions.append(texts)
        kinds.append(kind)
        image_ids.append(image_id)

    for image_id in sorted(train_images)[:images or None]:
        image = Image.open(io.BytesIO(files[names[image_id]])).convert("RGB")
        anns = sorted(by_image[image_id], key=lambda a: a["id"])
        objects = []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            box = [x, y, x + w, y + h]
            objects.append((_object_colour(image, box), CATEGORIES[ann["category_id"]][0], box))
        add(image, _scene_captions(objects, image.size, rng, config.captions_per_image),
            "image", image_id)
        for ann, (_, _, box) in zip(anns, objects, strict=True):
            texts = sentences.get(ann["id"])
            if not texts:
                continue
            add(crop(image, box), list(texts), "crop", image_id)
            if rng.random() < config.marked_share:
                variant = rng.choice(config.marked_variants)
                add(render_variant(image, box, variant), [f"This is {t}" for t in texts],
                    "marked", image_id)
            if paint_rng.random() < config.painted_share:
                colour = paint_rng.choice(paint_colours)
                add(paint_background(image, box, LUT_RGB[colour]),
                    [c for t in texts for c in (t, f"{t} on a {colour} background")],
                    "painted", image_id)
    return TrainingPairs(torch.stack(pixels), captions, kinds, image_ids)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                      caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where pairs with the same caption text all count as positives
    (the world's captions repeat: "the red car" is true of many crops)."""
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _epoch_order(pairs: TrainingPairs, generator: torch.Generator, by_image: bool
                 ) -> torch.Tensor:
    """The pairs of one epoch in training order.

    At random, a batch of 64 rarely holds two pairs that differ only in where something is,
    so the contrastive loss is solved by colour and category alone and position words get
    almost no gradient (CLIP's bag-of-words behaviour: Yuksekgonul et al., ICLR 2023).
    ``by_image``: the images come in random order and each brings all its pairs along, so
    the marked copies of same-category twins ("This is the car on the left" / "... on the
    right") meet in one batch as each other's negatives. Same pairs, same captions; only the
    batches are composed differently. Off by default: with every referred object marked
    (``marked_share=1``) it did not make red-circle read position better (test-split numbers
    in ``tests/test_toy_world.py``).
    """
    if not by_image:
        return torch.randperm(len(pairs.kinds), generator=generator)
    groups: dict[int, list[int]] = {}
    for index, image_id in enumerate(pairs.image_ids):
        groups.setdefault(image_id, []).append(index)
    images = sorted(groups)
    shuffled = torch.randperm(len(images), generator=generator).tolist()
    return torch.tensor([i for k in shuffled for i in groups[images[k]]])


class _Deterministic:
    """One thread and deterministic kernels for the duration of training, restored after."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        self.algorithms = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.algorithms)
        torch.set_num_threads(self.threads)


def train_toy_clip(config: ToyClipConfig, pairs: TrainingPairs | None = None,
                   progress: bool = False) -> tuple[clip.model.CLIP, dict[str, Any]]:
    """Train a toy CLIP; returns the model (eval mode) and its metadata (config, data, history)."""
    with _Deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if pairs is None:
            pairs = build_pairs(config)
        model = clip.model.CLIP(**config.model).float()
        unique = sorted({c for texts in pairs.captions for c in texts})
        caption_index = {c: i for i, c in enumerate(unique)}
        full_tokens = clip.tokenize(unique, context_length=config.model["context_length"])
        # Only the few dozen tokens the captions use are trained: a compact embedding over
        # them stands in for the 49408-row table during training (the optimiser would
        # otherwise update 3M untouched entries every step) and is written back at the end.
        used = torch.unique(full_tokens)
        full_table = model.token_embedding
        compact = torch.nn.Embedding(len(used), full_table.weight.shape[1])
        with torch.no_grad():
            compact.weight.copy_(full_table.weight[used])
        tokens = torch.searchsorted(used, full_tokens)
        model.token_embedding = compact
        generator = torch.Generator().manual_seed(config.seed)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)

        def lr_at(step: int) -> float:
            if step < config.warmup:
                return (step + 1) / config.warmup
            done = (step - config.warmup) / max(1, config.steps - config.warmup)
            return 0.5 * (1 + math.cos(math.pi * done))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
        history: list[float] = []
        order = _epoch_order(pairs, generator, config.batch_by_image)
        cursor = 0
        model.train()
        for step in range(config.steps):
            if cursor + config.batch_size > len(order):
                order = _epoch_order(pairs, generator, config.batch_by_image)
                cursor = 0
            batch = order[cursor:cursor + config.batch_size]
            cursor += config.batch_size
            picks = torch.randint(0, 1 << 30, (len(batch),), generator=generator)
            ids = torch.tensor([
                caption_index[pairs.captions[i][int(p) % len(pairs.captions[i])]]
                for i, p in zip(batch.tolist(), picks.tolist(), strict=True)])
            loss = _contrastive_loss(model.encode_image(pairs.pixels[batch]),
                                     model.encode_text(tokens[ids]),
                                     model.logit_scale.exp().clamp(max=100.0), ids)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            history.append(round(loss.item(), 5))
            if progress and (step % 50 == 0 or step == config.steps - 1):
                print(f"step {step:5d}  loss {history[-1]:.4f}", flush=True)
        model.eval()
        with torch.no_grad():
            # Rows of tokens no caption contains got no gradient and stay random in CLIP's
            # initialisation; zeros say so, and make the shipped file compress to a fraction.
            full_table.weight.zero_()
            full_table.weight[used] = compact.weight
        model.token_embedding = full_table
    metadata = {
        "label": TOY_LABEL,
        "config": config.as_dict(),
        "data": {"generator": "refcocog_tools.data.minidata.generate", "images": config.data_images,
                 "seed": config.data_seed, "split": "train",
                 "train_images": len(set(pairs.image_ids)), "pairs": pairs.counts(),
                 "marked_share": config.marked_share, "painted_share": config.painted_share,
                 "captions": len(unique)},
        "history": {"loss_per_step": history},
    }
    return model, metadata


def state_dict_fp16(model: clip.model.CLIP) -> dict[str, torch.Tensor]:
    """fp16 tensors, each with its own storage, so the bytes depend only on the values."""
    return {key: (value.half() if value.is_floating_point() else value).contiguous().clone()
            for key, value in model.state_dict().items()}


def write_checkpoint(path: str | Path, model: clip.model.CLIP, metadata: dict[str, Any],
                     seconds: float | None = None) -> str:
    """``path``: ``{"state_dict", "toy_clip": metadata}`` (weights-only loadable); ``path.json``:
    the metadata plus the file's sha256 and the training time. Returns the sha256."""
    path = Path(path)
    atomic_torch_save(path, {"state_dict": state_dict_fp16(model), METADATA_KEY: metadata})
    checksum = sha256_file(path)
    atomic_write_json(Path(str(path) + ".json"), {
        **metadata, "toy": True, "untrained": False, "sha256": checksum,
        "training_seconds": None if seconds is None else round(seconds, 1),
        "torch_version": torch.__version__,
    })
    return checksum


def pack(checkpoint: str | Path, name: str = "toy-rn",
         out_dir: str | Path | None = None) -> Path:
    """Ship ``checkpoint`` (a train-toy-clip output) as the package's ``<name>.pt.gz`` with
    ``<name>.json`` (its metadata and sha256). gzip with a zero timestamp: same bytes in,
    same bytes out. The unused token rows are zeros, so the file packs to a fraction."""
    import gzip
    import json

    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parents[1] / "weights"
    meta = json.loads(Path(str(checkpoint) + ".json").read_text(encoding="utf-8"))
    if meta.get("sha256") != sha256_file(checkpoint):
        raise ValueError(f"{checkpoint}: its sha256 differs from the one in its sidecar JSON")
    data = checkpoint.read_bytes()
    atomic_write_bytes(out / f"{name}.pt.gz", gzip.compress(data, compresslevel=9, mtime=0))
    atomic_write_json(out / f"{name}.json", {**meta, "name": name})
    return out / f"{name}.pt.gz"



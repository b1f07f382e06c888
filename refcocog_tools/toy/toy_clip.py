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

import gzip
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from refcocog_tools.core.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
)
from refcocog_tools.engine.results import TOY_LABEL
from refcocog_tools.models.openai_clip import clip
from refcocog_tools.toy.config import ToyClipConfig
from refcocog_tools.toy.training_pairs import TrainingPairs, build_pairs

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
    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parents[1] / "weights"
    meta = json.loads(Path(str(checkpoint) + ".json").read_text(encoding="utf-8"))
    if meta.get("sha256") != sha256_file(checkpoint):
        raise ValueError(f"{checkpoint}: its sha256 differs from the one in its sidecar JSON")
    data = checkpoint.read_bytes()
    atomic_write_bytes(out / f"{name}.pt.gz", gzip.compress(data, compresslevel=9, mtime=0))
    atomic_write_json(out / f"{name}.json", {**meta, "name": name})
    return out / f"{name}.pt.gz"



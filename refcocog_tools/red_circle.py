"""The study's final proposal: red-ellipse visual prompts on a blurred background, debiased.

For every proposal the whole image is rendered with the background Gaussian-blurred (radius 20),
the proposal's rectangle kept sharp and a red ellipse (3 px) drawn around it, in two variants
(blur; blur + grayscale). Expressions become "This is <expression>". Cosine similarities are
averaged over backbones, debiased, reduced over variants by max and over proposals by argmax.

Debiasing (after Shtedritski et al., "What does CLIP know about a red circle?"): the study
stacked the expression prompts with N prompts sampled from the training expressions, took the
similarity of every row with every visual prompt, and subtracted each visual prompt's column
mean from the expression rows. Because the similarity is linear in the text embedding, the
column mean over the N debias rows equals the similarity with the *mean* of the normalised
debias embeddings, so no (E + N) x V matrix is ever built; ``debias_explicit`` keeps the
original form for the tests. The study's sampling never took effect (``np.random.seed = 42``
assigns to the function instead of calling it); here the sample is drawn from a seeded
``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backbones import ClipBackbone
from .baseline import box_key
from .cache import EmbeddingCache, image_fingerprint, params_key
from .prediction import Prediction
from .proposals import Proposals
from .visual_prompts import VARIANTS, render_variants

STUDY_VARIANTS = ("blur", "blur_gray")


def sample_debias_sentences(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` training expressions drawn with a seeded generator (with replacement only when
    ``n`` exceeds the pool, as happens on the small embedded dataset)."""
    if n <= 0 or not pool:
        return []
    rng = np.random.default_rng(seed)
    index = rng.choice(len(pool), size=n, replace=n > len(pool))
    return [pool[i] for i in index]


def debias_fast(sim: torch.Tensor, debias_sim_mean: torch.Tensor, n_debias: int) -> torch.Tensor:
    """Debiased scores from the expression rows ``sim`` (E, V) and the debias column means.

    ``debias_sim_mean`` (V,) is the similarity of each visual prompt with the mean normalised
    debias embedding, i.e. the mean of the N debias rows. Equal to ``debias_explicit``.
    """
    rows = sim.shape[0]
    column_mean = (sim.sum(dim=0) + n_debias * debias_sim_mean) / (rows + n_debias)
    return sim - column_mean


def debias_explicit(full_sim: torch.Tensor, n_expressions: int) -> torch.Tensor:
    """The study's form: ``full_sim`` stacks E expression rows over N debias rows."""
    return (full_sim - full_sim.mean(dim=0))[:n_expressions]


class RedCircle:
    """Visual prompts (marker + blurred background) with "This is ..." text prompts."""

    name = "red-circle"

    def __init__(
        self,
        backbones: Sequence[ClipBackbone],
        debias_pool: Sequence[str] = (),
        cache: EmbeddingCache | None = None,
        *,
        variants: Sequence[str] = STUDY_VARIANTS,
        blur_radius: float = 20.0,
        stroke_colour: str = "red",
        stroke_width: int = 3,
        marker: str = "ellipse",
        prefix: str = "This is ",
        n_debias: int = 5000,
        debias_seed: int = 0,
        variant_reduce: str = "max",
        area_filter: float | None = None,
        class_prior: bool = False,
        class_prompt: str = "A photo of a {}",
        render_size: int | None = None,
    ) -> None:
        if not backbones:
            raise ValueError("red-circle needs at least one CLIP backbone")
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {variants}")
        if variant_reduce not in ("max", "mean"):
            raise ValueError("variant_reduce must be 'max' or 'mean'")
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.variants = tuple(variants)
        self.render_params = {"colour": stroke_colour, "width": stroke_width,
                              "blur_radius": blur_radius, "marker": marker,
                              "target_size": render_size}
        self.prefix = prefix
        self.variant_reduce = variant_reduce
        self.area_filter = area_filter
        self.class_prior = class_prior
        self.class_prompt = class_prompt
        self.debias_seed = debias_seed
        self.debias_sentences = [prefix + s for s in
                                 sample_debias_sentences(debias_pool, n_debias, debias_seed)]
        # Per backbone: the mean of the normalised debias text embeddings (D,).
        self.debias_means = [
            self.cache.texts(b, self.debias_sentences).mean(dim=0)
            if self.debias_sentences else None
            for b in self.backbones
        ]

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name, "variants": list(self.variants), **self.render_params,
            "prefix": self.prefix, "n_debias": len(self.debias_sentences),
            "debias_seed": self.debias_seed, "variant_reduce": self.variant_reduce,
            "area_filter": self.area_filter, "class_prior": self.class_prior,
            "class_prompt": self.class_prompt,
        }

    # -- pieces, public so that notebooks and tests can show each step ------------------------
    def visual_prompt_keys(self, image: Image.Image, boxes: torch.Tensor) -> list[str]:
        params = params_key(**self.render_params)
        fingerprint = image_fingerprint(image)
        return [f"rc:{fingerprint}:{params}:{v}:{box_key(b)}" for b in boxes for v in self.variants]

    def render(self, image: Image.Image, boxes: torch.Tensor,
               indices: Sequence[int] | None = None) -> list[Image.Image]:
        """Visual prompts in key order (proposal-major, then variant), or only ``indices``."""
        k = len(self.variants)
        indices = list(range(len(boxes) * k)) if indices is None else list(indices)
        wanted = sorted({i // k for i in indices})
        rendered = render_variants(image, boxes[wanted], self.variants, **self.render_params)
        position = {p: j for j, p in enumerate(wanted)}
        return [rendered[position[i // k]][i % k] for i in indices]

    def kept_proposals(self, image_size: tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
        """Indices of the proposals that pass the optional area filter (never none)."""
        keep = torch.arange(len(boxes))
        if self.area_filter is not None:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            small = area < self.area_filter * image_size[0] * image_size[1]
            if small.any():
                keep = keep[small]
        return keep

    def scores(self, image: Image.Image, expressions: Sequence[str],
               proposals: Proposals) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, P_kept) final scores and the kept proposal indices."""
        keep = self.kept_proposals(image.size, proposals.boxes)
        boxes = proposals.boxes[keep]
        keys = self.visual_prompt_keys(image, boxes)
        texts = [self.prefix + e for e in expressions]
        total = None
        for backbone, debias_mean in zip(self.backbones, self.debias_means, strict=True):
            visual = self.cache.images(backbone, keys, lambda idx: self.render(image, boxes, idx))
            text = self.cache.texts(backbone, texts)
            sim = text @ visual.T  # (E, P*K)
            if self.class_prior:
                sim = sim * self._class_weights(backbone, text, proposals, keep)
            if debias_mean is not None:
                sim = debias_fast(sim, visual @ debias_mean, len(self.debias_sentences))
            total = sim if total is None else total + sim
        assert total is not None
        per_variant = (total / len(self.backbones)).reshape(len(texts), len(boxes),
                                                           len(self.variants))
        reduced = (per_variant.max(dim=-1).values if self.variant_reduce == "max"
                   else per_variant.mean(dim=-1))
        return reduced, keep

    def _class_weights(self, backbone: ClipBackbone, text: torch.Tensor, proposals: Proposals,
                       keep: torch.Tensor) -> torch.Tensor:
        """Per (expression, visual prompt): similarity of the expression with "A photo of a
        {label}" for the proposal's label (1 where the proposer gives no label)."""
        labels = [proposals.labels[i] for i in keep.tolist()]
        named = sorted({label for label in labels if label})
        weights = torch.ones(text.shape[0], len(labels))
        if named:
            class_text = self.cache.texts(backbone, [self.class_prompt.format(n) for n in named])
            class_sim = text @ class_text.T
            for j, label in enumerate(labels):
                if label:
                    weights[:, j] = class_sim[:, named.index(label)]
        return weights.repeat_interleave(len(self.variants), dim=1)

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        reduced, keep = self.scores(image, expressions, proposals)
        # Report scores over all proposals; filtered ones get -inf so they are never chosen.
        full = torch.full((len(expressions), len(proposals)), float("-inf"))
        full[:, keep] = reduced
        return Prediction.from_scores(full, proposals)

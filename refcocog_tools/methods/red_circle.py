"""The study's final proposal: red-ellipse visual prompts on a blurred background, debiased.

For every proposal the whole image is rendered with the background Gaussian-blurred (radius 20),
the proposal's rectangle kept sharp and a red ellipse (3 px) drawn around it, in two variants
(blur; blur + grayscale); ``RedCircleOptions`` holds these settings and their defaults. With
proposals that carry segmentation masks, ``window="mask"`` keeps the mask sharp instead of the
rectangle (FGVP's "blur reverse mask" with the blur variant) and ``marker="mask-contour"``
outlines the mask (see ``mask_prompts``).
Expressions become "This is <expression>". Cosine similarities are averaged over backbones,
debiased, reduced over variants by max and over proposals by argmax.

Debiasing (after Shtedritski et al., "What does CLIP know about a red circle?"), per referred
object as in the study: for one ref, the "This is ..." prompts of that ref's own expressions are
stacked with N debias prompts, every row is scored against every visual prompt, and each visual
prompt's column mean over those E + N rows is subtracted from the ref's E rows. One call of
``RedCircle.predict`` is one ref; the engine calls it once per ref, so an expression's answer
never depends on the other refs of its image. Because the similarity is linear in the text
embedding, the column mean over the N debias rows equals the similarity with the *mean* of the
normalised debias embeddings, so no (E + N) x V matrix is ever built; ``debias_explicit`` keeps
the original form for the tests.

The debias prompts are ``numpy.random.default_rng(seed).choice(pool, N)`` (with replacement, as
the study's ``np.random.choice(all_prompts, 5000)``), where ``pool`` is "This is " + every
training expression in file order (refs in the order of the refs file, each ref's sentences in
order). The study's seed never took effect (``np.random.seed = 42`` assigns to the function
instead of calling it) and its training loader was shuffled; here anyone restating the method
with the same seed draws the same sample. With N = 0 the study's code had no debias features
and never defined the case: ``debias_at_zero="none"`` (the default) skips the subtraction,
``"own-prompts"`` applies the study's formula with N = 0 (the mean over the ref's own prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from refcocog_tools.methods.interface import EncodeRequest
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.scoring import box_key, request_embeddings
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache, image_fingerprint, params_key
from refcocog_tools.prompts.mask_prompts import as_masks, mask_keys, mask_options, uses_masks
from refcocog_tools.prompts.render import (
    DEFAULT_PREPROCESS,
    DEFAULT_RENDER_BACKEND,
    RENDER_BACKENDS,
    check_preprocess,
    host_to_device,
    prompt_inputs,
)
from refcocog_tools.prompts.visual_prompts import (
    DEFAULT_BLUR_RADIUS,
    DEFAULT_COLOUR,
    DEFAULT_MARKER,
    DEFAULT_WIDTH,
    DEFAULT_WINDOW,
    MARKER_SHAPES,
    STUDY_VARIANTS,
    VARIANTS,
    WINDOW_SHAPES,
    render_variants,
)
from refcocog_tools.proposals.structures import Proposals

DEBIAS_AT_ZERO = ("none", "own-prompts")
VARIANT_FUSIONS = ("max", "mean")


def debias_prompt_pool(train_expressions: Sequence[str], prefix: str = "This is ") -> list[str]:
    """The prompts debias samples are drawn from: ``prefix`` + every training expression, in
    the order given (the file order of the train split)."""
    return [prefix + e for e in train_expressions]


def sample_debias_sentences(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``numpy.random.default_rng(seed).choice(pool, n)``: ``n`` prompts drawn with
    replacement, as the study drew them. Drawn by index (same draws, no array of the pool)."""
    if n <= 0:
        return []
    if not pool:
        raise ValueError(f"{n} debias prompts requested but the training pool is empty")
    index = np.random.default_rng(seed).choice(len(pool), n)
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


@dataclass(frozen=True)
class RedCircleOptions:
    """Everything a red-circle run can change, with the study's values as defaults.

    The one place these defaults are written: the command line (``evaluate``, ``bench``) and the
    chapters' parameters read them from here. The drawing defaults are the rendering's own (the
    study's tuned 6.2 values in ``visual_prompts``), so a bare ``render_variants`` call and a
    default red-circle draw the same prompt.
    """

    variants: tuple[str, ...] = STUDY_VARIANTS
    blur_radius: float = DEFAULT_BLUR_RADIUS
    stroke_colour: str = DEFAULT_COLOUR
    stroke_width: int = DEFAULT_WIDTH
    marker: str = DEFAULT_MARKER
    window: str = DEFAULT_WINDOW
    prefix: str = "This is "
    n_debias: int = 5000
    debias_at_zero: str = "none"
    variant_fusion: str = "max"
    area_filter: float | None = None
    class_prior: bool = False
    class_prompt: str = "A photo of a {}"
    render_size: int | None = None
    render_backend: str = DEFAULT_RENDER_BACKEND
    preprocess: str = DEFAULT_PREPROCESS

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, "
                             f"got {self.variants}")
        if self.variant_fusion not in VARIANT_FUSIONS:
            raise ValueError(f"variant_fusion must be one of {VARIANT_FUSIONS}")
        if self.debias_at_zero not in DEBIAS_AT_ZERO:
            raise ValueError(f"debias_at_zero must be one of {DEBIAS_AT_ZERO}")
        if self.render_backend not in RENDER_BACKENDS:
            raise ValueError(f"render_backend must be one of {RENDER_BACKENDS}, "
                             f"got {self.render_backend!r}")
        check_preprocess(self.preprocess)
        if self.marker not in MARKER_SHAPES or self.window not in WINDOW_SHAPES:
            raise ValueError(f"marker must be one of {MARKER_SHAPES} and window one of "
                             f"{WINDOW_SHAPES}, got {self.marker!r} and {self.window!r}")

    @property
    def uses_masks(self) -> bool:
        """Whether the prompts are drawn from the proposals' segmentation masks."""
        return uses_masks(self.marker, self.window)

    def render_params(self) -> dict[str, Any]:
        """The drawing options by the names the renderers (``render_variants``,
        ``render.prompt_inputs``) and the cache keys use."""
        return {"colour": self.stroke_colour, "width": self.stroke_width,
                "blur_radius": self.blur_radius, "marker": self.marker,
                "window": self.window, "target_size": self.render_size}


class RedCircle:
    """Visual prompts (marker + blurred background) with "This is ..." text prompts."""

    name = "red-circle"

    def __init__(
        self,
        backbones: Sequence[ClipBackbone],
        debias_pool: Sequence[str] = (),
        cache: EmbeddingCache | None = None,
        options: RedCircleOptions = RedCircleOptions(),
        *,
        debias_seed: int = 0,
    ) -> None:
        if not backbones:
            raise ValueError("red-circle needs at least one CLIP backbone")
        self.options = options
        self.render_backend = options.render_backend
        self.preprocess = options.preprocess
        self.backbones = list(backbones)
        self.cache = cache or EmbeddingCache()
        self.variants = options.variants
        self.render_params = options.render_params()
        self.prefix = options.prefix
        self.variant_fusion = options.variant_fusion
        self.area_filter = options.area_filter
        self.class_prior = options.class_prior
        self.class_prompt = options.class_prompt
        self.debias_seed = debias_seed
        self.debias_at_zero = options.debias_at_zero
        self.debias_pool_size = len(debias_pool)
        self.debias_sentences = sample_debias_sentences(
            debias_prompt_pool(debias_pool, options.prefix), options.n_debias, debias_seed)
        # Subtract a column mean at all: always with samples, at N = 0 only when asked.
        self.debiased = bool(self.debias_sentences) or options.debias_at_zero == "own-prompts"
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
            "debias_seed": self.debias_seed, "debias_at_zero": self.debias_at_zero,
            "debias": self.debias_description(),
            "variant_fusion": self.variant_fusion,
            "area_filter": self.area_filter, "class_prior": self.class_prior,
            "class_prompt": self.class_prompt, "render_backend": self.render_backend,
            "preprocess": self.preprocess,
        }

    def debias_description(self) -> str:
        """How the scores are debiased, in words (recorded in every results file)."""
        n = len(self.debias_sentences)
        if not self.debiased:
            return "none (n_debias 0)"
        samples = (f" and {n} prompts drawn with replacement by numpy default_rng("
                   f"{self.debias_seed}).choice from {self.prefix!r} + the "
                   f"{self.debias_pool_size} training expressions in file order") if n else ""
        return ("per referred object: subtract each visual prompt's mean similarity over the "
                f"ref's own prompts{samples}")

    # -- pieces, public so that notebooks and tests can show each step ------------------------
    def visual_prompt_keys(self, image: Image.Image, boxes: torch.Tensor,
                           masks: torch.Tensor | None = None) -> list[str]:
        # The backend and the preprocessing change the model inputs: both are in the key, and
        # so is each mask a mask prompt is drawn from (one box can carry different masks).
        params = params_key(**self.render_params, backend=self.render_backend,
                            preprocess=self.preprocess)
        fingerprint = image_fingerprint(image)
        shapes = [box_key(b) for b in boxes]
        if self.options.uses_masks:
            checked = as_masks(masks, len(boxes), image.height, image.width)
            shapes = [f"{s}:{m}" for s, m in zip(shapes, mask_keys(checked), strict=True)]
        return [f"rc:{fingerprint}:{params}:{v}:{s}" for s in shapes for v in self.variants]

    def proposal_masks(self, proposals: Proposals, keep: torch.Tensor) -> torch.Tensor | None:
        """The kept proposals' masks when the prompts are drawn from masks (else None); a
        one-line error naming the option when the proposals carry none."""
        if not self.options.uses_masks:
            return None
        masks = getattr(proposals, "masks", None)
        if masks is None:
            raise ValueError(f"red-circle {mask_options(self.options.marker, self.options.window)}"
                             ": these proposals carry no segmentation masks (proposals.masks); "
                             "use a proposer that gives masks, or a box window and marker")
        return masks[keep]

    def render(self, image: Image.Image, boxes: torch.Tensor,
               indices: Sequence[int] | None = None,
               masks: torch.Tensor | None = None) -> list[Image.Image]:
        """Visual prompts in key order (proposal-major, then variant), or only ``indices``;
        ``masks``: the proposals' masks, for the mask window and marker."""
        k = len(self.variants)
        indices = list(range(len(boxes) * k)) if indices is None else list(indices)
        wanted = sorted({i // k for i in indices})
        rendered = render_variants(image, boxes[wanted], self.variants, **self.render_params,
                                   masks=None if masks is None else masks[wanted])
        position = {p: j for j, p in enumerate(wanted)}
        return [rendered[position[i // k]][i % k] for i in indices]

    def prompt_inputs(self, image: Image.Image, boxes: torch.Tensor, resolution: int,
                      indices: Sequence[int] | None = None,
                      device: str | torch.device = "cpu",
                      masks: torch.Tensor | None = None) -> torch.Tensor:
        """Model inputs ``(N, 3, R, R)`` of the visual prompts in key order (or ``indices``),
        drawn by the method's render backend and preprocessed in its mode."""
        k = len(self.variants)
        indices = list(range(len(boxes) * k)) if indices is None else list(indices)
        wanted = sorted({i // k for i in indices})
        inputs = prompt_inputs(image, boxes[wanted], self.variants, resolution,
                               preprocess=self.preprocess, backend=self.render_backend,
                               device=device, **self.render_params,
                               masks=None if masks is None else masks[wanted])
        position = {p: j for j, p in enumerate(wanted)}
        rows = [position[i // k] * k + i % k for i in indices]
        if rows == list(range(len(inputs))):
            return inputs  # all of them, in order (the usual case): no gather on the device
        return inputs[host_to_device(torch.tensor(rows, dtype=torch.long), inputs.device)]

    def kept_proposals(self, image_size: tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
        """Indices of the proposals that pass the optional area filter (never none)."""
        keep = torch.arange(len(boxes))
        if self.area_filter is not None:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            small = area < self.area_filter * image_size[0] * image_size[1]
            if small.any():
                keep = keep[small]
        return keep

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        """The visual prompts of the kept proposals (key order; which they are:
        ``proposal_indices``) and the expressions' prompts."""
        keep = self.kept_proposals(image.size, proposals.boxes)
        boxes, masks = proposals.boxes[keep], self.proposal_masks(proposals, keep)
        return EncodeRequest(
            self.visual_prompt_keys(image, boxes, masks),
            lambda resolution, idx, device="cpu": self.prompt_inputs(image, boxes, resolution,
                                                                     idx, device, masks),
            self.text_prompts(expressions),
            on_device=self.render_backend == "torch", proposal_indices=keep)

    def text_prompts(self, expressions: Sequence[str]) -> list[str]:
        """The "This is ..." prompts of ``expressions``."""
        return [self.prefix + e for e in expressions]

    def scores(self, image: Image.Image, expressions: Sequence[str], proposals: Proposals,
               request: EncodeRequest | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, P_kept) final scores and the kept proposal indices.

        ``expressions`` are the expressions of one referred object: the debiasing column mean
        runs over their prompts (and the debias samples), as in the study. ``request``: this
        image's ``encode_request`` (for any of its expressions), when already built.
        """
        if request is None:
            request = self.encode_request(image, expressions, proposals)
        keep = request.proposal_indices
        assert keep is not None, "a red-circle request names its kept proposals"
        texts = self.text_prompts(expressions)
        total = None
        for backbone, debias_mean in zip(self.backbones, self.debias_means, strict=True):
            visual = request_embeddings(self.cache, backbone, request)
            text = self.cache.texts(backbone, texts)
            sim = text @ visual.T  # (E, P*K)
            if self.class_prior:
                sim = sim * self._class_weights(backbone, text, proposals, keep)
            sim = self.debias(sim, visual, debias_mean)
            total = sim if total is None else total + sim
        assert total is not None
        return self.fuse_variants(total, len(texts), len(keep)), keep

    def debias(self, sim: torch.Tensor, visual: torch.Tensor,
               debias_mean: torch.Tensor | None) -> torch.Tensor:
        """(E, P*K) similarities ``sim`` of the text prompts with the ``visual`` prompts
        (P*K, D), debiased (``debias_fast``) when the method debiases; ``debias_mean``: one
        backbone's mean debias text embedding (None: no samples, only the prompts' own mean)."""
        if not self.debiased:
            return sim
        debias_sim = (visual @ debias_mean if debias_mean is not None
                      else sim.new_zeros(sim.shape[1]))
        return debias_fast(sim, debias_sim, len(self.debias_sentences))

    def fuse_variants(self, total: torch.Tensor, n_texts: int, n_boxes: int) -> torch.Tensor:
        """(E, P) scores from the (E, P*K) similarities summed over the backbones: their mean
        over backbones, the K variants of each proposal fused by ``variant_fusion``."""
        per_variant = (total / len(self.backbones)).reshape(n_texts, n_boxes, len(self.variants))
        return (per_variant.max(dim=-1).values if self.variant_fusion == "max"
                else per_variant.mean(dim=-1))

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
        """One box per expression; ``expressions`` are those of one referred object."""
        return self.predict_from_request(self.encode_request(image, expressions, proposals),
                                         image, expressions, proposals)

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals) -> Prediction:
        """``predict`` from this image's request, already built (``PredictsFromRequest``)."""
        reduced, keep = self.scores(image, expressions, proposals, request)
        # Report scores over all proposals; filtered ones get -inf so they are never chosen.
        full = torch.full((len(expressions), len(proposals)), float("-inf"))
        full[:, keep] = reduced
        return Prediction.from_scores(full, proposals)

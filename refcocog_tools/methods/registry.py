"""Every grounding method behind one name: its class, its typed options and how it is built.

``METHODS`` maps a method name to its entry: the class, the frozen dataclass of its options
(whose defaults are the one place a method's default is written: the command line and the
chapters' parameters read them) and what it needs, declared here once: a CLIP, a debias pool
(the training expressions red-circle draws debias prompts from) and proposals with masks, the
last two as functions of its options. ``make_method`` is the one constructor; the run builder
(``engine.run``) reads the needs. A method never loads a model: it receives backbones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from refcocog_tools.methods.baseline import CropMatching, CropMatchingOptions
from refcocog_tools.methods.colour_encodings import (
    ColourBackground,
    ColourBackgroundOptions,
    ColourOverlay,
)
from refcocog_tools.methods.floors import FLOORS, RandomProposal
from refcocog_tools.methods.gradcam import GradCam, GradCamOptions
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.methods.red_circle import RedCircle, RedCircleOptions
from refcocog_tools.methods.regressor.method import RegressorMethod, RegressorOptions
from refcocog_tools.methods.relations.options import (
    ENTITY_SCORERS,
    RelationsOptions,
    scorer_options_from,
    with_settings,
)
from refcocog_tools.methods.relations.resolver import RelationsMethod
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.prompts.mask_prompts import mask_options

# The book writes "colour", the method names say "color": both spellings name the same method.
SPELLINGS = {"colour-background": "color-background", "colour-overlay": "color-overlay"}
@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none (colour-overlay, the floors)."""


@dataclass(frozen=True)
class MethodInputs:
    """What every method is built from besides its options."""

    backbones: list[ClipBackbone]
    cache: EmbeddingCache | None = None
    debias_pool: Sequence[str] = ()
    seed: int = 0


def _needs_nothing(options: Any) -> bool:
    return False


def _no_prompts(options: Any) -> RedCircleOptions | None:
    return None


@dataclass(frozen=True)
class MethodEntry:
    """A method in the registry: its class, its options type, what it needs, and how it is
    built from its inputs and options.

    ``prompt_options``: the red-circle options its visual prompts are drawn with (None for a
    method that draws none), from which ``needs_masks`` follows; ``needs_debias_pool``: whether
    it draws debias prompts from the training expressions.
    """

    cls: type
    options: type
    needs_clip: bool
    build: Callable[[MethodInputs, Any], GroundingMethod]
    needs_debias_pool: Callable[[Any], bool] = _needs_nothing
    prompt_options: Callable[[Any], RedCircleOptions | None] = _no_prompts

    def needs_masks(self, options: Any) -> bool:
        """Whether the method's prompts are drawn from the proposals' masks (FGVP's window
        and contour: ``prompts.mask_prompts.uses_masks``)."""
        drawn = self.prompt_options(options)
        return drawn is not None and drawn.uses_masks

    def mask_options(self, options: Any) -> str:
        """The options that ask for masks, as the command line names them ("" for none)."""
        drawn = self.prompt_options(options)
        return mask_options(drawn.marker, drawn.window) if drawn is not None else ""


def _red_circle(inputs: MethodInputs, options: RedCircleOptions) -> RedCircle:
    return RedCircle(inputs.backbones, inputs.debias_pool, inputs.cache, options,
                     debias_seed=inputs.seed)


def _relations(inputs: MethodInputs, options: RelationsOptions) -> RelationsMethod:
    return RelationsMethod(
        make_entity_scorer(options.entity_scorer, inputs, options.scorer_options), options,
        scorer_name=options.entity_scorer)


def _red_circle_debiases(options: RedCircleOptions) -> bool:
    return options.n_debias > 0  # n_debias 0 draws nothing: the pool would go unread


def _relations_prompts(options: RelationsOptions) -> RedCircleOptions | None:
    """The red-circle options of a relations scorer that draws visual prompts (red-circle,
    ReCLIP's blur), its defaults when none are given."""
    if options.entity_scorer not in ("red-circle", "blur"):
        return None
    return (options.scorer_options if options.scorer_options is not None
            else scorer_options_from(options.entity_scorer, {}))


def _relations_debiases(options: RelationsOptions) -> bool:
    # ReCLIP's blur isolation never debiases (make_entity_scorer gives it no pool).
    drawn = _relations_prompts(options)
    return options.entity_scorer == "red-circle" and drawn is not None and drawn.n_debias > 0


def _floor(cls: type) -> Callable[[MethodInputs, NoOptions], GroundingMethod]:
    if cls is RandomProposal:
        return lambda inputs, options: RandomProposal(seed=inputs.seed)
    return lambda inputs, options: cls()


METHODS: dict[str, MethodEntry] = {
    "baseline": MethodEntry(
        CropMatching, CropMatchingOptions, True,
        lambda inputs, options: CropMatching(inputs.backbones, inputs.cache, options)),
    "color-background": MethodEntry(
        ColourBackground, ColourBackgroundOptions, True,
        lambda inputs, options: ColourBackground(inputs.backbones, inputs.cache, options)),
    "color-overlay": MethodEntry(
        ColourOverlay, NoOptions, True,
        lambda inputs, options: ColourOverlay(inputs.backbones, inputs.cache)),
    "red-circle": MethodEntry(RedCircle, RedCircleOptions, True, _red_circle,
                              needs_debias_pool=_red_circle_debiases,
                              prompt_options=lambda options: options),
    "gradcam": MethodEntry(
        GradCam, GradCamOptions, True,
        lambda inputs, options: GradCam(inputs.backbones, options)),
    "regressor": MethodEntry(
        RegressorMethod, RegressorOptions, True,
        lambda inputs, options: RegressorMethod(inputs.backbones, options)),
    "relations": MethodEntry(RelationsMethod, RelationsOptions, True, _relations,
                             needs_debias_pool=_relations_debiases,
                             prompt_options=_relations_prompts),
    **{name: MethodEntry(cls, NoOptions, False, _floor(cls)) for name, cls in FLOORS.items()},
}
NEEDS_CLIP = frozenset(name for name, entry in METHODS.items() if entry.needs_clip)


def canonical_method(name: str) -> str:
    """The method's name with either spelling: ``colour-overlay`` is ``color-overlay``."""
    return SPELLINGS.get(name, name)


def method_entry(name: str) -> MethodEntry:
    """The registry entry of method ``name`` (either spelling)."""
    entry = METHODS.get(canonical_method(name))
    if entry is None:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return entry


def resolved_options(name: str, options: Any = None, **settings: Any) -> Any:
    """Method ``name``'s options object: ``options`` (default: its type's defaults), checked
    to be of its type, with ``settings`` replacing single options."""
    entry = method_entry(name)
    if options is None:
        options = entry.options()
    elif not isinstance(options, entry.options):
        raise TypeError(f"method {canonical_method(name)} takes {entry.options.__name__}, "
                        f"got {type(options).__name__}")
    return with_settings(f"method {canonical_method(name)}", options, settings)


def without_debiasing(name: str, options: Any) -> Any:
    """``options`` with red-circle's debias sample off (``n_debias`` 0) wherever the method
    draws one: for a run with no training split to draw it from (``ground`` on one photo)."""
    if canonical_method(name) == "red-circle":
        return replace(options, n_debias=0)
    if canonical_method(name) == "relations" and _relations_debiases(options):
        return replace(options, scorer_options=replace(_relations_prompts(options), n_debias=0))
    return options


def make_method(
    name: str,
    backbones: Sequence[ClipBackbone] = (),
    *,
    options: Any = None,
    cache: EmbeddingCache | None = None,
    debias_pool: Sequence[str] = (),
    seed: int = 0,
    **settings: Any,
) -> GroundingMethod:
    """Build method ``name`` from its typed ``options`` (default: its options type's defaults)
    with ``settings`` replacing single options (``make_method("red-circle", backbones,
    n_debias=0)``). ``seed`` seeds red-circle's debias sample and the random floor."""
    entry = method_entry(name)
    options = resolved_options(name, options, **settings)
    return entry.build(MethodInputs(list(backbones), cache, debias_pool, seed), options)


def make_entity_scorer(
    name: str,
    inputs: MethodInputs,
    options: RedCircleOptions | CropMatchingOptions | None = None,
) -> GroundingMethod | None:
    """The method that scores noun phrases for ``relations`` (see ``ENTITY_SCORERS``)."""
    if name == "none":
        return None
    options = options if options is not None else scorer_options_from(name, {})
    if name == "red-circle":
        return _red_circle(inputs, options)
    if name == "crop":
        return CropMatching(inputs.backbones, inputs.cache, options)
    if name == "blur":  # ReCLIP's isolation draws no debias prompts
        return _red_circle(replace(inputs, debias_pool=()), options)
    raise ValueError(f"unknown entity scorer {name!r}; choose from {', '.join(ENTITY_SCORERS)}")

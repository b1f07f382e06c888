"""Every grounding method behind one name: its class, its typed options and how it is built.

``METHODS`` maps a method name to its entry: the class, the frozen dataclass of its options
(whose defaults are the one place a method's default is written: the command line and the
chapters' parameters read them) and whether it needs CLIP. ``make_method`` is the one
constructor the engine, the CLI and the chapters use. A method never loads a model: it receives
backbones (and, for red-circle, the training expressions it draws debias prompts from).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .backbones import ClipBackbone
from .baseline import CropMatching, CropMatchingOptions
from .colour_encodings import ColourBackground, ColourBackgroundOptions, ColourOverlay
from .floors import FLOORS, RandomProposal
from .gradcam import GradCam, GradCamOptions
from .methods import GroundingMethod
from .prompt_cache import EmbeddingCache
from .red_circle import RedCircle, RedCircleOptions
from .regressors import RegressorMethod, RegressorOptions
from .relations import RelationsMethod

# The book writes "colour", the method names say "color": both spellings name the same method.
SPELLINGS = {"colour-background": "color-background", "colour-overlay": "color-overlay"}
# The visual-prompt methods the relations method can score its noun phrases with: red-circle,
# the crop of the baseline, ReCLIP's blur isolation (the proposal sharp on a blurred image, no
# marker), or none (labels and geometry alone).
ENTITY_SCORERS = ("red-circle", "crop", "blur", "none")
# ReCLIP's blur isolation is red-circle with one blurred variant, no marker, no prompt prefix
# and no debiasing.
BLUR_ISOLATION = RedCircleOptions(variants=("blur",), marker="none", n_debias=0, prefix="")
# The default options of each scorer that takes options; their types are the types it accepts.
SCORER_DEFAULTS: dict[str, RedCircleOptions | CropMatchingOptions] = {
    "red-circle": RedCircleOptions(), "blur": BLUR_ISOLATION, "crop": CropMatchingOptions()}


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none (colour-overlay, the floors)."""


@dataclass(frozen=True)
class RelationsOptions:
    """The relations resolver's settings (see ``relations``; ``RelationsMethod`` takes this
    object) and its noun-phrase scorer.

    ``scorer_options``: the scorer's own options (``RedCircleOptions`` for red-circle and blur,
    ``CropMatchingOptions`` for crop), None for its defaults; a mapping of option values is
    read into the scorer's options type.
    """

    entity_scorer: str = "red-circle"
    use_labels: bool = True
    label_floor: float = 0.0
    temperature: float = 0.01
    full_expression: bool = True
    superlative_rule: str = "exclusive"
    scorer_options: RedCircleOptions | CropMatchingOptions | None = None

    def __post_init__(self) -> None:
        if self.entity_scorer not in ENTITY_SCORERS:
            raise ValueError(f"unknown entity scorer {self.entity_scorer!r}; choose from "
                             f"{', '.join(ENTITY_SCORERS)}")
        given = self.scorer_options
        if isinstance(given, Mapping):
            given = _scorer_options(self.entity_scorer, given)
            object.__setattr__(self, "scorer_options", given)
        defaults = SCORER_DEFAULTS.get(self.entity_scorer)
        expected = type(defaults) if defaults is not None else None
        if given is not None and (expected is None or not isinstance(given, expected)):
            raise ValueError(f"entity scorer {self.entity_scorer!r} takes "
                             f"{expected.__name__ if expected else 'no options'}, "
                             f"got {type(given).__name__}")


def _scorer_options(scorer: str, values: Mapping[str, Any]
                    ) -> RedCircleOptions | CropMatchingOptions | None:
    """A scorer's options from option values, over the scorer's defaults."""
    defaults = SCORER_DEFAULTS.get(scorer)
    if defaults is None:
        if values:
            raise ValueError(f"entity scorer {scorer!r} takes no options, got {dict(values)}")
        return None
    return _with_settings(scorer, defaults, values)


@dataclass(frozen=True)
class MethodInputs:
    """What every method is built from besides its options."""

    backbones: list[ClipBackbone]
    cache: EmbeddingCache | None = None
    debias_pool: Sequence[str] = ()
    seed: int = 0


@dataclass(frozen=True)
class MethodEntry:
    """A method in the registry: its class, its options type, whether it needs CLIP, and how
    it is built from its inputs and options."""

    cls: type
    options: type
    needs_clip: bool
    build: Callable[[MethodInputs, Any], GroundingMethod]


def _red_circle(inputs: MethodInputs, options: RedCircleOptions) -> RedCircle:
    return RedCircle(inputs.backbones, inputs.debias_pool, inputs.cache, options,
                     debias_seed=inputs.seed)


def _relations(inputs: MethodInputs, options: RelationsOptions) -> RelationsMethod:
    return RelationsMethod(
        make_entity_scorer(options.entity_scorer, inputs, options.scorer_options), options,
        scorer_name=options.entity_scorer)


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
    "red-circle": MethodEntry(RedCircle, RedCircleOptions, True, _red_circle),
    "gradcam": MethodEntry(
        GradCam, GradCamOptions, True,
        lambda inputs, options: GradCam(inputs.backbones, options)),
    "regressor": MethodEntry(
        RegressorMethod, RegressorOptions, True,
        lambda inputs, options: RegressorMethod(inputs.backbones, options)),
    "relations": MethodEntry(RelationsMethod, RelationsOptions, True, _relations),
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


def _with_settings(name: str, options: Any, settings: Mapping[str, Any]) -> Any:
    """``options`` with ``settings`` replaced; an option the method lacks is named."""
    known = {f.name for f in fields(options)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(sorted(known)) or 'none'}")
    return replace(options, **settings) if settings else options


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
    if options is None:
        options = entry.options()
    elif not isinstance(options, entry.options):
        raise TypeError(f"method {canonical_method(name)} takes {entry.options.__name__}, "
                        f"got {type(options).__name__}")
    options = _with_settings(f"method {canonical_method(name)}", options, settings)
    return entry.build(MethodInputs(list(backbones), cache, debias_pool, seed), options)


def make_entity_scorer(
    name: str,
    inputs: MethodInputs,
    options: RedCircleOptions | CropMatchingOptions | None = None,
) -> GroundingMethod | None:
    """The method that scores noun phrases for ``relations`` (see ``ENTITY_SCORERS``)."""
    if name == "none":
        return None
    options = options if options is not None else _scorer_options(name, {})
    if name == "red-circle":
        return _red_circle(inputs, options)
    if name == "crop":
        return CropMatching(inputs.backbones, inputs.cache, options)
    if name == "blur":  # ReCLIP's isolation draws no debias prompts
        return _red_circle(replace(inputs, debias_pool=()), options)
    raise ValueError(f"unknown entity scorer {name!r}; choose from {', '.join(ENTITY_SCORERS)}")

"""The relations method's options and its noun-phrase scorers' defaults: the registry builds
the method from them, the resolver reads them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from refcocog_tools.methods.baseline import CropMatchingOptions
from refcocog_tools.methods.red_circle import RedCircleOptions

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
            given = scorer_options_from(self.entity_scorer, given)
            object.__setattr__(self, "scorer_options", given)
        defaults = SCORER_DEFAULTS.get(self.entity_scorer)
        expected = type(defaults) if defaults is not None else None
        if given is not None and (expected is None or not isinstance(given, expected)):
            raise ValueError(f"entity scorer {self.entity_scorer!r} takes "
                             f"{expected.__name__ if expected else 'no options'}, "
                             f"got {type(given).__name__}")


def scorer_options_from(scorer: str, values: Mapping[str, Any]
                    ) -> RedCircleOptions | CropMatchingOptions | None:
    """A scorer's options from option values, over the scorer's defaults."""
    defaults = SCORER_DEFAULTS.get(scorer)
    if defaults is None:
        if values:
            raise ValueError(f"entity scorer {scorer!r} takes no options, got {dict(values)}")
        return None
    return with_settings(scorer, defaults, values)


def with_settings(name: str, options: Any, settings: Mapping[str, Any]) -> Any:
    """``options`` with ``settings`` replaced; an option the method lacks is named."""
    known = {f.name for f in fields(options)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(sorted(known)) or 'none'}")
    return replace(options, **settings) if settings else options

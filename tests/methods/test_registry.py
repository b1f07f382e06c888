"""The method registry: every method by name, typed options, and the CLI reading their defaults."""

from __future__ import annotations

import argparse

import pytest

from refcocog_tools.cli.evaluate import add_common_arguments, method_options
from refcocog_tools.methods.baseline import CropMatchingOptions
from refcocog_tools.methods.floors import FLOORS
from refcocog_tools.methods.red_circle import RedCircleOptions
from refcocog_tools.methods.registry import (
    METHODS,
    NEEDS_CLIP,
    RelationsOptions,
    make_method,
    method_entry,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_floors_are_registered_and_need_no_clip() -> None:
    for name, cls in FLOORS.items():
        assert METHODS[name].cls is cls and name not in NEEDS_CLIP
    assert method_entry("colour-overlay") is METHODS["color-overlay"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_entry("nope")


def test_command_line_defaults_are_the_options_defaults() -> None:
    assert method_options(_args("--method", "red-circle")) == RedCircleOptions()
    assert method_options(_args("--method", "baseline")) == CropMatchingOptions()
    relations = method_options(_args("--method", "relations"))
    assert relations == RelationsOptions(scorer_options=RedCircleOptions())
    assert method_options(_args("--method", "relations", "--entity-scorer", "crop")
                          ) == RelationsOptions(entity_scorer="crop")


def test_command_line_values_become_typed_options() -> None:
    options = method_options(_args("--method", "red-circle", "--variants", "blur",
                                   "--blur-radius", "7", "--n-debias", "0"))
    assert isinstance(options, RedCircleOptions)
    assert (options.variants, options.blur_radius, options.n_debias) == (("blur",), 7.0, 0)


def test_settings_replace_single_options_and_unknown_ones_are_named() -> None:
    method = make_method("random", seed=5)
    assert method.config() == {"method": "random", "seed": 5}
    with pytest.raises(ValueError, match="no option n_debias"):
        make_method("largest", n_debias=3)
    with pytest.raises(TypeError, match="takes RedCircleOptions"):
        make_method("red-circle", options=CropMatchingOptions())


def test_relations_read_scorer_settings_into_the_scorer_options() -> None:
    options = RelationsOptions(scorer_options={"n_debias": 2})
    assert options.scorer_options == RedCircleOptions(n_debias=2)
    blur = RelationsOptions(entity_scorer="blur", scorer_options={"blur_radius": 5.0})
    assert blur.scorer_options.marker == "none" and blur.scorer_options.blur_radius == 5.0
    with pytest.raises(ValueError, match="takes no options"):
        RelationsOptions(entity_scorer="none", scorer_options={"n_debias": 2})
    with pytest.raises(ValueError, match="takes CropMatchingOptions"):
        RelationsOptions(entity_scorer="crop", scorer_options=RedCircleOptions())


def test_every_options_type_is_a_frozen_dataclass_with_defaults() -> None:
    for entry in METHODS.values():
        assert entry.options.__dataclass_params__.frozen
        entry.options()  # every field has a default

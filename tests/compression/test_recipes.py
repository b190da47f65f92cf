"""Recipes are validated data: every mistake is caught before any training starts."""

from __future__ import annotations

import pytest

from edgefleet.modelops.recipes import (
    DEFAULT_RECIPES,
    RecipeError,
    parse_recipe,
    parse_recipes,
)


def test_pipeline_parses_to_ordered_steps_with_params() -> None:
    r = parse_recipe("prune-channels:ratio=0.5+distill:width=0.25+int8-static")
    assert [s.kind for s in r.steps] == ["prune-channels", "distill", "int8-static"]
    assert r.steps[0].params["ratio"] == 0.5
    assert r.steps[1].params["width"] == 0.25
    assert r.precision == "int8"
    assert parse_recipe(r.label) == r  # the label is itself a valid recipe


def test_fp32_is_the_empty_pipeline() -> None:
    assert parse_recipe("fp32").steps == ()
    assert parse_recipe("fp32").label == "fp32"


def test_defaults_all_parse() -> None:
    assert len(parse_recipes(list(DEFAULT_RECIPES))) == len(DEFAULT_RECIPES)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quantum-annealing", "unknown recipe step 'quantum-annealing'"),
        ("prune-unstructured:sparsity=1.2", "impossible"),
        ("prune-channels:ratio=0", "impossible"),
        ("distill:width=0", "impossible"),
        ("distill:depth=2", "unknown parameter 'depth'"),
        ("int8-static:method=magic", "not one of"),
        ("low-rank:energy=high", "not a float"),
        ("int8-static+prune-channels", "must be the last step"),
        ("fp16:x", "key=value"),
    ],
)
def test_bad_recipes_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(text)


def test_comma_separated_list() -> None:
    recipes = parse_recipes("fp16, int8-static ,prune-channels:ratio=0.3+int8-static")
    assert [r.label for r in recipes] == [
        "fp16",
        "int8-static",
        "prune-channels:ratio=0.3+int8-static",
    ]
    with pytest.raises(RecipeError):
        parse_recipes(" , ")

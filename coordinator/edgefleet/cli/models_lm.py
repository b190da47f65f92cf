"""``models build`` of a language model, in this process: its own recipes, not a classifier's.

Kept out of :mod:`edgefleet.cli.models` so that module's build command only asks two questions
(are these LM recipe names? is this model a language model?) and hands over; the building is
:mod:`edgefleet.modelops.lm_build`'s (a worker's build job calls the same function).
"""

from __future__ import annotations

from typing import Any

from edgefleet.client.jsonout import print_json

__all__ = ["build_lm_locally", "lm_recipe_labels"]


def lm_recipe_labels(recipes: str | None) -> list[str]:
    """The names in ``--recipes`` when every one is an LM recipe (fp32, fp16, int8, int4-gN),
    else ``[]`` (the classifier parser's error stands)."""
    if not recipes:
        return []
    from edgefleet.modelops.lm_build import lm_recipe_names

    names = [r.strip() for r in recipes.split(",") if r.strip()]
    return names if lm_recipe_names(names) else []


def build_lm_locally(store: Any, name: str, recipes: str | None, as_json: bool, out: Any) -> bool:
    """Build a language model's recipes on ``store``; False (nothing done) for any other model."""
    from edgefleet.modelops.lm_build import build_lm_recipes, is_lm_model, lm_recipes_to_build

    if not is_lm_model(store, name):
        if lm_recipe_labels(recipes):  # int4-g32 and co. on a classifier: the parser's line
            from edgefleet.modelops.recipes import parse_recipes

            parse_recipes(recipes or "")
        return False
    wanted = [r.strip() for r in recipes.split(",")] if recipes else None
    todo = lm_recipes_to_build(store, name, wanted)  # a classifier recipe: one line, nothing built
    ids = build_lm_recipes(store, name, todo) if todo else []
    if as_json:
        print_json(ids)
    elif not ids:
        out.print(f"{name} has every language-model recipe already; nothing to build")
    else:
        out.print(f"built {len(ids)} variant(s) of {name}; see `edgefleet models variants {name}`")
    return True

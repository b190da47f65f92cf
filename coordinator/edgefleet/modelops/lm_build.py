"""``models build`` for a language model: its recipes (fp16, weight-only int8/int4-gN), from the base.

Why from the base bundle's ONNX graph and not from torch: every LM recipe is a transformation of
the fp32 KV-cache graph (:mod:`edgefleet.modelops.lm_compress`: onnxruntime's fp16 converter and
``MatMulNBits`` quantizer), which the base bundle already holds, signed. So a build needs neither
the training weights nor an export, a worker builds it like any job, and a variant built later is
what :func:`~edgefleet.modelops.lm_compress.build_lm_variants` makes at registration.

A language model's recipes are not a classifier's: pruning, distillation and int8-static need
labels and a classifier's data, and an LM's precision changes are weight-only. So asking for a
classifier recipe is refused in one line naming the LM recipes, and without ``--recipes`` the
build makes every LM recipe the model does not have yet. When the base carries a measured
perplexity, every new variant is measured on the same held-out text (selection compares
perplexities: an unmeasured variant would count as perfect), and a corpus that cannot be loaded
is refused rather than skipped.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefleet.modelops.lm_bundle import (
    LM_TASK,
    is_lm_manifest,
    lm_bundle_files,
    lm_runtimes,
    lm_variant_body,
    load_lm_graph,
)
from edgefleet.modelops.lm_compress import LM_RECIPES, derive_lm_variant, parse_lm_recipe
from edgefleet.modelops.lm_kv8 import KV8_SUFFIX
from edgefleet.modelops.recipes import RecipeError
from edgefleet.variant_store import VariantStore

__all__ = ["build_lm_recipes", "is_lm_model", "lm_recipe_names", "lm_recipes_to_build"]

Progress = Callable[[str, str], None]


def _noop(label: str, stage: str) -> None:
    pass


def is_lm_model(store: VariantStore, name: str) -> bool:
    """Whether model ``name`` is a language model (its entry or its base manifest says so)."""
    entry = store.model(name)
    if entry.source.get("task") == LM_TASK:
        return True
    return bool(entry.base) and is_lm_manifest(store.load(entry.base).manifest)


def lm_recipe_names(recipes: Sequence[str]) -> bool:
    """Whether every name is an LM recipe (what ``models build`` may defer to the model); a
    name ending ``+kv8`` counts even when malformed, so the LM path names what is wrong."""
    try:
        for r in recipes:
            if not r.strip().endswith(KV8_SUFFIX):
                parse_lm_recipe(r.strip())
    except ValueError:
        return False
    return bool(recipes)


def _built(store: VariantStore, name: str) -> dict[str, str]:
    """recipe label -> variant id of what model ``name`` has."""
    entry = store.model(name)
    return {
        str(store.load(v).manifest.get("recipe_label", "")): v
        for v in [entry.base, *entry.variants]
    }


def lm_recipes_to_build(store: VariantStore, name: str, recipes: Sequence[str] | None) -> list[str]:
    """The LM recipes to build: the ones asked for (each checked), or every LM recipe the model
    does not have yet; :class:`RecipeError` (one line) for anything that is not an LM recipe."""
    if not recipes:
        have = _built(store, name)
        return [r for r in LM_RECIPES if r not in have]
    wanted = [r.strip() for r in recipes if r.strip()]
    for r in wanted:
        try:
            parse_lm_recipe(r)
        except ValueError as exc:
            if r.endswith(KV8_SUFFIX):  # the weights part or the cache is wrong: say which
                raise RecipeError(f"model {name!r}: {exc}") from None
            raise RecipeError(
                f"model {name!r} is a language model: its recipes are {', '.join(LM_RECIPES)} "
                f"(int4 groups 16-256; +kv8 after fp32, int8 or int4-gN: an int8 KV cache), "
                f"not {r!r}"
            ) from None
    return wanted


def _corpus_test(store: VariantStore, base: Mapping[str, Any]) -> Any:
    """The held-out bytes the base was measured on; RecipeError when they cannot be loaded."""
    from edgefleet.datasets.core import DatasetError
    from edgefleet.datasets.text import load_text

    dataset = str(base.get("dataset", ""))
    try:
        return load_text(dataset, store.root).test
    except (DatasetError, OSError) as exc:
        raise RecipeError(
            f"the base's perplexity was measured on {dataset!r}, which cannot be loaded here "
            f"({exc}); new variants must be measured on the same text"
        ) from None


def build_lm_recipes(
    store: VariantStore,
    name: str,
    recipes: Sequence[str] | None = None,
    *,
    progress: Progress = _noop,
) -> list[str]:
    """Build LM ``recipes`` (default: every one missing) from model ``name``'s fp32 base graph,
    sign them into ``store`` and list them under the model; returns the variant ids in order
    (a recipe the model already has returns its id: building is idempotent)."""
    todo = lm_recipes_to_build(store, name, recipes)
    entry = store.model(name)
    base = store.load(entry.base)
    if base.manifest.get("recipe_label") != "fp32":
        raise RecipeError(
            f"model {name!r}: its base is {base.manifest.get('recipe_label')!r}, not the fp32 "
            "graph every LM recipe is derived from"
        )
    fp32 = load_lm_graph(base)  # one inline file, or the graph + its external weights
    measured_base = "perplexity" in base.manifest.get("metrics", {})
    test = _corpus_test(store, base.manifest) if measured_base and todo else None
    have = _built(store, name)
    ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lm-build-") as tmp:
        for recipe in todo:
            if recipe in have:
                ids.append(have[recipe])
                progress(recipe, "done")
                continue
            progress(recipe, "transform")
            variant = derive_lm_variant(fp32, recipe, Path(tmp))
            measured = None
            if test is not None:
                from edgefleet.modelops.lm_measure import measure_lm

                progress(recipe, "measure")
                context = int(base.manifest["language_model"]["context"])
                peaks = base.manifest["metrics"].get("peak_bytes") or {}
                contexts = tuple(sorted(int(c) for c in peaks)) or (128, 1024)
                measured = measure_lm(variant.path, test, context=context, contexts=contexts)
            progress(recipe, "sign")
            body = lm_variant_body(base.manifest, variant, measured)
            body["parent"] = entry.base
            files = lm_bundle_files(variant.path)  # the weights as external data
            body["runtimes"] = lm_runtimes(files)
            body["metrics"]["size_bytes"] = sum(len(b) for b in files.values())
            variant_id = store.put(body, files)
            store.add_variant(name, variant_id)
            have[recipe] = variant_id
            ids.append(variant_id)
            progress(recipe, "done")
    return ids

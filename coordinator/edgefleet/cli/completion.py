"""Shell completion for the values operators type most: models, profiles, recipes, datasets.

Each completer is called by the shell on every <TAB>, so it only reads local files (the
variant store's index, the profile catalog, the recipe table) and never raises: a broken
data dir completes nothing rather than printing a traceback into the prompt. Closed sets
(rollout and training strategies) are ``click.Choice`` on their options instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DATASETS",
    "DEPLOY_STRATEGIES",
    "complete_datasets",
    "complete_models",
    "complete_profile",
    "complete_profiles",
    "complete_recipes",
]

#: ``edgefleet deploy --strategy`` (coordinator/edgefleet/coordinator/rollouts/document.py STRATEGIES)
DEPLOY_STRATEGIES = ("all", "canary", "waves")
#: built-in datasets of ``models add --dataset`` (coordinator/edgefleet/modelops/data.py); any
#: other value is a path to the user's data (edgefleet.datasets)
DATASETS = ("digits",)


def _last_item(incomplete: str, separators: str) -> tuple[str, str]:
    """Split ``a,b,c`` into (``a,b,``, ``c``) so a list completes one item at a time."""
    cut = max(incomplete.rfind(s) for s in separators) + 1
    return incomplete[:cut], incomplete[cut:]


def _matching(prefix: str, partial: str, names: Iterable[str]) -> list[str]:
    return [prefix + n for n in sorted(set(names)) if n.startswith(partial)]


def complete_models(incomplete: str) -> list[str]:
    """Registered model names from the variant store ($EDGEFLEET_DATA_DIR or ./.edgefleet)."""
    try:
        from edgefleet.variant_store import VariantStore, resolve_data_dir

        names = [m.name for m in VariantStore(resolve_data_dir(None)).models()]
    except Exception:  # completion must never break the shell
        return []
    return _matching("", incomplete, names)


def complete_datasets(incomplete: str) -> list[str]:
    """Built-in datasets, user data kept in the data dir, and ``.npz`` files or folders here."""
    try:
        from edgefleet.variant_store import resolve_data_dir

        stored = [p.stem for p in (resolve_data_dir(None) / "datasets").glob("*.npz")]
        here = Path(incomplete) if incomplete.endswith("/") else Path(incomplete).parent
        local = [
            str(p) + ("/" if p.is_dir() else "")
            for p in here.iterdir()
            if (p.is_dir() or p.suffix == ".npz") and not p.name.startswith(".")
        ]
    except Exception:  # completion must never break the shell
        return list(_matching("", incomplete, DATASETS))
    return _matching("", incomplete, [*DATASETS, *stored, *local])


def _profile_names() -> list[str]:
    from edgefleet.catalog import CATALOG

    return [*CATALOG, "auto"]


def complete_profile(incomplete: str) -> list[str]:
    """One device profile from the catalog."""
    return _matching("", incomplete, _profile_names())


def complete_profiles(incomplete: str) -> list[str]:
    """A comma-separated list of profiles, completing the last one."""
    prefix, partial = _last_item(incomplete, ",")
    return _matching(prefix, partial, _profile_names())


def complete_recipes(incomplete: str) -> list[str]:
    """Comma-separated recipes of ``+``-joined steps: completes the step being typed."""
    from edgefleet.modelops.recipes import DEFAULT_RECIPES, STEP_KINDS

    prefix, partial = _last_item(incomplete, ",+")
    steps = _matching(prefix, partial, STEP_KINDS)
    if prefix.endswith("+"):
        return steps
    return sorted(set(steps) | set(_matching(prefix, partial, DEFAULT_RECIPES)))

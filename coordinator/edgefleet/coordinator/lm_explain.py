"""``devices explain`` for a language model: LM selection over the variants' manifests.

Why a separate step next to classifier selection rather than inside it: an LM variant does not
have one footprint but one per context length, and what explain must show is the context
limit and the budget that set it (:mod:`edgefleet.coordinator.lm_selection`). A model whose
manifests say ``task: language-model`` goes here; everything else keeps the classifier path.
Plain objects only (manifests in, a selection out), like the selection modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet.coordinator.lm_selection import LMFacts, LMPolicy, LMSelection, select_lm
from edgefleet.profiles import DeviceProfile

__all__ = ["LM_TASK", "explain_lm", "is_lm_manifest", "lm_facts"]

LM_TASK = "language-model"


def is_lm_manifest(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("task") == LM_TASK


def lm_facts(variant_id: str, manifest: Mapping[str, Any]) -> LMFacts:
    """What selection needs of an LM bundle's manifest (``ValueError`` when it is not one).

    Without a measured perplexity every variant counts as perplexity 1 (all equal), so
    selection falls back to context length, then predicted speed, then bytes. Activations are
    the measured peak at the shortest measured context less weights and cache (as
    :func:`~edgefleet.coordinator.lm_selection.facts_from_benchmark` does), else 0."""
    lm = manifest.get("language_model")
    metrics = manifest.get("metrics", {})
    if not isinstance(lm, Mapping) or not isinstance(metrics, Mapping):
        raise ValueError(f"variant {variant_id[:12]} is not a language-model bundle")
    size = int(metrics.get("size_bytes", 0))
    peaks = {int(k): int(v) for k, v in dict(metrics.get("peak_bytes", {})).items()}
    kv_pos = int(lm["kv_bytes_per_position"])
    activation = 0
    if peaks:
        c = min(peaks)
        activation = max(0, peaks[c] - size - kv_pos * c)
    return LMFacts(
        id=variant_id,
        recipe=str(manifest.get("recipe_label", "")),
        precision="fp16" if manifest.get("precision") == "fp16" else "fp32",
        bundle_bytes=size,
        weight_bytes=size,
        kv_bytes_per_token=kv_pos,
        activation_bytes=activation,
        activation_bytes_per_token=0,
        perplexity=float(metrics.get("perplexity", 1.0)),
        max_context=int(lm["context"]),
        runtimes=tuple(dict(manifest.get("runtimes", {}))),
        kv_dtype=str(lm.get("kv_dtype", "float32")),
    )


def explain_lm(
    profile: DeviceProfile,
    manifests: Sequence[tuple[str, Mapping[str, Any]]],
    policy: LMPolicy | None = None,
) -> LMSelection:
    """LM selection for one device over ``(variant id, manifest)`` pairs."""
    return select_lm(profile, [lm_facts(i, m) for i, m in manifests], policy)

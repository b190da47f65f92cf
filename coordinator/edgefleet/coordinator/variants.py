"""Read what selection needs about a model's variants from the variant store.

Only manifests are read here (no hashing of every file): selection needs the
measured numbers, and the agent verifies every byte and the signature before
it uses a bundle, so a tampered manifest cannot get anything executed. In a
shared store they come from the small manifest keys, all of a model's in one
round trip, never from the bundle archives (``SharedStore.manifests``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from edgefleet.coordinator.lm_explain import is_lm_manifest
from edgefleet.coordinator.shared_store import has_variant_in, manifests_of
from edgefleet.coordinator.variant_selection import VariantFacts
from edgefleet.frontend.spec import manifest_cost
from edgefleet.perf import manifest_layers
from edgefleet.variant_store import StoreError, UnknownModelError, VariantStore

_VARIANT_ID = re.compile(r"[0-9a-f]{64}")


class VariantReadError(RuntimeError):
    """A variant's manifest is missing or unreadable."""


class UnknownModel(LookupError):
    """No model of that name in the variant store."""


def facts_from_manifest(variant_id: str, manifest: dict[str, Any]) -> VariantFacts:
    metrics = manifest["metrics"]
    measured = metrics.get("runtimes", {})
    files = manifest.get("files", {})
    mcu = metrics.get("mcu") or {}
    return VariantFacts(
        id=variant_id,
        model=str(manifest.get("model", "")),
        recipe=str(manifest.get("recipe_label", "")),
        precision=str(manifest["precision"]),
        bundle_bytes=sum(int(f["bytes"]) for f in files.values()),
        weight_bytes=int(metrics["weight_bytes"]),
        peak_memory_bytes=int(metrics["peak_memory_bytes"]),
        accuracy=float(metrics["accuracy"]),
        macs=int(metrics["macs"]),
        runtimes=tuple(sorted(manifest.get("runtimes", {}))),
        host_latency_ms={
            name: float(m["latency_ms_p50"])
            for name, m in measured.items()
            if "latency_ms_p50" in m
        },
        mcu_flash_bytes=int(mcu["flash_bytes"]) if "flash_bytes" in mcu else None,
        mcu_code_bytes=int(mcu["code_bytes"]) if "code_bytes" in mcu else None,
        layers=manifest_layers(manifest),
        frontend=manifest_cost(manifest),
    )


def read_facts(store: VariantStore, variant_id: str) -> VariantFacts:
    return read_all_facts(store, [variant_id])[0]


def _manifests(store: VariantStore, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    try:  # the StoreError already names the variant
        return manifests_of(store, ids)
    except StoreError as exc:
        raise VariantReadError(str(exc)) from exc


def read_all_facts(store: VariantStore, variant_ids: Sequence[str]) -> list[VariantFacts]:
    """Facts of several variants, their manifests read in one go (one Redis round trip)."""
    out = []
    for v, manifest in _manifests(store, variant_ids).items():
        try:
            out.append(facts_from_manifest(v, manifest))
        except (ValueError, KeyError, TypeError) as exc:
            raise VariantReadError(f"variant {v[:12]}: unreadable manifest ({exc})") from exc
    return out


def model_variants(store: VariantStore, model: str) -> list[VariantFacts]:
    """The base and every built variant of ``model`` (raises ``UnknownModel``)."""
    try:
        entry = store.model(model)
    except UnknownModelError as exc:
        raise UnknownModel(str(exc)) from exc
    ids = list(dict.fromkeys(v for v in [entry.base, *entry.variants] if v))  # "" = pending
    return read_all_facts(store, ids)


def model_lm_manifests(store: VariantStore, model: str) -> list[tuple[str, dict[str, Any]]]:
    """``(id, manifest)`` of every variant of a language model; ``[]`` for any other model
    (explain judges a language model by context length, :mod:`edgefleet.coordinator.lm_explain`)."""
    try:
        entry = store.model(model)
    except UnknownModelError as exc:
        raise UnknownModel(str(exc)) from exc
    out: list[tuple[str, dict[str, Any]]] = []
    ids = list(dict.fromkeys(v for v in [entry.base, *entry.variants] if v))
    for v, manifest in _manifests(store, ids).items():
        if not is_lm_manifest(manifest):
            return []
        out.append((v, manifest))
    return out


class KnownVariants:
    """Is this a variant in the store? For labels and checks on ids a device reports.

    A device may report any string as its active variant; only a full id of a bundle in
    the store counts as known. Hits are remembered (variants are immutable and few), a
    miss is a stat of one directory, so a new variant is known as soon as it is stored.
    """

    def __init__(self, store: VariantStore) -> None:
        self._store = store
        self._known: set[str] = set()

    def __call__(self, variant_id: str) -> bool:
        if variant_id in self._known:
            return True
        if not _VARIANT_ID.fullmatch(variant_id):
            return False
        if has_variant_in(self._store, variant_id):
            self._known.add(variant_id)
            return True
        return False

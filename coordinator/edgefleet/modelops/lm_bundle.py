"""LM variants as ordinary signed bundles: the manifest a device and selection both read.

Why the normal bundle format rather than a side channel: the store, rollouts, artifact
service and the agent's verification already ship, sign and check bundles, so an LM variant
needs only a manifest that says what it is. ``task``/``kind`` ``language-model`` tells the
agent to serve it through ``Generate`` (not ``Infer``); ``language_model`` holds the graph's
cache geometry (layers, heads, head dim, cache dtype: what a device needs to start a cache),
the context length it was trained at and the KV-cache bytes per position (what selection needs
to size the cache on a device); ``metrics`` holds what was measured at build time (perplexity,
prefill/decode tokens/s, peak memory). :func:`edgefleet.coordinator.lm_explain.lm_facts` turns such a manifest back into the
:class:`~edgefleet.coordinator.lm_selection.LMFacts` selection judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgefleet.modelops.lm_compress import LMVariantFile
from edgefleet.modelops.lm_measure import LMMeasurement
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.zoo import ByteLM

__all__ = ["LM_TASK", "is_lm_manifest", "lm_manifest", "lm_variant_body", "register_lm_model"]

LM_TASK = "language-model"
#: the manifest precision of each weight width: weight-only int8/int4 dequantize into fp32
#: arithmetic, so a device needs fp32 (and fp16 kernels for the fp16 graph)
_PRECISION = {32: "fp32", 16: "fp16", 8: "int8-weight-only", 4: "int4-weight-only"}


def _metrics(variant: LMVariantFile, measured: LMMeasurement | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"size_bytes": variant.bytes}
    if measured is not None:
        metrics.update(
            perplexity=round(measured.perplexity, 6),
            prefill_tok_s=round(measured.prefill_tok_s, 3),
            decode_tok_s=round(measured.decode_tok_s, 3),
            peak_bytes={str(k): v for k, v in measured.peak_bytes.items()},
        )
    return metrics


def is_lm_manifest(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("task") == LM_TASK


def lm_manifest(
    model_name: str,
    model: ByteLM,
    variant: LMVariantFile,
    measured: LMMeasurement | None = None,
    dataset: str = "",
) -> dict[str, Any]:
    """The manifest body of one LM variant (``write_bundle`` adds format and file hashes)."""
    kv_dtype = "float16" if variant.kv_dtype_bytes == 2 else "float32"
    kv_per_position = 2 * model.n_layers * model.heads * model.head_dim * variant.kv_dtype_bytes
    metrics = _metrics(variant, measured)
    return {
        "model": model_name,
        "task": LM_TASK,
        "kind": LM_TASK,
        "dataset": dataset,
        "architecture": {"arch": "byte-lm", "config": model.config()},
        "recipe_label": variant.recipe,
        "recipe": {"name": variant.recipe, "bits": variant.bits, "group": variant.group},
        "precision": _PRECISION[variant.bits],
        # one byte per position; Infer refuses it (Generate is the way in)
        "input": {"shape": [1, 1], "dtype": "int64"},
        "language_model": {
            "vocab": model.vocab,
            "layers": model.n_layers,
            "heads": model.heads,
            "head_dim": model.head_dim,
            "context": model.context,
            "kv_dtype": kv_dtype,
            "kv_bytes_per_position": kv_per_position,
        },
        "runtimes": {"onnxruntime": {"file": "model.onnx"}},
        "metrics": metrics,
    }


def lm_variant_body(
    base: Mapping[str, Any], variant: LMVariantFile, measured: LMMeasurement | None = None
) -> dict[str, Any]:
    """The manifest body of ``variant`` derived from its fp32 base's manifest (``models build``
    of a registered LM, where no torch model is at hand): the same fields :func:`lm_manifest`
    writes, the cache's dtype and bytes per position following the variant's graph."""
    lm = dict(base["language_model"])
    lm["kv_dtype"] = "float16" if variant.kv_dtype_bytes == 2 else "float32"
    lm["kv_bytes_per_position"] = (
        2 * int(lm["layers"]) * int(lm["heads"]) * int(lm["head_dim"]) * variant.kv_dtype_bytes
    )
    metrics = _metrics(variant, measured)
    keep = ("model", "task", "kind", "dataset", "architecture", "input", "runtimes")
    return {
        **{k: base[k] for k in keep if k in base},
        "recipe_label": variant.recipe,
        "recipe": {"name": variant.recipe, "bits": variant.bits, "group": variant.group},
        "precision": _PRECISION[variant.bits],
        "language_model": lm,
        "metrics": metrics,
    }


def register_lm_model(
    store: VariantStore,
    name: str,
    model: ByteLM,
    variants: Sequence[LMVariantFile],
    measured: Mapping[str, LMMeasurement] | None = None,
    dataset: str = "",
) -> ModelEntry:
    """Sign every variant into the store and register them as one model (fp32 = the base,
    else the first), so ``deploy``/rollouts ship them like any variant."""
    ids: dict[str, str] = {}
    for v in variants:
        body = lm_manifest(name, model, v, (measured or {}).get(v.recipe), dataset)
        ids[v.recipe] = store.put(body, {"model.onnx": v.path.read_bytes()})
    base = ids.get("fp32") or next(iter(ids.values()))
    entry = ModelEntry(
        name=name,
        architecture={"arch": "byte-lm", "config": model.config()},
        dataset=dataset or "text",
        base=base,
        variants=[i for i in ids.values() if i != base],
        source={"task": LM_TASK},
    )
    store.add_model(entry)
    return entry

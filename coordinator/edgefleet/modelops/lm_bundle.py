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

Weights as ONNX external data (:func:`lm_bundle_files`): ``model.onnx`` holds the graph and
small tensors, ``model.onnx.data`` every tensor of 1 KiB or more, and the manifest's
``runtimes.onnxruntime.external_data`` names the second file (the agent hands its verified
bytes to onnxruntime in memory). Why two files: a variant that changes the graph but not the
weights (an adapter variant, :mod:`edgefleet.modelops.lm_adapter_variant`) then shares the
weights file byte for byte with the variant a device holds, and its delta ships ``same`` for
it; a real LM's weights would also pass protobuf's 2 GiB limit. Bundles with one inline
``model.onnx`` (registered before) stay valid: no ``external_data``, nothing else changes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.bundle import Bundle
from edgefleet.modelops.lm_compress import LMVariantFile
from edgefleet.modelops.lm_measure import LMMeasurement
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.zoo import ByteLM

if TYPE_CHECKING:
    import onnx

__all__ = [
    "LM_GRAPH_FILE",
    "LM_TASK",
    "LM_WEIGHTS_FILE",
    "is_lm_manifest",
    "lm_bundle_files",
    "lm_manifest",
    "lm_runtimes",
    "lm_variant_body",
    "load_lm_graph",
    "register_lm_model",
]

LM_TASK = "language-model"
#: the manifest precision of each weight width: weight-only int8/int4 dequantize into fp32
#: arithmetic, so a device needs fp32 (and fp16 kernels for the fp16 graph)
_PRECISION = {32: "fp32", 16: "fp16", 8: "int8-weight-only", 4: "int4-weight-only"}
LM_GRAPH_FILE = "model.onnx"
#: the ONNX external-data file an LM bundle keeps its weights in, beside ``model.onnx``
LM_WEIGHTS_FILE = "model.onnx.data"
#: tensors of at least this many bytes go to the weights file; norms and shapes stay inline
EXTERNAL_THRESHOLD = 1024


def lm_bundle_files(path: Path) -> dict[str, bytes]:
    """The bundle files of the LM graph at ``path`` (one inline file or already external):
    ``model.onnx`` (graph, small tensors) and ``model.onnx.data`` (the weights)."""
    import onnx

    model = onnx.load(str(path))  # pulls in external data the graph may already have
    with tempfile.TemporaryDirectory(prefix="lm-bundle-") as tmp:
        out = Path(tmp) / LM_GRAPH_FILE
        onnx.save_model(
            model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=LM_WEIGHTS_FILE,
            size_threshold=EXTERNAL_THRESHOLD,
        )
        files = {LM_GRAPH_FILE: out.read_bytes()}
        data = Path(tmp) / LM_WEIGHTS_FILE
        if data.exists():
            files[LM_WEIGHTS_FILE] = data.read_bytes()
    return files


def lm_runtimes(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The manifest's ``runtimes`` for an LM bundle of ``files``."""
    entry: dict[str, Any] = {"file": LM_GRAPH_FILE}
    if LM_WEIGHTS_FILE in files:
        entry["external_data"] = [LM_WEIGHTS_FILE]
    return {"onnxruntime": entry}


def load_lm_graph(bundle: Bundle) -> onnx.ModelProto:
    """An LM bundle's graph with every weight in memory, from its verified bytes (one inline
    file, or ``model.onnx`` + its external data)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    entry = bundle.manifest.get("runtimes", {}).get("onnxruntime", {})
    model = onnx.load_from_string(bundle.file(str(entry.get("file", LM_GRAPH_FILE))))
    data = {str(n): bundle.file(str(n)) for n in entry.get("external_data", [])}
    for tensor in _tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        blob = data.get(str(info.location))
        if blob is None:
            raise ValueError(f"LM graph refers to {info.location!r}, which its bundle lacks")
        start = int(info.offset or 0)
        end = start + int(info.length) if info.length else len(blob)
        if end > len(blob):
            raise ValueError(f"LM tensor {tensor.name!r} lies outside {info.location!r}")
        tensor.raw_data = blob[start:end]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


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
    kv_dtype = variant.kv_dtype
    kv_per_position = variant.kv_bytes_per_position(model.n_layers, model.heads, model.head_dim)
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
    lm["kv_dtype"] = variant.kv_dtype
    lm["kv_bytes_per_position"] = variant.kv_bytes_per_position(
        int(lm["layers"]), int(lm["heads"]), int(lm["head_dim"])
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
        files = lm_bundle_files(v.path)
        body["runtimes"] = lm_runtimes(files)
        body["metrics"]["size_bytes"] = sum(len(b) for b in files.values())
        ids[v.recipe] = store.put(body, files)
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

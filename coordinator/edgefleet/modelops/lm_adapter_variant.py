"""LoRA adapters deployed as a small delta on the LM variant each device already holds.

A federated LoRA run (:mod:`edgefleet.modelops.lm_lora`) ends with rank-``r`` adapters for a
registered byte-lm. Merging them into the base changes every targeted weight, so a merged int4
variant shares no weight byte with the int4 variant a device holds: it ships whole. Here each
of the base model's variants (fp32, fp16, int8, int4-gN) gets an **adapter variant** instead:
the variant's own graph with an *unmerged* LoRA branch beside every targeted weight MatMul,

    y = base(x) + pad((x @ A^T) @ (scale * B)^T)      (one branch per targeted row slice)

so the base's (quantized) weights are untouched: an int4 device keeps its int4 base and adds a
few float adapters. The branch runs in the graph's activation dtype (fp16 for the fp16 graph,
fp32 next to weight-only ``MatMulNBits``, whose activations are fp32).

Layout, and why it makes the delta small: LM bundles keep their weights as ONNX external data
(:func:`edgefleet.modelops.lm_bundle.lm_bundle_files`: ``model.onnx`` = the graph and small
tensors, ``model.onnx.data`` = the weights). The adapter graph is built from the base's
``model.onnx`` *without* loading its external data, so every base tensor keeps its exact
location, offset and length, the adapters are small inline initializers of the new graph, and
the adapter variant's ``model.onnx.data`` is the base's byte for byte. The signed delta
(:mod:`edgefleet.delta`) then ships ``same`` for the weights and the new small graph as a
``file``: adapter bytes plus the graph. A base registered before this layout (one inline
``model.onnx``) gets a one-file adapter variant the same way, and its delta finds the base's
tensors with the ``blocks`` copy program instead.

How a torch target is found in an ONNX graph: the exporter names weights ``val_N`` and the
quantizers rename nodes and weights (``..._Q4``), so names are no mapping. Structure is: in
graph order, the weight MatMuls (a ``MatMul`` whose B is an initializer, or a
``MatMulNBits``) of a byte-lm are each block's ``qkv, proj, up, down`` and then the head, and
each has a known ``(K, N)`` from the model's config. :func:`weight_matmuls` checks count and
every shape, and refuses the graph in one line when they do not match.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgefleet.bundle import Bundle
from edgefleet.lora import LoRAConfig
from edgefleet.modelops.lm_bundle import (
    LM_GRAPH_FILE,
    LM_TASK,
    is_lm_manifest,
    lm_runtimes,
)
from edgefleet.variant_store import ModelEntry, StoreError, VariantStore

if TYPE_CHECKING:
    import onnx

    from edgefleet.modelops.lm_measure import LMMeasurement

__all__ = [
    "AdapterVariantError",
    "WeightMatMul",
    "adapter_graph",
    "adapter_slices",
    "build_adapter_variants",
    "weight_matmuls",
]

#: the weight MatMuls of one byte-lm block, in graph order
BLOCK_LINEARS = ("qkv", "proj", "up", "down")
_QKV = {"q": 0, "k": 1, "v": 2}
_KEY = re.compile(r"^blocks\.(\d+)\.(qkv|proj|up|down)\.lora_([ab])\.(\w+)$")
Progress = Callable[[str, str], None]


class AdapterVariantError(ValueError):
    """Adapters that do not fit the base model's graphs (one line, no traceback)."""


@dataclass(frozen=True)
class WeightMatMul:
    """One weight MatMul of a graph: its node index, ``(K, N)``, activation dtype, and
    whether its weights are quantized (``MatMulNBits``)."""

    index: int
    k: int
    n: int
    fp16: bool
    quantized: bool = False


@dataclass(frozen=True)
class AdapterSlice:
    """One adapter: block, linear, the output rows it updates, and its A/B arrays."""

    block: int
    linear: str
    name: str
    start: int
    stop: int
    a: npt.NDArray[np.float32]  # (rank, K)
    b: npt.NDArray[np.float32]  # (stop - start, rank)


def _noop(label: str, stage: str) -> None:
    pass


def weight_matmuls(model: onnx.ModelProto, config: Mapping[str, Any]) -> list[WeightMatMul]:
    """The graph's weight MatMuls in order (each block's qkv, proj, up, down, then the head),
    each checked against ``config`` (a byte-lm's); AdapterVariantError when they do not fit."""
    inits = {t.name: t for t in model.graph.initializer}
    found: list[WeightMatMul] = []
    for i, node in enumerate(model.graph.node):
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            found.append(WeightMatMul(i, int(attrs["K"]), int(attrs["N"]), False, True))
        elif node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            t = inits[node.input[1]]
            if len(t.dims) == 2:
                found.append(WeightMatMul(i, int(t.dims[0]), int(t.dims[1]), t.data_type == 10))
    dim, layers = int(config["dim"]), int(config["layers"])
    hidden, vocab = int(config.get("mlp_ratio", 4)) * dim, int(config.get("vocab", 256))
    block = [(dim, 3 * dim), (dim, dim), (dim, hidden), (hidden, dim)]
    expected = block * layers + [(dim, vocab)]
    shapes = [(w.k, w.n) for w in found]
    if shapes != expected:
        raise AdapterVariantError(
            f"graph has {len(found)} weight MatMuls with shapes {shapes[:5]}..., a byte-lm "
            f"of {layers} layers x {dim} has {len(expected)} ({expected[:5]}...): "
            "not this model's graph"
        )
    return found


def adapter_slices(
    adapters: Mapping[str, npt.NDArray[Any]], lora: LoRAConfig, config: Mapping[str, Any]
) -> list[AdapterSlice]:
    """The adapters as slices of the model's linears; AdapterVariantError (one line) for a
    name that is no byte-lm adapter, a target outside the model or ``lora``'s targets, a
    missing half of a pair, or a shape that does not fit."""
    dim, layers = int(config["dim"]), int(config["layers"])
    hidden = int(config.get("mlp_ratio", 4)) * dim
    pairs: dict[tuple[int, str, str], dict[str, npt.NDArray[np.float32]]] = {}
    for key, value in adapters.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterVariantError(f"adapter {key!r} is not a byte-lm LoRA tensor name")
        block, linear, half, name = int(m[1]), m[2], m[3], m[4]
        if block >= layers:
            raise AdapterVariantError(
                f"adapter target {key!r} is not in the graph: the model has {layers} blocks"
            )
        if name not in lora.targets or (name != linear and not (linear == "qkv" and name in _QKV)):
            raise AdapterVariantError(
                f"adapter target {key!r} is not among the run's targets {list(lora.targets)}"
            )
        pairs.setdefault((block, linear, name), {})[half] = np.asarray(value, np.float32)
    out = []
    for (block, linear, name), ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise AdapterVariantError(f"adapter blocks.{block}.{linear} {name}: A or B missing")
        k = hidden if linear == "down" else dim
        n = {"qkv": dim, "proj": dim, "up": hidden, "down": dim}[linear]
        start = _QKV[name] * dim if linear == "qkv" else 0
        if ab["a"].shape != (lora.rank, k) or ab["b"].shape != (n, lora.rank):
            raise AdapterVariantError(
                f"adapter blocks.{block}.{linear} {name}: A {ab['a'].shape}, B {ab['b'].shape}; "
                f"expected ({lora.rank}, {k}) and ({n}, {lora.rank})"
            )
        out.append(AdapterSlice(block, linear, name, start, start + n, ab["a"], ab["b"]))
    if not out:
        raise AdapterVariantError("no adapters given")
    return out


def adapter_graph(
    graph: bytes,
    slices: Sequence[AdapterSlice],
    lora: LoRAConfig,
    config: Mapping[str, Any],
    *,
    fp16_beside_quantized: bool = True,
) -> tuple[bytes, int]:
    """The serialized graph with a LoRA branch per slice, and the adapter bytes it carries.

    ``graph`` is parsed as is: external-data references (location, offset, length) and every
    base tensor stay exactly as they were; only nodes and small inline initializers are added.
    Beside a quantized (``MatMulNBits``) weight the adapters are stored as fp16 and cast to
    fp32 in the graph (``fp16_beside_quantized``; onnxruntime folds the casts when the session
    loads): half the bytes on the wire, an error far below the base's own 4/8-bit one. Beside
    an fp32 weight they stay fp32, so the fp32 adapter variant computes the merged model.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(graph)
    matmuls = weight_matmuls(model, config)
    nodes = list(model.graph.node)
    after: dict[int, list[onnx.NodeProto]] = {}
    adapter_bytes = 0
    for linear_index, group in _by_linear(slices).items():
        w = matmuls[linear_index]
        node = nodes[w.index]
        x, y = node.input[0], node.output[0]
        dtype = np.float16 if w.fp16 else np.float32
        stored = np.float16 if w.quantized and fp16_beside_quantized else dtype
        stem = f"lora/{group[0].block}/{group[0].linear}"
        node.output[0] = f"{stem}/base"
        total, extra = f"{stem}/base", []
        for s in group:
            a_t = np.ascontiguousarray(s.a.T).astype(stored)  # (K, r)
            b_t = np.ascontiguousarray((lora.scale * s.b).T).astype(stored)  # (r, rows)
            for arr, suffix in ((a_t, "A"), (b_t, "B")):
                name = f"{stem}/{s.name}/{suffix}"
                if stored is dtype:
                    model.graph.initializer.append(numpy_helper.from_array(arr, name))
                else:  # stored narrower than the activations: one Cast, folded at load
                    model.graph.initializer.append(numpy_helper.from_array(arr, f"{name}16"))
                    extra.append(
                        helper.make_node("Cast", [f"{name}16"], [name], to=onnx.TensorProto.FLOAT)
                    )
                adapter_bytes += arr.nbytes
            h, d = f"{stem}/{s.name}/h", f"{stem}/{s.name}/d"
            extra.append(helper.make_node("MatMul", [x, f"{stem}/{s.name}/A"], [h]))
            extra.append(helper.make_node("MatMul", [h, f"{stem}/{s.name}/B"], [d]))
            if (s.start, s.stop) != (0, w.n):
                pads = f"{stem}/{s.name}/pads"
                model.graph.initializer.append(
                    numpy_helper.from_array(np.array([s.start, w.n - s.stop], np.int64), pads)
                )
                axes = f"{stem}/{s.name}/axes"
                model.graph.initializer.append(
                    numpy_helper.from_array(np.array([-1], np.int64), axes)
                )
                padded = f"{d}/padded"
                extra.append(helper.make_node("Pad", [d, pads, "", axes], [padded]))
                d = padded
            out = y if s is group[-1] else f"{stem}/{s.name}/sum"
            extra.append(helper.make_node("Add", [total, d], [out]))
            total = out
        after[w.index] = extra
    del model.graph.node[:]
    for i, node in enumerate(nodes):
        model.graph.node.append(node)
        model.graph.node.extend(after.get(i, []))
    return model.SerializeToString(), adapter_bytes


def _by_linear(slices: Sequence[AdapterSlice]) -> dict[int, list[AdapterSlice]]:
    """Slices grouped by the index of their linear among the graph's weight MatMuls."""
    groups: dict[int, list[AdapterSlice]] = {}
    for s in slices:
        groups.setdefault(4 * s.block + BLOCK_LINEARS.index(s.linear), []).append(s)
    return groups


def adapter_bundle_files(
    base: Bundle, slices: Sequence[AdapterSlice], lora: LoRAConfig
) -> tuple[dict[str, bytes], int]:
    """The adapter variant's files: a new graph, every other base file byte for byte."""
    entry = base.manifest.get("runtimes", {}).get("onnxruntime", {})
    graph_name = str(entry.get("file", LM_GRAPH_FILE))
    config = base.manifest["architecture"]["config"]
    try:
        graph, adapter_bytes = adapter_graph(base.file(graph_name), slices, lora, config)
    except AdapterVariantError as exc:
        label = base.manifest.get("recipe_label", base.variant_id[:12])
        raise AdapterVariantError(f"variant {label}: {exc}") from None
    files = dict(base.files)
    files[graph_name] = graph
    return files, adapter_bytes


def _measure(files: Mapping[str, bytes], test: npt.NDArray[np.uint8], context: int,
             contexts: tuple[int, ...]) -> LMMeasurement:  # fmt: skip
    from edgefleet.modelops.lm_measure import measure_lm

    with tempfile.TemporaryDirectory(prefix="lm-adapter-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return measure_lm(Path(tmp) / LM_GRAPH_FILE, test, context=context, contexts=contexts)


def _held_out(store: VariantStore, base: Mapping[str, Any]) -> npt.NDArray[np.uint8] | None:
    """The base's held-out text when it was measured on one that loads here, else None."""
    if "perplexity" not in base.get("metrics", {}):
        return None
    from edgefleet.datasets.core import DatasetError
    from edgefleet.datasets.text import load_text

    try:
        test: npt.NDArray[np.uint8] = load_text(str(base.get("dataset", "")), store.root).test
    except (DatasetError, OSError):
        return None
    return test


def build_adapter_variants(
    store: VariantStore,
    base_model: str,
    adapters: Mapping[str, npt.NDArray[np.float32]],
    lora: LoRAConfig,
    name: str,
    *,
    recipes: Sequence[str] | None = None,
    test: npt.NDArray[np.uint8] | None = None,
    measure: bool = True,
    progress: Progress = _noop,
) -> ModelEntry:
    """Register model ``name`` (e.g. ``MODEL-ft-RUN``) whose variants are the adapter variants
    of registered LM ``base_model``'s variants (every one, or the ``recipes`` labels given).

    ``adapters`` are the run's averaged arrays named as :func:`edgefleet.lora.adapter_arrays`
    names them (``blocks.0.qkv.lora_a.q`` ...), ``lora`` its rank/alpha/targets. Each adapter
    variant keeps its base variant's recipe label, precision and cache geometry, records
    ``parent`` (the base variant id) and ``adapter`` (rank, alpha, targets, adapter bytes) in
    its manifest, and is measured like any LM variant (perplexity, bytes, tok/s, peak memory)
    on ``test`` or, when ``test`` is None and the base was measured, on the base's held-out
    text; ``measure=False`` skips measuring. :class:`AdapterVariantError` (one line) when the
    base is not a language model, an adapter does not match the config, or a target is not in
    a variant's graph.
    """
    try:
        entry = store.model(base_model)
        bases = [store.load(v) for v in [entry.base, *entry.variants]]
    except StoreError as exc:
        raise AdapterVariantError(f"base model {base_model!r}: {exc}") from None
    if not bases or not is_lm_manifest(bases[0].manifest):
        raise AdapterVariantError(f"model {base_model!r} is not a language model")
    if recipes is not None:
        have = {str(b.manifest.get("recipe_label")): b for b in bases}
        missing = [r for r in recipes if r not in have]
        if missing:
            raise AdapterVariantError(
                f"model {base_model!r} has no variant {missing[0]!r} (it has {', '.join(have)})"
            )
        bases = [have[r] for r in recipes]
    config = bases[0].manifest["architecture"]["config"]
    slices = adapter_slices(adapters, lora, config)
    if measure and test is None:
        test = _held_out(store, bases[0].manifest)
    ids: list[str] = []
    for base in bases:
        label = str(base.manifest.get("recipe_label", ""))
        progress(label, "graph")
        files, adapter_bytes = adapter_bundle_files(base, slices, lora)
        body = _body(base, name, files, adapter_bytes, lora)
        if measure and test is not None:
            progress(label, "measure")
            lm = base.manifest["language_model"]
            peaks = base.manifest.get("metrics", {}).get("peak_bytes") or {}
            contexts = tuple(sorted(int(c) for c in peaks)) or (128, 1024)
            measured = _measure(files, test, int(lm["context"]), contexts)
            body["metrics"].update(
                perplexity=round(measured.perplexity, 6),
                prefill_tok_s=round(measured.prefill_tok_s, 3),
                decode_tok_s=round(measured.decode_tok_s, 3),
                peak_bytes={str(k): v for k, v in measured.peak_bytes.items()},
            )
        progress(label, "sign")
        ids.append(store.put(body, files))
    model = ModelEntry(
        name=name,
        architecture=dict(entry.architecture),
        dataset=entry.dataset,
        base=ids[0],
        variants=ids[1:],
        source={"task": LM_TASK, "adapters_of": base_model, "lora": lora.to_json()},
    )
    store.add_model(model)
    return model


def _body(
    base: Bundle, name: str, files: Mapping[str, bytes], adapter_bytes: int, lora: LoRAConfig
) -> dict[str, Any]:
    """The adapter variant's manifest body: its base's, less measurements, plus the adapter."""
    skip = ("format", "format_version", "files", "metrics", "parent", "adapter")
    body = {k: v for k, v in base.manifest.items() if k not in skip}
    body["model"] = name
    body["parent"] = base.variant_id
    body["runtimes"] = lm_runtimes(files)
    body["adapter"] = {**lora.to_json(), "bytes": adapter_bytes, "merged": False}
    body["metrics"] = {"size_bytes": sum(len(b) for b in files.values())}
    return body

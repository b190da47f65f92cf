"""An int8 KV cache for LM variants, in standard ONNX ops the CPU runtime runs.

Why a graph rewrite and not a fused attention op: onnxruntime 1.32's CPU ``GroupQueryAttention``
does take an int8 cache (since microsoft/onnxruntime#28576), but with *static* per-tensor or
per-channel scales passed in (a calibration step) and only for graphs whose attention is that
one fused op; our exported graph is plain MatMul/Softmax attention. Here the cache is quantized
per token vector instead: one fp32 scale per (layer, batch, head, position), symmetric,
``scale = max|x| / 127`` over the head dimension. That needs no calibration, and a position's
int8 values and scale never change once written, so the device appends each step's new positions
and never requantizes the old ones.

The rewrite of the fp32 KV-cache graph (:func:`int8_kv_cache`):

- inputs ``past_k``/``past_v`` become int8 ``(past, layers, batch, heads, head_dim)`` and gain
  ``past_k_scale``/``past_v_scale`` ``(past, layers, batch, heads, 1)``. Positions first, unlike
  the float graph's ``(layers, batch, heads, past, head_dim)``: then the first ``n`` positions
  of a buffer allocated once for the whole context are one contiguous block, so a device
  appends each step's positions in place and hands onnxruntime a view (no per-step copy of
  the cache, no second cache while one is being grown);
- each layer's slice of the cache (the export's ``Gather(past, layer)``) is dequantized where it
  is read, ``Cast`` + ``Mul`` + ``Transpose`` to the layout the attention expects, so at most
  one layer's float copy is live at a time, not the whole cache's (onnxruntime frees a tensor
  after its last reader);
- the outputs ``present_k``/``present_v`` (the whole grown cache, in float) are replaced by
  ``new_k``, ``new_k_scale``, ``new_v``, ``new_v_scale``: only the step's new positions, taken
  before each layer's ``Concat`` with its past and quantized in the graph.

The prompt's own positions attend to each other in float during prefill (they are quantized on
the way out); every later token reads them back from int8. Weight-only quantization
(``MatMulNBits``) is applied after this rewrite, so ``int4-g32+kv8`` is both.

What it buys is RAM, not decode bandwidth: every step dequantizes each layer's cache to fp32
before the attention's float MatMuls, so a step moves at least an fp32 cache's bytes (measured:
decode at 0.76-0.95x the fp32 graph's). Reading int8 in the attention itself would need
``MatMulInteger`` on the cache (with the query quantized per step) or the fused GQA above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "KV8_INPUTS",
    "KV8_OUTPUTS",
    "KV8_SUFFIX",
    "KVGraphError",
    "append_new",
    "empty_kv8",
    "int8_kv_cache",
    "is_kv8",
    "kv8_bytes_per_position",
]

KV8_SUFFIX = "+kv8"
KV8_INPUTS = ("tokens", "past_k", "past_k_scale", "past_v", "past_v_scale")
KV8_OUTPUTS = ("logits", "new_k", "new_k_scale", "new_v", "new_v_scale")
#: bytes of one scale (fp32)
SCALE_BYTES = 4
_TINY = 1e-30  # an all-zero vector's scale: its int8 values are 0 whatever the scale


class KVGraphError(ValueError):
    """The graph is not the per-layer KV-cache export this rewrite knows."""


def kv8_bytes_per_position(layers: int, heads: int, head_dim: int) -> int:
    """Keys and values of one position: int8 elements plus one fp32 scale per head and layer."""
    return 2 * layers * heads * (head_dim + SCALE_BYTES)


def _constant_int(graph: onnx.GraphProto, name: str) -> int | None:
    for init in graph.initializer:
        if init.name == name:
            return int(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return int(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    return None


def _dequantize_reads(graph: onnx.GraphProto, cache: str) -> dict[int, str]:
    """Rewrite every per-layer ``Gather`` of ``cache`` into Gather(int8) -> Cast -> Mul(scale);
    returns layer -> the dequantized slice's tensor name (the name the graph already reads)."""
    layers: dict[int, str] = {}
    added: list[tuple[int, list[onnx.NodeProto]]] = []
    for i, node in enumerate(graph.node):
        if cache not in node.input:
            continue
        if node.op_type == "Shape":
            _past_length_from_axis0(node, cache)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        layer = _constant_int(graph, node.input[1]) if node.op_type == "Gather" else None
        if node.op_type != "Gather" or axis != 0 or layer is None:
            raise KVGraphError(
                f"{cache} is read by a {node.op_type} node ({node.name or node.output[0]}); "
                "the int8 cache rewrite expects one Gather per layer"
            )
        out = node.output[0]
        q, f, s, d = f"{out}_q8", f"{out}_q8_float", f"{out}_q8_scale", f"{out}_q8_deq"
        node.output[0] = q
        del node.attribute[:]  # the layer axis is 1 in the positions-first layout
        node.attribute.append(helper.make_attribute("axis", 1))
        added.append(
            (
                i + 1,
                [
                    helper.make_node("Gather", [f"{cache}_scale", node.input[1]], [s], axis=1),
                    helper.make_node("Cast", [q], [f], to=TensorProto.FLOAT),
                    helper.make_node("Mul", [f, s], [d]),
                    # (past, batch, heads, head_dim) -> the attention's (batch, heads, past, hd)
                    helper.make_node("Transpose", [d], [out], perm=[1, 2, 0, 3]),
                ],
            )
        )
        layers[layer] = out
    for at, nodes in reversed(added):
        for n in reversed(nodes):
            graph.node.insert(at, n)
    return layers


def _past_length_from_axis0(node: onnx.NodeProto, cache: str) -> None:
    """The export reads the past length as ``Shape(past, start=3, end=4)``: axis 0 now."""
    bounds = {a.name: a.i for a in node.attribute}
    if bounds != {"start": 3, "end": 4}:
        raise KVGraphError(f"{cache}'s shape is read as {bounds}, not its past length alone")
    for a in node.attribute:
        a.i = 0 if a.name == "start" else 1


def _new_positions(graph: onnx.GraphProto, slices: Mapping[int, str], cache: str) -> list[str]:
    """Per layer, in order: the step's new keys/values (the ``Concat`` input after the past)."""
    out: list[str] = []
    for layer in range(len(slices)):
        name = slices.get(layer)
        cat = next((n for n in graph.node if n.op_type == "Concat" and n.input[:1] == [name]), None)
        if name is None or cat is None or len(cat.input) != 2:
            raise KVGraphError(f"layer {layer} of {cache} is not grown by a Concat(past, new)")
        out.append(cat.input[1])
    return out


def _quantize(graph: onnx.GraphProto, per_layer: Sequence[str], name: str) -> None:
    """Stack the layers' new positions, positions first, and quantize them into outputs ``name``
    and ``name_scale``: symmetric int8 per (position, layer, batch, head)."""
    axis1 = f"{name}_axis1"
    last = f"{name}_axis_last"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], np.int64), axis1),
            numpy_helper.from_array(np.array([-1], np.int64), last),
            numpy_helper.from_array(np.array(127.0, np.float32), f"{name}_qmax"),
            numpy_helper.from_array(np.array(_TINY, np.float32), f"{name}_tiny"),
        ]
    )
    nodes: list[onnx.NodeProto] = []
    ups = []
    for i, t in enumerate(per_layer):  # (batch, heads, new, hd) -> (new, 1, batch, heads, hd)
        nodes.append(helper.make_node("Transpose", [t], [f"{name}_t{i}"], perm=[2, 0, 1, 3]))
        nodes.append(helper.make_node("Unsqueeze", [f"{name}_t{i}", axis1], [f"{name}_l{i}"]))
        ups.append(f"{name}_l{i}")
    nodes += [
        helper.make_node("Concat", ups, [f"{name}_float"], axis=1),
        helper.make_node("Abs", [f"{name}_float"], [f"{name}_abs"]),
        helper.make_node("ReduceMax", [f"{name}_abs", last], [f"{name}_absmax"], keepdims=1),
        helper.make_node("Div", [f"{name}_absmax", f"{name}_qmax"], [f"{name}_raw_scale"]),
        helper.make_node("Max", [f"{name}_raw_scale", f"{name}_tiny"], [f"{name}_scale"]),
        helper.make_node("Div", [f"{name}_float", f"{name}_scale"], [f"{name}_unit"]),
        helper.make_node("Round", [f"{name}_unit"], [f"{name}_round"]),
        helper.make_node("Cast", [f"{name}_round"], [name], to=TensorProto.INT8),
    ]
    graph.node.extend(nodes)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes no output depends on (the float ``present_*`` stacks)."""
    live = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    kept = {o for n in graph.node for o in n.output}
    values = [v for v in graph.value_info if v.name in kept]
    del graph.value_info[:]
    graph.value_info.extend(values)


def int8_kv_cache(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The int8-cache graph of an fp32 KV-cache graph (see the module docstring);
    :class:`KVGraphError` (one line) for a graph of another shape."""
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    g = model.graph
    ins = {i.name: i for i in g.input}
    if [i.name for i in g.input] != ["tokens", "past_k", "past_v"]:
        raise KVGraphError(f"inputs are {[i.name for i in g.input]}, expected tokens/past_k/past_v")
    if ins["past_k"].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise KVGraphError("the int8 cache is derived from the fp32 graph (past_k is not float)")
    dims = [d.dim_param or d.dim_value for d in ins["past_k"].type.tensor_type.shape.dim]
    new_k: list[str] = []
    new_v: list[str] = []
    for cache, into in (("past_k", new_k), ("past_v", new_v)):
        slices = _dequantize_reads(g, cache)
        into.extend(_new_positions(g, slices, cache))
        if len(slices) != dims[0]:
            raise KVGraphError(f"{cache} has {dims[0]} layers but {len(slices)} are read")
    _quantize(g, new_k, "new_k")
    _quantize(g, new_v, "new_v")
    layers, batch, heads, past, head_dim = dims
    cache_dims = [past, layers, batch, heads, head_dim]
    scale_dims = [past, layers, batch, heads, 1]
    new_dims = ["new", layers, batch, heads, head_dim]
    new_scale = ["new", layers, batch, heads, 1]
    inputs = [
        g.input[0],
        helper.make_tensor_value_info("past_k", TensorProto.INT8, cache_dims),
        helper.make_tensor_value_info("past_k_scale", TensorProto.FLOAT, scale_dims),
        helper.make_tensor_value_info("past_v", TensorProto.INT8, cache_dims),
        helper.make_tensor_value_info("past_v_scale", TensorProto.FLOAT, scale_dims),
    ]
    logits = next(o for o in g.output if o.name == "logits")
    outputs = [
        logits,
        helper.make_tensor_value_info("new_k", TensorProto.INT8, new_dims),
        helper.make_tensor_value_info("new_k_scale", TensorProto.FLOAT, new_scale),
        helper.make_tensor_value_info("new_v", TensorProto.INT8, new_dims),
        helper.make_tensor_value_info("new_v_scale", TensorProto.FLOAT, new_scale),
    ]
    for field, items in ((g.input, inputs), (g.output, outputs)):
        copies = [onnx.ValueInfoProto() for _ in items]
        for c, item in zip(copies, items, strict=True):
            c.CopyFrom(item)
        del field[:]
        field.extend(copies)
    _prune(g)
    onnx.checker.check_model(model)
    return model


# -- the int8 cache on the host side (measurement; the agent has its own copy in numpy) --


def is_kv8(sess: Any) -> bool:
    """Whether an onnxruntime session's graph takes the int8 cache."""
    return any(i.name == "past_k_scale" for i in sess.get_inputs())


def empty_kv8(
    layers: int, heads: int, head_dim: int, batch: int = 1
) -> dict[str, npt.NDArray[Any]]:
    """The cache feeds of a prefill: zero past positions (positions-first layout)."""
    q = np.zeros((0, layers, batch, heads, head_dim), np.int8)
    s = np.zeros((0, layers, batch, heads, 1), np.float32)
    return {"past_k": q, "past_k_scale": s, "past_v": q, "past_v_scale": s}


def append_new(
    cache: Mapping[str, npt.NDArray[Any]], outputs: Sequence[npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """The cache after a step: ``outputs`` are the graph's (logits, new_k, new_k_scale, new_v,
    new_v_scale); the new positions are appended on the position axis (the first). A copy:
    what measurement needs; the agent appends into a buffer allocated once instead."""
    _, k, ks, v, vs = outputs
    grown = zip(("past_k", "past_k_scale", "past_v", "past_v_scale"), (k, ks, v, vs), strict=True)
    return {n: np.concatenate((cache[n], x), axis=0) for n, x in grown}

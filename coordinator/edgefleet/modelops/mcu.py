"""Export a static-int8 QDQ graph as integer tensors + requantisation parameters for an MCU.

Microcontroller runtimes (TFLite Micro, CMSIS-NN) have no float unit to spare: every layer is
``int8 x int8 -> int32`` accumulation, then a *requantisation* to the next int8 tensor with a
fixed-point multiplier and a power-of-two shift (TFLite int8 quantisation spec). onnxruntime's
QDQ graph already holds every scale and zero point; what it lacks, and this module adds, is:

* biases as int32 at scale ``s_in * s_w[c]`` (onnxruntime leaves Gemm biases in float),
* per-output-channel ``multiplier`` (Q31) and ``shift`` for ``M = s_in * s_w[c] / s_out``,
  computed exactly as TFLite's ``QuantizeMultiplier`` does,
* a flat op list over named int8 tensors (NCHW layout, as in the ONNX graph).

Integer tensors go to ``mcu.safetensors``; the graph (ops, shapes, scales) to ``mcu.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.mcu_format import (
    ACTIVATION_DTYPE,
    LAYOUT,
    MCU_FORMAT,
    MCU_FORMAT_VERSION,
    leaky_relu_params,
)
from edgefleet.mcu_format import quantize_multiplier as _quantize_multiplier
from edgefleet.modelops.onnx_export import static_shapes

__all__ = ["MCU_FORMAT", "McuExport", "McuExportError", "export_mcu", "quantize_multiplier"]

_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class McuExportError(ValueError):
    """The quantised graph uses an op or a pattern the MCU format cannot express."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier (:func:`edgefleet.mcu_format.quantize_multiplier`)."""
    try:
        return _quantize_multiplier(real)
    except ValueError as exc:
        raise McuExportError(str(exc)) from exc


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in real.reshape(-1)]
    return (
        np.array([p[0] for p in pairs], dtype=np.int32),
        np.array([p[1] for p in pairs], dtype=np.int32),
    )


@dataclass
class McuExport:
    """The graph description (JSON-able) and the integer tensors it refers to."""

    graph: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors.values())


class _Graph:
    """Index of a QDQ ONNX model: producers, consumers, constants, inferred shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.shapes = static_shapes(model)

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise McuExportError(f"expected a constant for {name!r}")
        return self.consts[name]

    def dequant_const(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(integer tensor, scale) behind a DequantizeLinear of a constant."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            raise McuExportError(f"{name!r} is not a dequantised constant")
        data = self.const(node.input[0])
        scale = self.const(node.input[1]).astype(np.float64)
        if len(node.input) > 2 and node.input[2] and self.const(node.input[2]).any():
            raise McuExportError(f"{name!r}: weights must be symmetric (zero point 0)")
        return data, scale

    def activation(self, name: str) -> str:
        """The quantised (QuantizeLinear output) tensor that float tensor ``name`` comes from."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            raise McuExportError(f"activation {name!r} is not produced by DequantizeLinear")
        src = self.producer.get(node.input[0])
        if src is None or src.op_type != "QuantizeLinear":
            raise McuExportError(f"activation {name!r} is not a quantised tensor")
        return node.input[0]

    def quantised_output(self, name: str) -> tuple[str, list[onnx.NodeProto]]:
        """Follow float tensor ``name`` through shape-only ops to the QuantizeLinear after it."""
        skipped: list[onnx.NodeProto] = []
        while True:
            users = self.consumers.get(name, [])
            if len(users) != 1:
                raise McuExportError(f"{name!r} must feed exactly one op (feeds {len(users)})")
            user = users[0]
            if user.op_type == "QuantizeLinear":
                return user.output[0], skipped
            if user.op_type not in _SHAPE_OPS:
                raise McuExportError(f"float op {user.op_type} between quantised ops")
            skipped.append(user)
            name = user.output[0]

    def qparams(self, qname: str) -> tuple[float, int]:
        q = self.producer[qname]
        scale = float(self.const(q.input[1]))
        zp = int(self.const(q.input[2])) if len(q.input) > 2 and q.input[2] else 0
        if self.const(q.input[2]).dtype != np.int8:
            raise McuExportError("activations must be int8")
        return scale, zp


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def export_mcu(model: onnx.ModelProto) -> McuExport:
    """Translate a QDQ int8 model (from :func:`quantize.to_int8_static`) to the MCU format."""
    g = _Graph(model)
    out = McuExport(graph={})
    tensors: dict[str, dict[str, Any]] = {}
    ops: list[dict[str, Any]] = []

    def tensor(qname: str) -> str:
        if qname not in tensors:
            scale, zp = g.qparams(qname)
            float_name = g.producer[qname].input[0]
            shape = g.shapes.get(float_name) or g.shapes.get(qname)
            if shape is None:
                raise McuExportError(f"unknown shape for {float_name!r}")
            tensors[qname] = {
                "shape": shape,
                "scale": scale,
                "zero_point": zp,
                "dtype": ACTIVATION_DTYPE,
            }
        return qname

    graph_input = model.graph.input[0].name
    input_q: str | None = None
    for node in model.graph.node:
        op = node.op_type
        if op == "QuantizeLinear" and _traces_to(g, node.input[0], graph_input):
            input_q = tensor(node.output[0])
        elif op in ("Conv", "Gemm"):
            ops.append(_dense_op(g, node, tensor, out, len(ops)))
        elif op == "Add":
            a, b = (tensor(g.activation(i)) for i in node.input)
            y, _ = g.quantised_output(node.output[0])
            ops.append(_add_op(a, b, tensor(y), tensors))
        elif op in ("MaxPool", "AveragePool"):
            x = tensor(g.activation(node.input[0]))
            y, _ = g.quantised_output(node.output[0])
            ops.append(_window_pool_op(node, x, tensor(y), tensors))
        elif op == "Concat":
            ops.extend(_concat_ops(g, node, tensor, tensors))
        elif op == "LeakyRelu":
            x = tensor(g.activation(node.input[0]))
            y, _ = g.quantised_output(node.output[0])
            ops.append(_leaky_relu_op(node, x, tensor(y), tensors))
        elif op == "GlobalAveragePool":
            x = tensor(g.activation(node.input[0]))
            y, _ = g.quantised_output(node.output[0])
            ops.append(_global_mean_op(x, tensor(y), tensors))
        elif op == "ReduceMean":
            x = tensor(g.activation(node.input[0]))
            y, _ = g.quantised_output(node.output[0])
            ops.append(_mean_op(g, node, x, tensor(y), tensors))
        elif op in _SHAPE_OPS:
            src = g.producer.get(node.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                x = tensor(g.activation(node.input[0]))
                y, _ = g.quantised_output(node.output[0])
                ops.append(_requant_op("reshape", x, tensor(y), tensors))
        elif op not in ("QuantizeLinear", "DequantizeLinear"):
            raise McuExportError(
                f"op {_user_op_name(g, node)} is not supported by the MCU format "
                f"(its int8 ops: {', '.join(_SUPPORTED_ONNX)})"
            )
    if input_q is None:
        raise McuExportError("graph input is not quantised")
    final = model.graph.output[0].name
    dq = g.producer.get(final)
    if dq is None or dq.op_type != "DequantizeLinear":
        raise McuExportError("graph output is not dequantised from an int8 tensor")
    out.graph = {
        "format": MCU_FORMAT,
        "version": MCU_FORMAT_VERSION,
        "layout": LAYOUT,
        "input": input_q,
        "output": tensor(dq.input[0]),
        "tensors": tensors,
        "ops": ops,
        "requantization": "tflite: acc * multiplier * 2**(shift - 31), round half away from zero",
    }
    return out


#: The ONNX ops the exporter turns into MCU ops (named in a refusal, so a user knows what to use).
_SUPPORTED_ONNX = (
    "Conv",
    "Gemm",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "LeakyRelu",
    "Concat",
    "Relu",
    "Flatten/Reshape",
)


def _user_op_name(g: _Graph, node: onnx.NodeProto) -> str:
    """The op as the user wrote it: torch exports ``nn.Hardswish`` as ``HardSigmoid(x) * x``
    (through Q/DQ pairs once quantised), so a HardSigmoid whose output reaches a Mul is named
    HardSwish in the refusal. TFLM has int8 HARD_SWISH, LOGISTIC and SOFTMAX kernels; the
    emulator does not reproduce them bit for bit yet, so they are refused at build."""
    if node.op_type != "HardSigmoid":
        return node.op_type
    frontier, seen = list(node.output), 0
    while frontier and seen < 8:
        seen += 1
        for user in g.consumers.get(frontier.pop(), []):
            if user.op_type == "Mul":
                return "HardSwish (HardSigmoid x Mul)"
            if user.op_type in ("QuantizeLinear", "DequantizeLinear"):
                frontier.extend(user.output)
    return node.op_type


def _traces_to(g: _Graph, name: str, target: str) -> bool:
    while name != target:
        node = g.producer.get(name)
        if node is None or node.op_type not in _SHAPE_OPS:
            return False
        name = node.input[0]
    return True


def _dense_op(
    g: _Graph, node: onnx.NodeProto, tensor: Any, out: McuExport, index: int
) -> dict[str, Any]:
    x = tensor(g.activation(node.input[0]))
    y, _ = g.quantised_output(node.output[0])
    y = tensor(y)
    w, w_scale = g.dequant_const(node.input[1])
    if w.dtype != np.int8:
        raise McuExportError(f"{node.name}: weights are {w.dtype}, expected int8")
    attrs = _attrs(node)
    s_in, _ = g.qparams(x)
    s_out, zp_out = g.qparams(y)
    if node.op_type == "Gemm":
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            raise McuExportError(f"{node.name}: only Gemm(x, W^T) + b is supported")
        if not attrs.get("transB", 0):
            w = w.T  # per-channel scales stay per output feature
        kind: dict[str, Any] = {"op": "fully_connected"}
    else:
        groups = int(attrs.get("group", 1))
        if attrs.get("dilations", [1, 1]) != [1, 1]:
            raise McuExportError(f"{node.name}: dilated convolutions are not supported")
        kind = {
            "op": "depthwise_conv2d" if groups > 1 and groups == w.shape[0] else "conv2d",
            "stride": list(attrs.get("strides", [1, 1])),
            "padding": list(attrs.get("pads", [0, 0, 0, 0])),
            "groups": groups,
        }
    channels = w.shape[0]
    w_scale = np.broadcast_to(w_scale.reshape(-1), (channels,)).astype(np.float64)
    bias = np.zeros(channels, dtype=np.int32)
    if len(node.input) > 2 and node.input[2]:
        bias = _int32_bias(g, node.input[2], s_in * w_scale)
    mult, shift = _multipliers(s_in * w_scale / s_out)
    prefix = f"op{index}"
    out.tensors.update(
        {
            f"{prefix}.weight": np.ascontiguousarray(w),
            f"{prefix}.bias": bias,
            f"{prefix}.multiplier": mult,
            f"{prefix}.shift": shift.astype(np.int8),
        }
    )
    return {
        **kind,
        "inputs": [x],
        "output": y,
        "weight": f"{prefix}.weight",
        "bias": f"{prefix}.bias",
        "multiplier": f"{prefix}.multiplier",
        "shift": f"{prefix}.shift",
        # The output clamp; a fused ReLU is the clamp at the zero point onnxruntime calibrated.
        "activation_min": -128,
        "activation_max": 127,
        "output_zero_point": zp_out,
        # per output channel, as float32 (what .tflite stores and TFLM derives multipliers from)
        "weight_scale": [float(np.float32(s)) for s in w_scale],
    }


def _int32_bias(g: _Graph, name: str, bias_scale: np.ndarray) -> np.ndarray:
    node = g.producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        data, scale = g.dequant_const(name)
        real = data.astype(np.float64) * np.broadcast_to(scale.reshape(-1), data.shape)
    else:
        real = g.const(name).astype(np.float64)
    q = np.round(real / bias_scale)
    if np.abs(q).max(initial=0) >= 2**31:
        raise McuExportError(f"bias {name!r} overflows int32")
    out: np.ndarray = q.astype(np.int32)
    return out


def _requant_op(
    kind: str, x: str, y: str, tensors: dict[str, dict[str, Any]], extra: float = 1.0
) -> dict[str, Any]:
    s_in, s_out = tensors[x]["scale"], tensors[y]["scale"]
    mult, shift = quantize_multiplier(s_in * extra / s_out)
    return {
        "op": kind,
        "inputs": [x],
        "output": y,
        "multiplier": mult,
        "shift": shift,
        "input_zero_point": tensors[x]["zero_point"],
        "output_zero_point": tensors[y]["zero_point"],
    }


def _mean_op(
    g: _Graph, node: onnx.NodeProto, x: str, y: str, tensors: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    shape = tensors[x]["shape"]
    axes = _attrs(node).get("axes")
    if axes is None and len(node.input) > 1:
        axes = [int(a) for a in g.const(node.input[1])]
    if sorted(int(a) % len(shape) for a in axes or []) != [2, 3]:
        raise McuExportError("only a global average over H and W is supported")
    return _global_mean_op(x, y, tensors)


def _global_mean_op(x: str, y: str, tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """TFLM's int8 MEAN over H and W (``reference_ops::QuantizedMeanOrSum``).

    TFLM quantises ``s_in / s_out`` and then folds ``1 / count`` into the integer multiplier
    (``(multiplier << shift) / count``, ``shift = floor(log2(count))`` clamped to 32 and to
    ``31 + shift_out``), so the emulator and TFLM requantise the int32 sum identically.
    """
    shape = tensors[x]["shape"]
    count = int(shape[2] * shape[3])
    op = _requant_op("global_average_pool", x, y, tensors)
    fold = min(count.bit_length() - 1, 32, 31 + op["shift"])
    op["multiplier"] = (op["multiplier"] << fold) // count
    op["shift"] -= fold
    op["count"] = count
    return op


def _window_pool_op(
    node: onnx.NodeProto, x: str, y: str, tensors: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """MaxPool / AveragePool: int8 in and out at the SAME scale, as TFLite's kernels require."""
    attrs = _attrs(node)
    kind = "max_pool2d" if node.op_type == "MaxPool" else "average_pool2d"
    a, b = tensors[x], tensors[y]
    if (a["scale"], a["zero_point"]) != (b["scale"], b["zero_point"]):
        raise McuExportError(f"{node.op_type}: output quantisation differs from the input's")
    if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise McuExportError(f"{node.op_type}: ceil_mode and dilations are not supported")
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if kind == "average_pool2d" and attrs.get("count_include_pad", 0) and any(pads):
        # TFLite averages over the cells inside the input only (PyTorch's default counts
        # padding, which matters only when there is padding)
        raise McuExportError("AveragePool: count_include_pad=1 with padding is not supported")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    return {
        "op": kind,
        "inputs": [x],
        "output": y,
        "kernel": kernel,
        "stride": [int(s) for s in attrs.get("strides", kernel)],
        "padding": pads,
        "activation_min": -128,
        "activation_max": 127,
    }


def _add_op(a: str, b: str, y: str, tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """TFLite's int8 ADD: inputs rescaled to a common 2*max scale with 20 bits of headroom."""
    s1, s2, s_out = (tensors[t]["scale"] for t in (a, b, y))
    left_shift = 20
    twice_max = 2 * max(s1, s2)
    m1, sh1 = quantize_multiplier(s1 / twice_max)
    m2, sh2 = quantize_multiplier(s2 / twice_max)
    mo, sho = quantize_multiplier(twice_max / ((1 << left_shift) * s_out))
    return {
        "op": "add",
        "inputs": [a, b],
        "output": y,
        "left_shift": left_shift,
        "input_multipliers": [m1, m2],
        "input_shifts": [sh1, sh2],
        "input_zero_points": [tensors[a]["zero_point"], tensors[b]["zero_point"]],
        "multiplier": mo,
        "shift": sho,
        "output_zero_point": tensors[y]["zero_point"],
    }


def _leaky_relu_op(
    node: onnx.NodeProto, x: str, y: str, tensors: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """TFLM's int8 LEAKY_RELU: one requantisation for x >= 0, another (times alpha) below,
    with the parameters TFLM's ``Prepare`` derives (:func:`edgefleet.mcu_format.leaky_relu_params`,
    shared with the emulator)."""
    try:
        params = leaky_relu_params(
            tensors[x]["scale"], tensors[y]["scale"], float(_attrs(node).get("alpha", 0.01))
        )
    except ValueError as exc:
        raise McuExportError(str(exc)) from exc
    return {
        "op": "leaky_relu",
        "inputs": [x],
        "output": y,
        **params,
        "input_zero_point": tensors[x]["zero_point"],
        "output_zero_point": tensors[y]["zero_point"],
    }


def _concat_ops(
    g: _Graph, node: onnx.NodeProto, tensor: Any, tensors: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Concat along channels. TFLM's int8 CONCATENATION copies bytes and so requires every
    input at the output's scale and zero point; onnxruntime calibrates each input on its
    own, so an input that differs is first requantised to the output's parameters (one
    rounding, as onnxruntime's dequantise-concat-quantise does)."""
    names = [tensor(g.activation(i)) for i in node.input]
    y_name, _ = g.quantised_output(node.output[0])
    y = tensor(y_name)
    rank = len(tensors[y]["shape"])
    if int(_attrs(node).get("axis", 1)) % rank != 1:
        raise McuExportError("Concat: only a concatenation along channels is supported")
    ops: list[dict[str, Any]] = []
    inputs = []
    for x in names:
        a, b = tensors[x], tensors[y]
        if (a["scale"], a["zero_point"]) != (b["scale"], b["zero_point"]):
            scaled = f"{x}.to.{y}"
            tensors[scaled] = {**a, "scale": b["scale"], "zero_point": b["zero_point"]}
            ops.append(_requant_op("requantize", x, scaled, tensors))
            x = scaled
        inputs.append(x)
    ops.append({"op": "concat", "inputs": inputs, "output": y, "axis": 1})
    return ops

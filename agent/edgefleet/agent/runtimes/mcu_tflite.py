"""Read a bundle's ``model.tflite`` into the emulator's integer graph, as TFLM's Prepare does.

Why: mcu-sim must execute the SAME graph TensorFlow Lite Micro executes, so it reads the very
file TFLM and LiteRT load (parsed with the TFLite schema's generated object API from the
``tflite-micro`` wheel), not a sibling description of it. Every per-op integer parameter is
derived here from the file's float32 scales the way TFLM's kernels derive it in ``Prepare``:

* CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: per channel
  ``QuantizeMultiplier(double(s_in) * double(s_w[c]) / double(s_out))``
  (``PopulateConvolutionQuantizationParams``); clamp from the fused activation
  (``CalculateActivationRangeQuantized``, ``6 / scale`` in float32 for RELU6);
* ADD: ``left_shift`` 20, inputs to ``2 * max(s1, s2)``, output from
  ``2 * max / (2**20 * s_out)`` (``CalculateOpDataAdd``);
* MEAN over H, W: ``QuantizeMultiplier(s_in / s_out)``, then ``1 / count`` folded into the
  integer multiplier (``reference_ops::QuantizedMeanOrSum``);
* QUANTIZE int8 -> int8: ``QuantizeMultiplier(s_in / s_out)`` (``Requantize``);
* CONCATENATION (int8): a byte copy; TFLM requires every input at the output's parameters;
* LEAKY_RELU: ``s_in / s_out`` and ``s_in * alpha / s_out`` computed in float32
  (``CalculateOpDataLeakyRelu``), one applied to x >= 0, the other below;
* SAME padding: ``ComputePaddingHeightWidth``.

The emulator keeps its NCHW kernels: the layout is undone here exactly (weights transposed
back, fully-connected columns permuted back through :func:`edgefleet.mcu_format.nhwc_flat_order`),
which changes no integer (sums of exact int32 products do not depend on their order).
Anything the emulator does not run (e.g. SOFTMAX, LOGISTIC) is refused at load with the op
named, so inference cannot fail half-way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.agent.runtimes.base import BundleFormatError, RuntimeUnavailableError
from edgefleet.agent.runtimes.mcu_graph import McuGraph, TensorInfo, check_graph
from edgefleet.mcu_format import leaky_relu_params, nhwc_flat_order, quantize_multiplier

__all__ = ["parse_tflite", "schema_available"]

_INT8, _INT32 = 9, 2  # tflite TensorType values


def _schema() -> Any:
    try:
        from tflite_micro.tensorflow.lite.micro.python import (  # type: ignore[import-untyped]
            schema_py_generated,
        )
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "mcu-sim reads model.tflite with the TFLite schema from the tflite-micro package, "
            "which is not installed"
        ) from exc
    return schema_py_generated


def schema_available() -> bool:
    """Whether ``model.tflite`` can be parsed here (the ``tflite-micro`` wheel is installed)."""
    try:
        _schema()
    except RuntimeUnavailableError:
        return False
    return True


def _mult(real: float) -> tuple[int, int]:
    try:
        return quantize_multiplier(real)
    except ValueError as exc:
        raise BundleFormatError(f"model.tflite: {exc}") from exc


class _Reader:
    """One subgraph's tensors as the emulator's NCHW tensors and parameters."""

    def __init__(self, model: Any, s: Any) -> None:
        self.s = s
        self.model = model
        self.sub = model.subgraphs[0]
        self.tensors: dict[str, TensorInfo] = {}
        self.params: dict[str, np.ndarray[Any, Any]] = {}
        self.order: dict[int, list[int]] = {}  # NHWC flatten order of 2-D tensors
        self.ops: list[dict[str, Any]] = []

    def t(self, i: int) -> Any:
        return self.sub.tensors[i]

    def name(self, i: int) -> str:
        t = self.t(i)
        return (t.name.decode() if isinstance(t.name, bytes) else str(t.name)) or f"t{i}"

    def qparams(self, i: int) -> tuple[list[float], list[int]]:
        q = self.t(i).quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise BundleFormatError(f"model.tflite: tensor {self.name(i)!r} is not quantised")
        zps = [0] * len(q.scale) if q.zeroPoint is None else [int(z) for z in q.zeroPoint]
        return [float(np.float32(v)) for v in q.scale], zps

    def activation(self, i: int) -> str:
        """Register int8 activation tensor ``i`` (NHWC -> NCHW shape) and return its name."""
        name = self.name(i)
        if name not in self.tensors:
            t = self.t(i)
            if t.type != _INT8:
                raise BundleFormatError(f"model.tflite: activation {name!r} is not int8")
            shape = [int(d) for d in t.shape]
            if len(shape) == 4:
                shape = [shape[0], shape[3], shape[1], shape[2]]
            elif len(shape) != 2:
                raise BundleFormatError(f"model.tflite: {name!r} has rank {len(shape)}")
            scales, zps = self.qparams(i)
            self.tensors[name] = TensorInfo(tuple(shape), scales[0], zps[0])
        return name

    def const(self, i: int, dtype: Any) -> np.ndarray[Any, Any]:
        t = self.t(i)
        want = _INT8 if dtype == np.int8 else _INT32
        buf = self.model.buffers[t.buffer]
        if t.type != want or buf.data is None:
            raise BundleFormatError(f"model.tflite: {self.name(i)!r} is not a constant {dtype}")
        raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        shape = [int(d) for d in t.shape]
        if arr.size != int(np.prod(shape)):
            raise BundleFormatError(f"model.tflite: {self.name(i)!r} data size disagrees")
        return arr.reshape(shape)

    def clamp(self, fused: int, out: str) -> tuple[int, int]:
        """TFLM CalculateActivationRangeQuantized for an int8 output."""
        info = self.tensors[out]
        act = self.s.ActivationFunctionType
        zp, scale = info.zero_point, np.float32(info.scale)
        if fused == act.NONE:
            return -128, 127
        if fused == act.RELU:
            return max(-128, zp), 127
        if fused == act.RELU6:
            six = int(np.floor(np.abs(np.float32(6.0) / scale) + np.float32(0.5)))
            return max(-128, zp), min(127, zp + six)
        raise BundleFormatError(f"model.tflite: fused activation {fused} is not supported")


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int, int]:
    """(output size, pad before, pad after) for TFLite SAME (ComputePaddingHeightWidth)."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _window(r: _Reader, x: str, opts: Any, kh: int, kw: int) -> dict[str, Any]:
    _, _, h, w = r.tensors[x].shape
    sh, sw = int(opts.strideH), int(opts.strideW)
    if int(opts.padding) == r.s.Padding.SAME:
        _, pt, pb = _same_pads(h, kh, sh)
        _, pl, pr = _same_pads(w, kw, sw)
    else:
        pt = pb = pl = pr = 0
    return {"stride": [sh, sw], "padding": [pt, pl, pb, pr]}


def _dense(r: _Reader, code: int, op: Any, index: int) -> dict[str, Any]:
    ops = r.s.BuiltinOperator
    xi, wi, bi = (int(i) for i in op.inputs[:3])
    x, y = r.activation(xi), r.activation(int(op.outputs[0]))
    w = r.const(wi, np.int8)
    b = r.const(bi, np.int32) if bi >= 0 else None
    s_in, s_out = r.tensors[x].scale, r.tensors[y].scale
    opts = op.builtinOptions
    entry: dict[str, Any]
    if code == ops.FULLY_CONNECTED:
        order = r.order.get(xi)
        if len(r.tensors[x].shape) == 4:
            order = nhwc_flat_order(r.tensors[x].shape[1:])
        weight = w if order is None else w[:, np.argsort(np.asarray(order))]
        entry = {"op": "fully_connected"}
    elif code == ops.CONV_2D:
        weight = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        entry = {"op": "conv2d", "groups": 1, **_window(r, x, opts, w.shape[1], w.shape[2])}
    else:
        weight = w[0].transpose(2, 0, 1)[:, None]  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw]
        groups = r.tensors[x].shape[1]
        entry = {
            "op": "depthwise_conv2d",
            "groups": groups,
            **_window(r, x, opts, w.shape[1], w.shape[2]),
        }
    channels = weight.shape[0]
    w_scales, w_zps = r.qparams(wi)
    if any(w_zps):
        raise BundleFormatError(f"model.tflite op {index}: weights must be symmetric")
    if len(w_scales) == 1:
        w_scales = w_scales * channels
    if len(w_scales) != channels:
        raise BundleFormatError(f"model.tflite op {index}: weight scales are not per channel")
    pairs = [_mult(float(s_in) * float(sw) / float(s_out)) for sw in w_scales]
    prefix = f"op{index}"
    r.params.update(
        {
            f"{prefix}.weight": np.ascontiguousarray(weight),
            f"{prefix}.bias": b if b is not None else np.zeros(channels, np.int32),
            f"{prefix}.multiplier": np.array([p[0] for p in pairs], dtype=np.int32),
            f"{prefix}.shift": np.array([p[1] for p in pairs], dtype=np.int8),
        }
    )
    lo, hi = r.clamp(int(opts.fusedActivationFunction), y)
    return {
        **entry,
        "inputs": [x],
        "output": y,
        "weight": f"{prefix}.weight",
        "bias": f"{prefix}.bias",
        "multiplier": f"{prefix}.multiplier",
        "shift": f"{prefix}.shift",
        "activation_min": lo,
        "activation_max": hi,
        "output_zero_point": r.tensors[y].zero_point,
    }


def _requant(r: _Reader, kind: str, x: str, y: str) -> dict[str, Any]:
    a, b = r.tensors[x], r.tensors[y]
    m, sh = _mult(float(a.scale) / float(b.scale))
    return {
        "op": kind,
        "inputs": [x],
        "output": y,
        "multiplier": m,
        "shift": sh,
        "input_zero_point": a.zero_point,
        "output_zero_point": b.zero_point,
    }


def _convert(r: _Reader, op: Any, index: int) -> dict[str, Any]:
    ops = r.s.BuiltinOperator
    code = int(r.model.operatorCodes[op.opcodeIndex].builtinCode)
    code = max(code, int(r.model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode))
    names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
    if code in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED):
        return _dense(r, code, op, index)
    xi, yi = int(op.inputs[0]), int(op.outputs[0])
    x, y = r.activation(xi), r.activation(yi)
    opts = op.builtinOptions
    if code == ops.ADD:
        b = r.activation(int(op.inputs[1]))
        s1, s2, so = (float(r.tensors[n].scale) for n in (x, b, y))
        twice_max = 2 * max(s1, s2)
        (m1, sh1), (m2, sh2) = _mult(s1 / twice_max), _mult(s2 / twice_max)
        mo, sho = _mult(twice_max / ((1 << 20) * so))
        lo, hi = r.clamp(int(opts.fusedActivationFunction), y)
        return {
            "op": "add",
            "inputs": [x, b],
            "output": y,
            "left_shift": 20,
            "input_multipliers": [m1, m2],
            "input_shifts": [sh1, sh2],
            "input_zero_points": [r.tensors[x].zero_point, r.tensors[b].zero_point],
            "multiplier": mo,
            "shift": sho,
            "output_zero_point": r.tensors[y].zero_point,
            "activation_min": lo,
            "activation_max": hi,
        }
    if code == ops.MEAN:
        axes = sorted(int(a) % 4 for a in r.const(int(op.inputs[1]), np.int32).reshape(-1))
        if axes != [1, 2] or len(r.tensors[x].shape) != 4:
            raise BundleFormatError(f"model.tflite op {index}: MEAN only over H and W")
        out = _requant(r, "global_average_pool", x, y)
        _, _, h, w = r.tensors[x].shape
        count = h * w
        fold = min(count.bit_length() - 1, 32, 31 + out["shift"])
        out["multiplier"] = (out["multiplier"] << fold) // count
        out["shift"] -= fold
        out["count"] = count
        return out
    if code == ops.QUANTIZE and r.tensors[x].shape == r.tensors[y].shape:
        if xi in r.order:
            r.order[yi] = r.order[xi]
        return _requant(r, "requantize", x, y)
    if code == ops.CONCATENATION:
        parts = [r.activation(int(i)) for i in op.inputs]
        rank = len(r.tensors[y].shape)
        axis = int(opts.axis) % rank
        if rank != 4 or axis != 3 or int(opts.fusedActivationFunction) != 0:
            raise BundleFormatError(f"model.tflite op {index}: only a plain channel concat")
        return {"op": "concat", "inputs": parts, "output": y, "axis": 1}
    if code in (ops.RESHAPE, ops.QUANTIZE):
        src = r.tensors[x].shape
        if len(r.tensors[y].shape) != 2:
            raise BundleFormatError(f"model.tflite op {index}: only reshapes to 2-D run here")
        order = nhwc_flat_order(src[1:]) if len(src) == 4 else r.order.get(xi)
        if order is not None:
            r.order[yi] = order
        return _requant(r, "reshape", x, y)  # equal scales: multiplier 2**30, shift 1 = copy
    if code in (ops.MAX_POOL_2D, ops.AVERAGE_POOL_2D):
        kh, kw = int(opts.filterHeight), int(opts.filterWidth)
        lo, hi = r.clamp(int(opts.fusedActivationFunction), y)
        kind = "max_pool2d" if code == ops.MAX_POOL_2D else "average_pool2d"
        return {
            "op": kind,
            "inputs": [x],
            "output": y,
            "kernel": [kh, kw],
            **_window(r, x, opts, kh, kw),
            "activation_min": lo,
            "activation_max": hi,
        }
    if code == ops.LEAKY_RELU:  # Prepare computes both real multipliers in float32
        try:
            params = leaky_relu_params(r.tensors[x].scale, r.tensors[y].scale, opts.alpha)
        except ValueError as exc:
            raise BundleFormatError(f"model.tflite op {index}: {exc}") from exc
        return {
            "op": "leaky_relu",
            "inputs": [x],
            "output": y,
            **params,
            "input_zero_point": r.tensors[x].zero_point,
            "output_zero_point": r.tensors[y].zero_point,
        }
    if code == ops.PAD:
        pads = r.const(int(op.inputs[1]), np.int32)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any() or len(op.inputs) > 2:
            raise BundleFormatError(f"model.tflite op {index}: PAD only over H and W")
        (pt, pb), (pl, pr) = pads[1], pads[2]
        return {
            "op": "pad",
            "inputs": [x],
            "output": y,
            "padding": [int(pt), int(pl), int(pb), int(pr)],
            "value": r.tensors[y].zero_point,
        }
    raise BundleFormatError(
        f"model.tflite op {index}: {names.get(code, code)} is not run by mcu-sim"
    )


def parse_tflite(data: bytes) -> McuGraph:
    """Parse and check ``model.tflite`` (one subgraph, int8 in and out) for the emulator."""
    s = _schema()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise BundleFormatError("model.tflite is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = s.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # a corrupt flatbuffer fails anywhere inside the generated code
        raise BundleFormatError(f"model.tflite is corrupt: {type(exc).__name__}") from exc
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise BundleFormatError("model.tflite must have exactly one subgraph")
    r = _Reader(model, s)
    sub = r.sub
    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise BundleFormatError("model.tflite must have one input and one output")
    first = r.activation(int(sub.inputs[0]))
    try:
        ops = [_convert(r, op, i) for i, op in enumerate(sub.operators or [])]
    except (IndexError, AttributeError, TypeError) as exc:
        raise BundleFormatError(f"model.tflite is malformed: {exc}") from exc
    last_index = int(sub.outputs[0])
    last = r.activation(last_index)
    if last_index in r.order:
        raise BundleFormatError("model.tflite: a flattened NHWC output is not supported")
    return check_graph(first, last, r.tensors, ops, r.params)

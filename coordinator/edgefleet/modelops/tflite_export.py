"""Write the MCU integer graph as a full-integer ``.tflite`` (TFLite Micro / LiteRT) file.

Decision: the ``.tflite`` is *written* from our integer graph (:mod:`edgefleet.modelops.mcu`,
itself read from onnxruntime's calibrated static-int8 QDQ graph) with the TFLite flatbuffer
schema's own generated object API (``schema_py_generated`` from the ``tflite-micro`` wheel:
``ModelT``, ``SubGraphT``, ``TensorT``, ``OperatorT``, ``QuantizationParametersT``,
``BufferT``; ``Pack`` then ``Finish`` with file identifier ``TFL3``). It is not converted with
``litert-torch``. Why: there is then ONE quantisation (ORT's calibration) feeding the ONNX
model, the ``.tflite`` and the C array with identical integer weights, biases, scales and zero
points, so agreement across runtimes is a real check of the kernels rather than of two
calibrations; and the coordinator avoids a 2 GB jax/transformers dependency.

Layout: TFLite is NHWC. 4-D activations become ``[1, H, W, C]``; conv weights are written
OHWI, depthwise weights ``[1, kh, kw, C*mult]``, fully-connected weights ``(out, in)`` with
their columns permuted so that the NHWC flatten order of the tensor that feeds them reads the
same elements as the NCHW flatten order ONNX used. 2-D inputs stay as they are. A runtime
feeding an NCHW batch to a 4-D input transposes it (:func:`edgefleet.mcu_format.to_nhwc`).

Ops: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MEAN (global average pooling, the
kernel TFLM runs for a reduction over H and W, requantising to the output scale in one
step), RESHAPE, QUANTIZE (int8 -> int8 requantisation where a reshape changes scale),
MAX_POOL_2D, AVERAGE_POOL_2D, LEAKY_RELU, CONCATENATION (inputs first requantised to
the output's parameters, which TFLM's int8 kernel requires) and PAD (ONNX paddings TFLite's SAME cannot express, padded
with the input zero point, i.e. real 0). Weights are per-channel symmetric int8
(``quantized_dimension`` = output channel), biases int32 at ``s_in * s_w[c]``, activations
int8 with onnxruntime's scale/zero point. ReLU/ReLU6 are clamps the int8 range already
expresses (onnxruntime folds them into the output zero point); a clamp tighter than that is
written as a fused RELU/RELU6 or refused. Anything else is refused with the op named
(:class:`TfliteExportError`), at build time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import (  # type: ignore[import-untyped]
    schema_py_generated as tfl,
)

from edgefleet.mcu_format import TFLITE_FILE, TFLITE_LAYOUT, nhwc_flat_order
from edgefleet.modelops.mcu import McuExport

__all__ = ["TFLITE_FILE", "TFLITE_LAYOUT", "TfliteExportError", "export_tflite"]

_OP = tfl.BuiltinOperator
#: The op versions the TFLite converter writes for int8 kernels (LiteRT resolves by version).
_VERSIONS = {
    _OP.CONV_2D: 3,
    _OP.DEPTHWISE_CONV_2D: 3,
    _OP.FULLY_CONNECTED: 4,
    _OP.ADD: 2,
    _OP.MEAN: 2,
    _OP.RESHAPE: 1,
    _OP.QUANTIZE: 2,
    _OP.MAX_POOL_2D: 2,
    _OP.AVERAGE_POOL_2D: 2,
    _OP.PAD: 2,
    _OP.LEAKY_RELU: 2,
    _OP.CONCATENATION: 2,
}
_BUFFER_ALIGN = 16  # TFLM reads weights in place; keep every constant 16-byte aligned


class TfliteExportError(ValueError):
    """The integer graph uses an op or pattern a full-integer .tflite cannot express here."""


class _AlignedBufferT(tfl.BufferT):  # type: ignore[misc]
    """A BufferT whose data vector starts on a 16-byte boundary (the schema's force_align)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None:
            raw = bytes(self.data)
            builder.StartVector(1, len(raw), _BUFFER_ALIGN)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        tfl.BufferStart(builder)
        if data is not None:
            tfl.BufferAddData(builder, data)
        return int(tfl.BufferEnd(builder))


def _same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """(before, after) padding TFLite's SAME applies (TFLM ComputePaddingHeightWidth)."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class _Writer:
    """Accumulates tensors, buffers and operators of one subgraph."""

    def __init__(self, graph: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> None:
        self.graph = graph
        self.params = params
        self.info: Mapping[str, Mapping[str, Any]] = graph["tensors"]
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [tfl.BufferT()]  # buffer 0: the schema's empty sentinel
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.index: dict[str, int] = {}
        #: NCHW flat index of each element of a 2-D tensor, in the .tflite flatten order
        self.order: dict[str, list[int]] = {}

    # -- tensors ------------------------------------------------------------------------
    def _add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        ttype: int,
        quant: Any = None,
        data: np.ndarray | None = None,
    ) -> int:
        t = tfl.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.quantization = quant
        t.buffer = 0
        if data is not None:
            buf = _AlignedBufferT()
            buf.data = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    @staticmethod
    def _quant(scale: Sequence[float], zero_point: Sequence[int], dim: int = 0) -> Any:
        q = tfl.QuantizationParametersT()
        q.scale = [float(s) for s in scale]
        q.zeroPoint = [int(z) for z in zero_point]
        q.quantizedDimension = dim
        return q

    def activation(self, name: str) -> int:
        """The int8 tensor for activation ``name`` (NHWC when 4-D, batch 1)."""
        if name not in self.index:
            info = self.info[name]
            shape = [1, *[int(d) for d in info["shape"][1:]]]
            if len(shape) == 4:
                shape = [1, shape[2], shape[3], shape[1]]
                self.order[name] = nhwc_flat_order(info["shape"][1:])
            elif len(shape) != 2:
                raise TfliteExportError(f"tensor {name!r}: rank {len(shape)} is not supported")
            quant = self._quant([info["scale"]], [info["zero_point"]])
            self.index[name] = self._add_tensor(name, shape, tfl.TensorType.INT8, quant)
        return self.index[name]

    def const_i32(self, name: str, values: Sequence[int]) -> int:
        arr = np.asarray(values, dtype=np.int32)
        return self._add_tensor(name, list(arr.shape), tfl.TensorType.INT32, data=arr)

    def scratch_like(self, name: str, src: str, shape: Sequence[int]) -> int:
        info = self.info[src]
        quant = self._quant([info["scale"]], [info["zero_point"]])
        return self._add_tensor(name, shape, tfl.TensorType.INT8, quant)

    # -- operators ----------------------------------------------------------------------
    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options_type: int = 0,
        options: Any = None,
    ) -> None:
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        o = tfl.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def finish(self, description: str) -> bytes:
        sub = tfl.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = [self.index[self.graph["input"]]]
        sub.outputs = [self.index[self.graph["output"]]]
        sub.operators = self.operators
        sub.name = "main"
        model = tfl.ModelT()
        model.version = 3
        model.description = description
        codes: list[Any] = [None] * len(self.opcodes)
        for code, i in self.opcodes.items():
            oc = tfl.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = _VERSIONS.get(code, 1)
            codes[i] = oc
        model.operatorCodes = codes
        model.subgraphs = [sub]
        model.buffers = self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _fused(op: Mapping[str, Any], info: Mapping[str, Any]) -> int:
    """The fused activation whose TFLM clamp equals the integer graph's clamp."""
    lo, hi = int(op.get("activation_min", -128)), int(op.get("activation_max", 127))
    zp, scale = int(info["zero_point"]), float(info["scale"])
    if lo <= -128 and hi >= 127:
        return int(tfl.ActivationFunctionType.NONE)
    if lo == max(-128, zp) and hi >= 127:
        return int(tfl.ActivationFunctionType.RELU)
    if lo == max(-128, zp) and hi == min(127, zp + round(6.0 / scale)):
        return int(tfl.ActivationFunctionType.RELU6)
    raise TfliteExportError(f"{op['op']}: clamp [{lo}, {hi}] is no TFLite fused activation")


def _padding(
    w: _Writer, op: Mapping[str, Any], x: str, kh: int, kw: int, pad_ok: bool
) -> tuple[int, int]:
    """(input tensor index, TFLite padding): SAME/VALID, or an explicit PAD op then VALID."""
    pt, pl, pb, pr = (int(p) for p in op.get("padding", [0, 0, 0, 0]))
    sh, sw = (int(s) for s in op.get("stride", [1, 1]))
    _, c, h, wd = (int(d) for d in w.info[x]["shape"])
    xi = w.activation(x)
    if not any((pt, pl, pb, pr)):
        return xi, int(tfl.Padding.VALID)
    out_h = (h + pt + pb - kh) // sh + 1
    out_w = (wd + pl + pr - kw) // sw + 1
    same = (_same_padding(h, kh, sh), _same_padding(wd, kw, sw))
    if same == ((pt, pb), (pl, pr)) and (out_h, out_w) == (-(-h // sh), -(-wd // sw)):
        return xi, int(tfl.Padding.SAME)
    if not pad_ok:
        raise TfliteExportError(f"{op['op']}: padding {[pt, pl, pb, pr]} is neither SAME nor VALID")
    padded = w.scratch_like(f"{op['output']}.padded", x, [1, h + pt + pb, wd + pl + pr, c])
    pads = w._add_tensor(
        f"{op['output']}.paddings",
        [4, 2],
        tfl.TensorType.INT32,
        data=np.array([[0, 0], [pt, pb], [pl, pr], [0, 0]], dtype=np.int32),
    )
    w.op(_OP.PAD, [xi, pads], [padded], tfl.BuiltinOptions.PadOptions, tfl.PadOptionsT())
    return padded, int(tfl.Padding.VALID)


def _dense(w: _Writer, op: Mapping[str, Any]) -> None:
    x, y = op["inputs"][0], op["output"]
    weight = w.params[op["weight"]]
    bias = w.params[op["bias"]]
    scales = [float(s) for s in op["weight_scale"]]
    s_in = float(w.info[x]["scale"])
    bias_q = w._quant([s_in * s for s in scales], [0] * len(scales))
    fused = _fused(op, w.info[y])
    kind = op["op"]
    if kind == "fully_connected":
        xi = w.activation(x)
        order = w.order.get(x)
        wt = weight if order is None else weight[:, order]
        wq = w._quant(scales, [0] * len(scales), 0)
        wi = w._add_tensor(op["weight"], list(wt.shape), tfl.TensorType.INT8, wq, wt)
        bi = w._add_tensor(op["bias"], [len(bias)], tfl.TensorType.INT32, bias_q, bias)
        opts = tfl.FullyConnectedOptionsT()
        opts.fusedActivationFunction = fused
        opts.keepNumDims = False
        w.op(
            _OP.FULLY_CONNECTED,
            [xi, wi, bi],
            [w.activation(y)],
            tfl.BuiltinOptions.FullyConnectedOptions,
            opts,
        )
        return
    o, _, kh, kw = (int(d) for d in weight.shape)
    xi, padding = _padding(w, op, x, kh, kw, pad_ok=True)
    sh, sw = (int(s) for s in op["stride"])
    cin = int(w.info[x]["shape"][1])
    if kind == "depthwise_conv2d":
        wt = weight.reshape(o, kh, kw).transpose(1, 2, 0)[None]  # [1, kh, kw, C*mult]
        wq = w._quant(scales, [0] * o, 3)
        dw = tfl.DepthwiseConv2DOptionsT()
        dw.padding, dw.strideH, dw.strideW = padding, sh, sw
        dw.depthMultiplier = o // cin
        dw.fusedActivationFunction = fused
        dw.dilationHFactor = dw.dilationWFactor = 1
        code, otype, opts = _OP.DEPTHWISE_CONV_2D, tfl.BuiltinOptions.DepthwiseConv2DOptions, dw
    else:
        if int(op.get("groups", 1)) != 1:
            raise TfliteExportError("conv2d: grouped convolution is not supported by TFLite")
        wt = weight.transpose(0, 2, 3, 1)  # OHWI
        wq = w._quant(scales, [0] * o, 0)
        cv = tfl.Conv2DOptionsT()
        cv.padding, cv.strideH, cv.strideW = padding, sh, sw
        cv.fusedActivationFunction = fused
        cv.dilationHFactor = cv.dilationWFactor = 1
        code, otype, opts = _OP.CONV_2D, tfl.BuiltinOptions.Conv2DOptions, cv
    wi = w._add_tensor(op["weight"], list(wt.shape), tfl.TensorType.INT8, wq, wt)
    bi = w._add_tensor(op["bias"], [len(bias)], tfl.TensorType.INT32, bias_q, bias)
    w.op(code, [xi, wi, bi], [w.activation(y)], otype, opts)


def _same_qparams(w: _Writer, op: Mapping[str, Any]) -> None:
    a, b = w.info[op["inputs"][0]], w.info[op["output"]]
    if (a["scale"], a["zero_point"]) != (b["scale"], b["zero_point"]):
        raise TfliteExportError(f"{op['op']}: input and output quantisation must be equal")


def _pool(w: _Writer, op: Mapping[str, Any]) -> None:
    _same_qparams(w, op)
    kh, kw = (int(k) for k in op["kernel"])
    x = op["inputs"][0]
    xi, padding = _padding(w, op, x, kh, kw, pad_ok=False)
    opts = tfl.Pool2DOptionsT()
    opts.padding = padding
    opts.strideH, opts.strideW = (int(s) for s in op.get("stride", [kh, kw]))
    opts.filterHeight, opts.filterWidth = kh, kw
    opts.fusedActivationFunction = _fused(op, w.info[op["output"]])
    code = _OP.MAX_POOL_2D if op["op"] == "max_pool2d" else _OP.AVERAGE_POOL_2D
    w.op(code, [xi], [w.activation(op["output"])], tfl.BuiltinOptions.Pool2DOptions, opts)


def _mean(w: _Writer, op: Mapping[str, Any]) -> None:
    x, y = op["inputs"][0], op["output"]
    if len(w.info[x]["shape"]) != 4:
        raise TfliteExportError("global_average_pool: the input must be 4-D")
    axes = w.const_i32(f"{y}.axes", [1, 2])
    opts = tfl.ReducerOptionsT()
    opts.keepDims = len(w.info[y]["shape"]) == 4
    w.op(
        _OP.MEAN,
        [w.activation(x), axes],
        [w.activation(y)],
        tfl.BuiltinOptions.ReducerOptions,
        opts,
    )


def _reshape(w: _Writer, op: Mapping[str, Any]) -> None:
    x, y = op["inputs"][0], op["output"]
    xi = w.activation(x)
    out_shape = [1, *[int(d) for d in w.info[y]["shape"][1:]]]
    if len(out_shape) != 2:
        raise TfliteExportError("reshape: only a flatten to 2-D is supported")
    order = w.order.get(x)
    a, b = w.info[x], w.info[y]
    same = (a["scale"], a["zero_point"]) == (b["scale"], b["zero_point"])
    target = w.scratch_like(f"{y}.flat", x, out_shape) if not same else w.activation(y)
    shape = w.const_i32(f"{y}.shape", out_shape)
    opts = tfl.ReshapeOptionsT()
    opts.newShape = out_shape
    w.op(_OP.RESHAPE, [xi, shape], [target], tfl.BuiltinOptions.ReshapeOptions, opts)
    if not same:  # int8 -> int8 requantisation, TFLM's QUANTIZE (Requantize) kernel
        w.op(_OP.QUANTIZE, [target], [w.activation(y)])
    if order is not None:
        w.order[y] = order


def _add(w: _Writer, op: Mapping[str, Any]) -> None:
    a, b = op["inputs"]
    if w.info[a]["shape"] != w.info[b]["shape"]:
        raise TfliteExportError("add: broadcasting is not supported")
    opts = tfl.AddOptionsT()
    opts.fusedActivationFunction = _fused(op, w.info[op["output"]])
    w.op(
        _OP.ADD,
        [w.activation(a), w.activation(b)],
        [w.activation(op["output"])],
        tfl.BuiltinOptions.AddOptions,
        opts,
    )


def _leaky_relu(w: _Writer, op: Mapping[str, Any]) -> None:
    opts = tfl.LeakyReluOptionsT()
    opts.alpha = float(op["alpha"])
    w.op(
        _OP.LEAKY_RELU,
        [w.activation(op["inputs"][0])],
        [w.activation(op["output"])],
        tfl.BuiltinOptions.LeakyReluOptions,
        opts,
    )


def _requantize(w: _Writer, op: Mapping[str, Any]) -> None:
    x, y = op["inputs"][0], op["output"]
    xi = w.activation(x)
    w.op(_OP.QUANTIZE, [xi], [w.activation(y)])  # int8 -> int8: TFLM's Requantize
    if x in w.order:
        w.order[y] = w.order[x]


def _concat(w: _Writer, op: Mapping[str, Any]) -> None:
    rank = len(w.info[op["output"]]["shape"])
    if rank != 4 or int(op["axis"]) != 1:
        raise TfliteExportError("concat: only a channel concatenation of 4-D tensors")
    opts = tfl.ConcatenationOptionsT()
    opts.axis = 3  # NCHW channels are NHWC's last axis
    opts.fusedActivationFunction = int(tfl.ActivationFunctionType.NONE)
    w.op(
        _OP.CONCATENATION,
        [w.activation(x) for x in op["inputs"]],
        [w.activation(op["output"])],
        tfl.BuiltinOptions.ConcatenationOptions,
        opts,
    )


_WRITERS = {
    "conv2d": _dense,
    "depthwise_conv2d": _dense,
    "fully_connected": _dense,
    "add": _add,
    "global_average_pool": _mean,
    "reshape": _reshape,
    "max_pool2d": _pool,
    "average_pool2d": _pool,
    "leaky_relu": _leaky_relu,
    "requantize": _requantize,
    "concat": _concat,
}


def export_tflite(mcu: McuExport, description: str = "edgefleet int8") -> bytes:
    """The integer graph as ``.tflite`` bytes (flatbuffer, identifier ``TFL3``)."""
    w = _Writer(mcu.graph, mcu.tensors)
    w.activation(mcu.graph["input"])
    for op in mcu.graph["ops"]:
        writer = _WRITERS.get(op["op"])
        if writer is None:
            raise TfliteExportError(f"op {op['op']} cannot be written to a full-integer .tflite")
        writer(w, op)
    if mcu.graph["output"] not in w.index:
        raise TfliteExportError("the graph output is not produced by any op")
    return w.finish(description)

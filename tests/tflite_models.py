"""Small full-integer ``.tflite`` models written here with the TFLite schema's object API.

Why the tests make their own: the runtime and export tests need models whose every byte they
control (a float input where int8 is required, a layout, an arena of a known size, a digits
classifier whose float reference is exact numpy), independent of the variant builder. Written
as TFLite's own converter writes them: ``ModelT`` with buffers (buffer 0 empty), one subgraph,
per-tensor int8 activations, int32 bias at ``s_in * s_w``, file identifier ``TFL3``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from tflite_micro.tensorflow.lite.micro.python import (  # type: ignore[import-untyped]
    schema_py_generated as tfl,
)

__all__ = [
    "FLOAT32",
    "BuiltInt8",
    "LinearInt8",
    "built_int8_digits",
    "fc_model",
    "linear_digits_model",
    "repack",
]

FLOAT32: int = tfl.TensorType.FLOAT32


def _quant(scale: float, zero_point: int) -> Any:
    q = tfl.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(scale)], [int(zero_point)], 0
    return q


def _tensor(name: str, shape: Sequence[int], ttype: int, buffer: int, quant: Any) -> Any:
    t = tfl.TensorT()
    t.name, t.shape, t.type, t.buffer, t.quantization = (
        name.encode(),
        list(shape),
        ttype,
        buffer,
        quant,
    )
    return t


def _opcode(code: int, version: int) -> Any:
    oc = tfl.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    return oc


def fc_model(
    weights: npt.NDArray[np.int8],
    bias: npt.NDArray[np.int32],
    *,
    in_q: tuple[float, int],
    w_scale: float,
    out_q: tuple[float, int],
    input_shape: Sequence[int] | None = None,
    input_type: int = tfl.TensorType.INT8,
) -> bytes:
    """``[RESHAPE ->] FULLY_CONNECTED``: int8 in, int8 logits out.

    ``input_shape`` (e.g. NHWC ``[1, 8, 8, 1]``) adds a RESHAPE to ``[1, K]`` in front, as a
    converter writes a flatten. ``input_type`` lets a test write a float input.
    """
    n_out, k = weights.shape
    model = tfl.ModelT()
    model.version, model.description = 3, b"edgefleet test model"
    buffers = [tfl.BufferT() for _ in range(6)]
    buffers[1].data = list(weights.astype(np.int8).tobytes())
    buffers[2].data = list(bias.astype(np.int32).tobytes())
    buffers[3].data = list(np.array([1, k], np.int32).tobytes())
    model.buffers = buffers
    sg = tfl.SubGraphT()
    sg.name = b"main"
    in_scale = in_q[0]
    tensors = [
        _tensor("flat", [1, k], tfl.TensorType.INT8, 0, _quant(*in_q)),
        _tensor("weights", [n_out, k], tfl.TensorType.INT8, 1, _quant(w_scale, 0)),
        _tensor("bias", [n_out], tfl.TensorType.INT32, 2, _quant(in_scale * w_scale, 0)),
        _tensor("logits", [1, n_out], tfl.TensorType.INT8, 0, _quant(*out_q)),
    ]
    fc = tfl.OperatorT()
    fc.opcodeIndex, fc.inputs, fc.outputs = 0, [0, 1, 2], [3]
    fc.builtinOptionsType = tfl.BuiltinOptions.FullyConnectedOptions
    fc.builtinOptions = tfl.FullyConnectedOptionsT()
    model.operatorCodes = [_opcode(tfl.BuiltinOperator.FULLY_CONNECTED, 4)]
    operators = [fc]
    sg.inputs = [0]
    if input_shape is not None or input_type != tfl.TensorType.INT8:
        shape = list(input_shape) if input_shape is not None else [1, k]
        tensors.append(_tensor("input", shape, input_type, 0, _quant(*in_q)))
        tensors.append(_tensor("shape", [2], tfl.TensorType.INT32, 3, None))
        reshape = tfl.OperatorT()
        reshape.opcodeIndex, reshape.inputs, reshape.outputs = 1, [4, 5], [0]
        options = tfl.ReshapeOptionsT()
        options.newShape = [1, k]
        reshape.builtinOptionsType, reshape.builtinOptions = (
            tfl.BuiltinOptions.ReshapeOptions,
            options,
        )
        model.operatorCodes.append(_opcode(tfl.BuiltinOperator.RESHAPE, 1))
        operators.insert(0, reshape)
        sg.inputs = [4]
    sg.tensors, sg.operators, sg.outputs = tensors, operators, [3]
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@dataclass(frozen=True)
class LinearInt8:
    """A linear digits classifier, its float weights and its int8 ``.tflite``."""

    tflite: bytes
    weight: npt.NDArray[np.float64]  # (classes, 64), NCHW flatten order
    bias: npt.NDArray[np.float64]


def linear_digits_model(
    x_train: npt.NDArray[np.float32], y_train: npt.NDArray[np.int64], classes: int
) -> LinearInt8:
    """Ridge regression on one-hot labels, quantised per tensor; input NHWC ``[1, 8, 8, 1]``.

    Digits are 1 x 8 x 8, so NHWC and NCHW flatten orders coincide and the weights need no
    column permutation; the RESHAPE still exercises a 4-D NHWC input.
    """
    x = x_train.reshape(len(x_train), -1).astype(np.float64)
    xa = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(classes)[y_train]
    sol = np.linalg.solve(xa.T @ xa + 1e-1 * np.eye(xa.shape[1]), xa.T @ onehot)
    w, b = sol[:-1].T, sol[-1]
    in_scale, in_zp = 1.0 / 255.0, -128  # inputs in [0, 1]
    w_scale = float(np.abs(w).max() / 127.0)
    wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    bq = np.round(b / (in_scale * w_scale)).astype(np.int32)
    logits = xa @ sol
    lo, hi = float(min(logits.min(), 0.0)), float(max(logits.max(), 0.0))
    out_scale = (hi - lo) / 255.0
    out_zp = int(np.clip(round(-128 - lo / out_scale), -128, 127))
    model = fc_model(
        wq,
        bq,
        in_q=(in_scale, in_zp),
        w_scale=w_scale,
        out_q=(out_scale, out_zp),
        input_shape=[1, 8, 8, 1],
    )
    return LinearInt8(model, np.asarray(w, np.float64), np.asarray(b, np.float64))


@dataclass(frozen=True)
class BuiltInt8:
    """A variant store holding a trained DS-CNN on digits and its static-int8 variant."""

    data_dir: Path
    model: str
    int8: str  # variant id
    base: str


_BUILT: dict[str, BuiltInt8] = {}


def built_int8_digits() -> BuiltInt8:
    """Built once per test session (training is most of a minute on 2 shared cores) and
    shared by the runtime and export tests; removed at exit."""
    if "digits" not in _BUILT:
        from edgefleet.modelops.build import BuildOptions, build_variants, register_model
        from edgefleet.modelops.measure import LatencyConfig
        from edgefleet.variant_store import VariantStore
        from edgefleet.zoo import ArchitectureSpec

        root = Path(tempfile.mkdtemp(prefix="edgefleet-tflite-"))
        atexit.register(shutil.rmtree, root, True)
        store = VariantStore(root)
        options = BuildOptions(latency=LatencyConfig(warmup=1, runs=3))
        spec = ArchitectureSpec.zoo("ds-cnn", width=0.5)
        entry = register_model(store, "digits", spec, "digits", epochs=4, options=options)
        (int8,) = build_variants(store, "digits", ["int8-static"], options=options)
        _BUILT["digits"] = BuiltInt8(root, "digits", int8, entry.base)
    return _BUILT["digits"]


def repack(model: bytes, edit: Any) -> bytes:
    """``model`` with ``edit(ModelT)`` applied: how a test breaks one field of a valid file."""
    m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(model, 0))
    edit(m)
    builder = flatbuffers.Builder(4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

"""Precision steps: fp16 and int8 graphs built with onnxruntime's own tooling.

* ``fp16``: onnxruntime's float16 converter, keeping float32 graph inputs/outputs so a
  device feeds the same tensors as for the base model.
* ``int8-dynamic``: ``quantize_dynamic`` - per-channel int8 weights, activations quantised
  at run time (no calibration; a float runtime is still needed).
* ``int8-static``: ``quantize_static`` in QDQ format - per-channel symmetric int8 weights,
  per-tensor asymmetric int8 activations whose ranges are calibrated on training images
  (never the test split). This is the TFLite int8 scheme, so the MCU export can read the
  scales straight from the graph.

What onnxruntime lacks, and we add: :func:`drop_zero_zero_points` removes zero-point
tensors that are all zero (symmetric weights and int32 biases), which the ONNX spec makes
optional; on small nets they are a measurable share of the weight bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.modelops.onnx_export import INPUT_NAME, strip_metadata

__all__ = ["drop_zero_zero_points", "to_fp16", "to_int8_dynamic", "to_int8_static"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import (  # type: ignore[import-untyped, unused-ignore]
        convert_float_to_float16,
    )

    # The converter edits its argument in place; the caller's float graph must survive.
    converted = convert_float_to_float16(_copy(model), keep_io_types=True, disable_shape_infer=True)
    return strip_metadata(converted)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def to_int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import (  # type: ignore[import-untyped, unused-ignore]
        QuantType,
        quantize_dynamic,
    )
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped, unused-ignore]
        quant_pre_process,
    )

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
        return strip_metadata(onnx.load(str(out)))


class _Calibration:
    """Feeds calibration images one at a time (batch 1, as the device will run)."""

    def __init__(self, images: np.ndarray) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = (
            {INPUT_NAME: images[i : i + 1]} for i in range(len(images))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._it


def to_int8_static(
    model: onnx.ModelProto, calibration: np.ndarray, method: str = "minmax"
) -> onnx.ModelProto:
    """Static int8 PTQ (QDQ) with per-channel weights and calibrated activation ranges."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped, unused-ignore]
        quant_pre_process,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    reader = _Calibration(calibration.astype(np.float32))
    CalibrationDataReader.register(_Calibration)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        quantized = onnx.load(str(out))
    return drop_zero_zero_points(strip_metadata(quantized))


def drop_zero_zero_points(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop all-zero zero-point inputs of DequantizeLinear on int8/int32 constants.

    Only for constant (weight / bias) dequantisation: an omitted zero point means 0, and the
    dequantised type is still given by the scale, so the graph computes the same thing.
    """
    inits = {t.name: t for t in model.graph.initializer}
    dropped: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        x, zp = node.input[0], node.input[2]
        if x not in inits or zp not in inits:
            continue
        zp_arr = numpy_helper.to_array(inits[zp])
        if zp_arr.dtype in (np.int8, np.int32) and not zp_arr.any():
            del node.input[2]
            dropped.add(zp)
    still_used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name not in dropped or t.name in still_used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model

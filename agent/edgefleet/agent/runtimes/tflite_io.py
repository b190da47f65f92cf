"""What the ``tflm`` and ``litert`` runtimes share: how a float request meets an int8 ``.tflite``.

Why a module of its own: both interpreters load the same full-integer ``model.tflite`` and must
turn the manifest's float input into exactly the same int8 tensor (else TFLM on an MCU and
LiteRT on a Pi would disagree on identical requests), and read the logits back the same way.

* **Quantisation** is the one every int8 runtime here uses (the ONNX graph's ``QuantizeLinear``,
  mcu-sim): float32 division by the input scale, round half to even, add the zero point,
  saturate to [-128, 127]. A NaN has one defined value, the real 0 (the zero point): a sensor
  glitch then reads as silence rather than as whatever an undefined cast gives. Infinities
  saturate.
* **Layout**: the manifest's input is what the float model takes (NCHW for images and MFCC
  maps); a ``.tflite`` converted for TFLite kernels takes NHWC. The entry's ``layout`` says which
  (``"NHWC"`` or ``"NCHW"``); without it, a 4-D input whose ``.tflite`` shape is the NHWC
  permutation of the manifest's is transposed, and any other input of equal size is reshaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes.base import BundleFormatError

__all__ = ["TensorQuant", "input_mapper", "quant_from_details"]


@dataclass(frozen=True)
class TensorQuant:
    """One int8 tensor's per-tensor quantisation: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        f = np.nan_to_num(np.asarray(x, np.float32), nan=0.0, posinf=np.inf, neginf=-np.inf)
        with np.errstate(over="ignore", invalid="ignore"):
            q = np.rint(f / np.float32(self.scale)) + np.float32(self.zero_point)
        out: npt.NDArray[np.int8] = np.clip(q, -128, 127).astype(np.int8)
        return out

    def dequantize(self, q: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        real = (q.astype(np.int32) - np.int32(self.zero_point)).astype(np.float32)
        out: np.ndarray[Any, np.dtype[np.float32]] = real * np.float32(self.scale)
        return out


def quant_from_details(details: Mapping[str, Any], what: str) -> TensorQuant:
    """The int8 per-tensor quantisation of an interpreter's tensor details, or a refusal."""
    dtype = np.dtype(details["dtype"])
    if dtype != np.int8:
        raise BundleFormatError(
            f"model.tflite {what} is {dtype}, expected int8 (a full-integer model)"
        )
    params = details.get("quantization_parameters", {})
    scales = np.asarray(params.get("scales", []), np.float64).ravel()
    zeros = np.asarray(params.get("zero_points", []), np.int64).ravel()
    if scales.size != 1 or zeros.size != 1 or not np.isfinite(scales[0]) or scales[0] <= 0:
        raise BundleFormatError(
            f"model.tflite {what} needs one positive scale and zero point "
            f"(has {scales.size} scales, {zeros.size} zero points)"
        )
    return TensorQuant(float(scales[0]), int(zeros[0]))


def input_mapper(
    manifest_shape: Sequence[int], model_shape: Sequence[int], layout: str | None
) -> tuple[int, ...] | None:
    """How one manifest-shaped sample becomes the model's input: an axis permutation of the
    sample (then a reshape to ``model_shape``), ``None`` for a plain reshape; refuses a size
    mismatch."""
    want = [int(d) for d in manifest_shape]
    have = [int(d) for d in model_shape]
    if int(np.prod(want[1:])) != int(np.prod(have[1:])) or (have and have[0] != 1):
        raise BundleFormatError(
            f"model.tflite input {have} does not hold the variant's input {want} at batch 1"
        )
    if layout not in (None, "NCHW", "NHWC"):
        raise BundleFormatError(f"unknown tflite input layout {layout!r} (NHWC or NCHW)")
    if len(want) == 3 and len(have) == 4 and layout != "NCHW":
        # a (C, L) signal window: the zoo views it as (C, 1, L), whose NHWC form is (1, L, C),
        # so the sample's channels move last before the reshape (a plain reshape would
        # interleave the channels: chance accuracy, not an error)
        n, c, length = want
        return (0, 2, 1) if have in ([n, 1, length, c], [n, length, 1, c]) and c > 1 else None
    if len(want) != 4 or len(have) != 4 or layout == "NCHW":
        return None
    n, c, h, w = want
    nhwc = [n, h, w, c]
    if layout == "NHWC" and have != nhwc:
        raise BundleFormatError(f"model.tflite input {have} is not the NHWC form of {want}")
    # Without a layout, the shape decides (C == H == W is taken as TFLite's native NHWC).
    return (0, 2, 3, 1) if have == nhwc else None

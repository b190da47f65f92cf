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
* **Serving** (:class:`Int8Interpreter`): quantise the batch, invoke once per sample (the
  converted model has batch 1 baked into its reshapes), stack the int8 outputs, dequantise;
  an interpreter failure is an ``InferenceError`` and the variant stays loaded. Each runtime
  supplies only its interpreter's one-sample call.
* **Flash** (:func:`mcu_flash`): what a microcontroller stores for the model, the ``.tflite``
  plus the code of the kernels its op list links (:mod:`edgefleet.mcu_flash`, the build's own
  figure), for the ``tflm`` and ``mcu-sim`` budget checks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes.base import BundleFormatError, InferenceError, Runtime
from edgefleet.bundle import Bundle
from edgefleet.mcu_flash import FlashImage, flash_image

__all__ = [
    "Int8Interpreter",
    "Int8Io",
    "TensorQuant",
    "input_mapper",
    "mcu_flash",
    "quant_from_details",
    "tflite_ops",
]


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


@dataclass(frozen=True)
class Int8Io:
    """How requests meet one loaded ``.tflite``: the input's quantisation, layout mapping and
    shape, and the output's quantisation."""

    input: TensorQuant
    output: TensorQuant
    perm: tuple[int, ...] | None
    shape: tuple[int, ...]

    @classmethod
    def from_details(
        cls,
        bundle: Bundle,
        entry: Mapping[str, Any],
        in_details: Mapping[str, Any],
        out_details: Mapping[str, Any],
    ) -> Int8Io:
        """From an interpreter's input/output details and the bundle's manifest input."""
        shape = tuple(int(d) for d in in_details["shape"])
        layout = entry.get("layout")
        perm = input_mapper(
            bundle.manifest.get("input", {}).get("shape", []),
            shape,
            None if layout is None else str(layout),
        )
        return cls(
            quant_from_details(in_details, "input"),
            quant_from_details(out_details, "output"),
            perm,
            shape,
        )

    def quantize(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """The batch as the model's int8 input tensors, ``[N, *model input shape[1:]]``."""
        x = batch if self.perm is None else np.transpose(batch, self.perm)
        return self.input.quantize(x).reshape(batch.shape[0], *self.shape[1:])


class Int8Interpreter(Runtime):
    """A runtime serving a full-integer ``.tflite`` through an interpreter, one sample per
    invoke. Subclasses set ``io`` in ``_load`` and implement :meth:`invoke_one`."""

    #: what the interpreter raises when an invoke fails (the variant stays loaded)
    invoke_errors: ClassVar[tuple[type[Exception], ...]] = (RuntimeError,)
    #: how the interpreter is named in an invoke failure
    interpreter_name: ClassVar[str] = "the interpreter"

    io: Int8Io | None = None

    @abstractmethod
    def invoke_one(self, row: npt.NDArray[np.int8]) -> npt.NDArray[Any]:
        """The int8 output of one batch-1 input tensor."""

    def _io(self) -> Int8Io:
        if self.io is None:
            raise InferenceError(f"{self.name}: no variant loaded")
        return self.io

    def quantize_input(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """The batch as the model's int8 input tensors, ``[N, *model input shape[1:]]``."""
        return self._io().quantize(batch)

    def run_int8(self, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """The interpreter's int8 output for each int8 input row."""
        return np.stack([np.array(self.invoke_one(row[None]), np.int8).reshape(-1) for row in q])

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        try:
            q = self.run_int8(self.quantize_input(batch))
        except self.invoke_errors as exc:
            raise InferenceError(f"{self.interpreter_name} invoke failed: {exc}") from exc
        return self._io().output.dequantize(q)

    def unload(self) -> None:
        self.io = None
        super().unload()


def tflite_ops(model: bytes) -> tuple[str, ...]:
    """The builtin op names a ``.tflite``'s operators use, in first-use order, each once (what a
    firmware registers with its op resolver and links). Read with the TFLite schema of the
    ``tflite-micro`` wheel; an unreadable file is one ``BundleFormatError`` line."""
    from tflite_micro.tensorflow.lite.micro.python import (  # type: ignore[import-untyped]
        schema_py_generated as tfl,
    )

    if len(model) < 8 or model[4:8] != b"TFL3":
        raise BundleFormatError("cannot load model.tflite: not a TFLite flatbuffer")
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    try:
        m = tfl.Model.GetRootAs(model, 0)
        codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
        kinds = [max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) for c in codes]
        sub = m.Subgraphs(0)
        used = [kinds[sub.Operators(i).OpcodeIndex()] for i in range(sub.OperatorsLength())]
    except Exception as exc:  # a corrupt flatbuffer fails anywhere inside the generated code
        raise BundleFormatError(f"cannot load model.tflite: {type(exc).__name__}") from exc
    return tuple(dict.fromkeys(names.get(k, "CUSTOM") for k in used))


def mcu_flash(bundle: Bundle, model_bytes: int, ops: Sequence[str]) -> FlashImage:
    """A microcontroller's flash for this bundle (:func:`edgefleet.mcu_flash.flash_image`): the
    model, the TFLM code for ``ops`` and, when the device computes the bundle's frontend
    (``input.frontend``), that frontend's code."""
    spec = bundle.manifest.get("input")
    frontend = spec.get("frontend") if isinstance(spec, Mapping) else None
    kind = frontend.get("kind") if isinstance(frontend, Mapping) else None
    return flash_image(model_bytes, ops, None if kind is None else str(kind))

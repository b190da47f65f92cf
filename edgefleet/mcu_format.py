"""The MCU integer-graph format: the few constants both the exporter and the emulator must share.

The coordinator writes ``mcu.json`` + ``mcu.safetensors`` (see ``edgefleet.modelops.mcu``) and,
from the same integer graph, the full-integer ``model.tflite`` (``TFLITE_FILE``, NHWC; see
``edgefleet.modelops.tflite_export``) that TFLite Micro, LiteRT and the device's ``mcu-sim``
runtime execute (mcu-sim falls back to the JSON graph for older bundles). The agent must never import coordinator code, so
the spec constants live here, in the small shared package, and nothing else does: this module
imports only the standard library.

Graph layout (``mcu.json``)::

    {"format": "edgefleet-mcu", "version": 1, "layout": "NCHW",
     "input": <tensor>, "output": <tensor>,
     "tensors": {<name>: {"shape": [...], "scale": float, "zero_point": int, "dtype": "int8"}},
     "ops": [{"op": <kind>, "inputs": [<tensor>...], "output": <tensor>, ...}, ...]}

Requantisation follows the TFLite int8 spec: ``acc * multiplier * 2**(shift - 31)`` with a Q31
``multiplier``, a saturating rounding doubling high multiply and a rounding (half away from zero)
right shift. Per-channel parameters are tensors in ``mcu.safetensors`` (weights int8, biases
int32, multipliers int32, shifts int8); per-tensor ones are plain integers in the op.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

__all__ = [
    "ACTIVATION_DTYPE",
    "EXPORTED_OPS",
    "LAYOUT",
    "MCU_FORMAT",
    "MCU_FORMAT_VERSION",
    "Q31_SHIFT",
    "SUPPORTED_OPS",
    "TFLITE_FILE",
    "TFLITE_LAYOUT",
    "leaky_relu_params",
    "nhwc_flat_order",
    "quantize_multiplier",
]

#: The full-integer TFLite model in every int8 (static) bundle: what TFLM, LiteRT and mcu-sim run.
TFLITE_FILE = "model.tflite"
#: 4-D tensors in ``model.tflite`` are NHWC (TFLite's convention); a runtime feeding the
#: manifest's NCHW input transposes it with ``batch.transpose(0, 2, 3, 1)``. 2-D inputs are
#: fed as they are.
TFLITE_LAYOUT = "NHWC"

MCU_FORMAT = "edgefleet-mcu"
MCU_FORMAT_VERSION = 1
LAYOUT = "NCHW"
ACTIVATION_DTYPE = "int8"
#: ``real ~= multiplier * 2**(shift - Q31_SHIFT)``.
Q31_SHIFT = 31

#: Ops the coordinator's exporter emits today (a QDQ graph of the zoo networks).
EXPORTED_OPS = frozenset(
    {
        "conv2d",
        "depthwise_conv2d",
        "fully_connected",
        "global_average_pool",
        "reshape",
        "add",
        "max_pool2d",
        "average_pool2d",
        "leaky_relu",
        "requantize",
        "concat",
    }
)
#: Ops the emulator executes: the exported ones plus the rest of the CMSIS-NN set the zoo's
#: architectures may need (windowed pooling, standalone ReLU/ReLU6 clamps, int8 softmax).
SUPPORTED_OPS = EXPORTED_OPS | frozenset({"clamp", "softmax", "pad"})


def nhwc_flat_order(chw: Sequence[int]) -> list[int]:
    """For a tensor of NCHW shape ``[C, H, W]`` (batch dropped): the NCHW flat index of each
    element in NHWC flatten order. A fully-connected layer after a flatten reads its input in
    this order in ``model.tflite``, so the exporter permutes its weight columns with it and
    the emulator permutes them back."""
    c, h, w = (int(d) for d in chw)
    return [ci * h * w + hi * w + wi for hi in range(h) for wi in range(w) for ci in range(c)]


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= multiplier * 2**(shift - 31)``, Q31 multiplier.

    Shared by the exporter and the emulator, which derives every multiplier from the
    ``.tflite``'s float32 scales exactly as TFLM's ``Prepare`` does (double arithmetic,
    ``TfLiteRound`` = half away from zero, a shift below -31 flushes to zero).
    """
    if real == 0.0:
        return 0, 0
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"requantisation scale {real} is not a positive finite number")
    q, shift = math.frexp(real)  # real = q * 2**shift, q in [0.5, 1)
    q_fixed = math.floor(q * (1 << 31) + 0.5)
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"requantisation scale {real} too large for int32 fixed point")
    return int(q_fixed), int(shift)


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (round half to even), as a Python float."""
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def leaky_relu_params(s_in: float, s_out: float, alpha: float) -> dict[str, int | float]:
    """TFLM's int8 LEAKY_RELU parameters (``CalculateOpDataLeakyRelu``): ``multiplier``/``shift``
    for ``x >= 0`` (``s_in / s_out``) and ``alpha_multiplier``/``alpha_shift`` below it
    (``s_in * alpha / s_out``), both real multipliers computed in float32 before
    ``QuantizeMultiplier``, as TFLM's ``Prepare`` does. The exporter and the emulator both call
    this, so their parameters agree to the bit.

    Float32 arithmetic without numpy: each operand is a float32; their product or quotient in
    double, rounded once to float32, equals the float32 operation (double has more than
    2 x 24 + 2 bits, so rounding twice cannot differ for a single multiply or divide).
    Raises ``ValueError`` for a negative or non-finite ``alpha`` (TFLM's kernel assumes >= 0).
    """
    a = _f32(alpha)
    if not (math.isfinite(a) and a >= 0):
        raise ValueError(f"LeakyRelu: a negative alpha is not supported (alpha {alpha})")
    si, so = _f32(s_in), _f32(s_out)
    m_id, sh_id = quantize_multiplier(_f32(si / so))
    m_a, sh_a = quantize_multiplier(_f32(_f32(si * a) / so))
    return {
        "alpha": a,
        "multiplier": m_id,
        "shift": sh_id,
        "alpha_multiplier": m_a,
        "alpha_shift": sh_a,
    }

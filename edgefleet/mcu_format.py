"""The MCU integer-graph format: the few constants both the exporter and the emulator must share.

The coordinator writes ``mcu.json`` + ``mcu.safetensors`` (see ``edgefleet.modelops.mcu``);
the device's ``mcu-sim`` runtime executes them. The agent must never import coordinator code, so
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

__all__ = [
    "ACTIVATION_DTYPE",
    "EXPORTED_OPS",
    "LAYOUT",
    "MCU_FORMAT",
    "MCU_FORMAT_VERSION",
    "Q31_SHIFT",
    "SUPPORTED_OPS",
]

MCU_FORMAT = "edgefleet-mcu"
MCU_FORMAT_VERSION = 1
LAYOUT = "NCHW"
ACTIVATION_DTYPE = "int8"
#: ``real ~= multiplier * 2**(shift - Q31_SHIFT)``.
Q31_SHIFT = 31

#: Ops the coordinator's exporter emits today (a QDQ graph of the zoo networks).
EXPORTED_OPS = frozenset(
    {"conv2d", "depthwise_conv2d", "fully_connected", "global_average_pool", "reshape", "add"}
)
#: Ops the emulator executes: the exported ones plus the rest of the CMSIS-NN set the zoo's
#: architectures may need (windowed pooling, standalone ReLU/ReLU6 clamps, int8 softmax).
SUPPORTED_OPS = EXPORTED_OPS | frozenset({"max_pool2d", "average_pool2d", "clamp", "softmax"})

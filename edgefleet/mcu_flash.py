"""What a variant takes of a microcontroller's flash: the model bytes plus the code that runs it.

Why code too: a firmware image holds the ``.tflite`` array AND the interpreter and kernels that
execute it. Counting the model alone (what this replaced) promised a board room it does not
have: the code for a small KWS net is about as large as its weights. So the flash a variant
needs is, in ONE place (:func:`flash_image`), used by the build (``metrics.mcu.flash_bytes``),
by selection's flash budget and ``devices explain``, and by the ``tflm`` and ``mcu-sim``
runtimes' flash check on the device:

    flash = model bytes + TFLM core + one kernel entry per op kind used
            (+ the MFCC frontend's code for a variant whose device computes it)

The frontend's constant *tables* are not here: ``FrontendSpec.cost().flash_bytes`` counts them
and selection adds them on top.

**The table** (:data:`KERNEL_CODE_BYTES`): typical ``.text`` + ``.rodata`` of TensorFlow Lite
Micro's CMSIS-NN kernels for Cortex-M4/M7 (``arm-none-eabi-gcc -Os``, Thumb-2, the registration
wrapper in ``tensorflow/lite/micro/kernels/cmsis_nn`` or the reference kernel, plus the CMSIS-NN
functions it dispatches to), rounded to 256 bytes. Sources and assumptions:

* **core** 16 KiB: TensorFlow's own statement that "the core runtime just fits in 16 KB on an
  Arm Cortex M3" (tensorflow.org/lite/microcontrollers, overview); tflite-micro's
  ``docs/code_size.md`` (2021) measures the framework alone (interpreter, allocator, planner,
  flatbuffer reading, no kernels) at 9,732 bytes on a Cortex-M3 "bluepill", and the rest of the
  16 KiB is what a firmware links with it (op resolver, error reporting, libc/libgcc pieces such
  as ``memcpy`` and 64-bit division).
* **kernels**: the same overview page puts the core plus the ops of its keyword-spotting
  example (DEPTHWISE_CONV_2D, FULLY_CONNECTED, SOFTMAX, RESHAPE; reference kernels) at 22 KB,
  i.e. ~6 KB for four kernels; CMSIS-NN's optimised paths are larger because each op carries
  several specialised functions (e.g. CONV_2D: ``arm_convolve_wrapper_s8`` choosing between
  ``arm_convolve_s8``, ``arm_convolve_1x1_s8_fast`` and ``arm_convolve_1_x_n_s8``, plus the
  ``arm_nn_mat_mult_*`` kernels and the im2col widening). The per-op figures are estimates from
  the functions each op links, not a measurement of one linked image: expect +-50 % per entry
  with another compiler, flag set or TFLM version. They are a budget, meant to be refined by a
  real ``arm-none-eabi-size`` when a board's build is available.
* an op not in the table costs :data:`UNKNOWN_KERNEL_BYTES` (the largest entry), so an unknown
  kernel is never assumed to be free.

Pure standard library: the agent, the coordinator and selection all import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CORE_CODE_BYTES",
    "FRONTEND_CODE_BYTES",
    "KERNEL_CODE_BYTES",
    "MCU_OP_KERNELS",
    "UNKNOWN_KERNEL_BYTES",
    "FlashImage",
    "flash_image",
    "kernels_of_graph",
]

#: TFLM's framework plus what firmware links with it (see the module docstring).
CORE_CODE_BYTES = 16 * 1024

#: Typical code of one int8 kernel (TFLM registration + the CMSIS-NN functions it calls),
#: Cortex-M4/M7, gcc -Os, by TFLite builtin op name. Estimates; see the module docstring.
KERNEL_CODE_BYTES: Mapping[str, int] = {
    # wrapper + arm_convolve_s8 / _1x1_s8_fast / _1_x_n_s8 + mat-mult kernels + im2col widening
    "CONV_2D": 6144,
    # wrapper + arm_depthwise_conv_s8 / _s8_opt / _3x3_s8 + the generic per-channel core
    "DEPTHWISE_CONV_2D": 5632,
    # arm_fully_connected_s8 + arm_nn_vec_mat_mult_t_s8 + the input-offset vector sum
    "FULLY_CONNECTED": 2560,
    # arm_elementwise_add_s8 + TFLM's broadcasting reference path kept for shape mismatch
    "ADD": 3072,
    # TFLM's reduce kernel: templated reference mean/sum with the quantised rescale
    "MEAN": 3584,
    "RESHAPE": 512,  # a copy (or nothing, in place) plus shape checks
    "QUANTIZE": 1536,  # int8 -> int8 requantise (reference Requantize templates)
    "MAX_POOL_2D": 1280,  # arm_max_pool_s8 + the shared pooling prepare
    "AVERAGE_POOL_2D": 1536,  # arm_avgpool_s8 (+ its scratch sizing)
    "PAD": 1536,  # reference pad, 4-D, constant value
    "LEAKY_RELU": 1024,  # two requantisations chosen by sign
    "CONCATENATION": 1280,  # per-input byte copies along one axis
    "SOFTMAX": 2560,  # arm_softmax_s8 (fixed-point exp and reciprocal) + prepare
    "LOGISTIC": 1536,  # reference integer logistic (fixed-point exp)
    "HARD_SWISH": 2048,  # reference hard-swish (two fixed-point multipliers, relu6 part)
    "RELU": 768,  # a standalone clamp (fused ReLUs are part of the op before them)
    "RELU6": 768,
}

#: An op the table does not know: charged as the largest kernel, never as free.
UNKNOWN_KERNEL_BYTES = max(KERNEL_CODE_BYTES.values())

#: Code of the device's signal frontend, by ``FrontendSpec.kind``: the MFCC as CMSIS-DSP runs it
#: in q15 (``arm_rfft_q15`` over ``arm_cfft_q15`` radix-4 butterflies and bit reversal, the
#: magnitude with ``arm_sqrt_q15``, the sparse mel matrix, ``arm_vlog_q31``, the DCT as a
#: matrix-vector product), gcc -Os, estimated as the table above. Its tables are not code: see
#: ``FrontendSpec.cost().flash_bytes``.
FRONTEND_CODE_BYTES: Mapping[str, int] = {"mfcc": 4096}

#: The emulator's op kinds (``mcu.json``, :mod:`edgefleet.mcu_format`) -> the TFLite kernel a
#: device links for them, for bundles that carry only the JSON graph.
MCU_OP_KERNELS: Mapping[str, str] = {
    "conv2d": "CONV_2D",
    "depthwise_conv2d": "DEPTHWISE_CONV_2D",
    "fully_connected": "FULLY_CONNECTED",
    "add": "ADD",
    "global_average_pool": "MEAN",
    "reshape": "RESHAPE",
    "requantize": "QUANTIZE",
    "max_pool2d": "MAX_POOL_2D",
    "average_pool2d": "AVERAGE_POOL_2D",
    "pad": "PAD",
    "leaky_relu": "LEAKY_RELU",
    "concat": "CONCATENATION",
    "softmax": "SOFTMAX",
    "clamp": "RELU6",
}


@dataclass(frozen=True)
class FlashImage:
    """One variant's flash on a microcontroller, split as :func:`flash_image` adds it up."""

    model_bytes: int
    core_bytes: int
    kernel_bytes: Mapping[str, int] = field(default_factory=dict)
    frontend_code_bytes: int = 0

    @property
    def code_bytes(self) -> int:
        """The runtime's code: core + every kernel used + the frontend's code."""
        return self.core_bytes + sum(self.kernel_bytes.values()) + self.frontend_code_bytes

    @property
    def total(self) -> int:
        return self.model_bytes + self.code_bytes

    def describe(self) -> str:
        """``model 60000 + TFLM code 35328 (core 16384, 4 kernels 14848, mfcc 4096) bytes``."""
        kernels = sum(self.kernel_bytes.values())
        parts = [f"core {self.core_bytes}", f"{len(self.kernel_bytes)} kernels {kernels}"]
        if self.frontend_code_bytes:
            parts.append(f"mfcc {self.frontend_code_bytes}")
        return f"model {self.model_bytes} + TFLM code {self.code_bytes} ({', '.join(parts)}) bytes"

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``metrics.mcu`` fields (``flash_bytes`` is the total)."""
        return {
            "flash_bytes": self.total,
            "model_bytes": self.model_bytes,
            "code_bytes": self.code_bytes,
            "code": {
                "core": self.core_bytes,
                "kernels": dict(self.kernel_bytes),
                "frontend": self.frontend_code_bytes,
            },
        }


def flash_image(model_bytes: int, ops: Iterable[str], frontend: str | None = None) -> FlashImage:
    """Flash of a model of ``model_bytes`` whose graph uses the TFLite builtin ``ops`` (names,
    repeats counted once: a kernel is linked once however often it runs), plus the frontend's
    code when the device computes one (``frontend``: its kind, e.g. ``"mfcc"``)."""
    if model_bytes < 0:
        raise ValueError(f"model size {model_bytes} bytes is negative")
    kernels = {op: KERNEL_CODE_BYTES.get(op, UNKNOWN_KERNEL_BYTES) for op in dict.fromkeys(ops)}
    front = 0 if frontend is None else FRONTEND_CODE_BYTES.get(frontend, UNKNOWN_KERNEL_BYTES)
    return FlashImage(int(model_bytes), CORE_CODE_BYTES, kernels, front)


def kernels_of_graph(ops: Iterable[Mapping[str, Any]]) -> list[str]:
    """The TFLite kernels an ``mcu.json`` op list needs (first use order, each once)."""
    return list(
        dict.fromkeys(MCU_OP_KERNELS.get(str(op.get("op")), str(op.get("op"))) for op in ops)
    )

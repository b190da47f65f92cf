"""How many cycles an int8 inference takes on a microcontroller core, op by op.

Why per op and per core: one "cycles per MAC" constant per core (what this replaced) predicted
the published MLPerf Tiny v1.0 ResNet-8 at 1.46x and KWS DS-CNN at 0.96x on the same Cortex-M4,
because the two nets spend their MACs differently. A 3x3 convolution over 16-64 channels is a
long dot product that keeps the core's SIMD multiply-accumulate busy; a depthwise 3x3 has nine
MACs per output, no reuse across channels and a requantisation for every nine MACs, so it runs
several times slower per MAC; a pointwise 1x1 sits between. This module counts cycles the way
the kernels that run on the device (CMSIS-NN on Arm, ESP-NN on the ESP32-S3) spend them:

- **MACs x cycles per MAC of that op's kernel** on that core's SIMD unit: dual 16-bit MAC
  (``SMLAD``) on Cortex-M4/M33/M7 (the M7 dual-issues the loads beside it), Helium (MVE)
  16-lane int8 ``VMLADAVA`` on Cortex-M55/M85 (two beats per cycle: 8 MACs/cycle peak), the PIE
  128-bit ``EE.VMULAS.S8.ACCX`` on the ESP32-S3's Xtensa LX7;
- **im2col**: a k x k convolution first copies each output pixel's input patch into a column
  buffer (widened to 16 bits on the DSP-extension cores), one patch element per output pixel;
- **per output element**: requantisation (a doubling high multiply, rounding shift, offset,
  clamp, byte store) -- it is what makes depthwise and small layers expensive;
- **per element** for pooling, residual adds (three requantisations per element), standalone
  activations and softmax (a fixed-point exp per element);
- **per layer**: the interpreter's dispatch and kernel setup;
- the **MFCC frontend** (see ``edgefleet.frontend``'s ``FrontendSpec.cost()``): q15 MACs of
  window, FFT, magnitude, mel and DCT, plus one square root per bin and one log per band.

Every table entry is an *ideal* count: instructions per unit of work in the kernel's inner
loop divided by the core's issue width (the derivation is next to each number). Real boards
lose cycles the instruction count does not see: flash wait states behind the prefetch/cache,
loop and pointer overhead, pipeline stalls on load-use. That is one constant,
:data:`STALL_FACTOR`, the only number fitted to measurements: the geometric mean of published
over ideal cycles for the four MLPerf Tiny v1.0 results (KWS DS-CNN and ResNet-8 on the
NUCLEO-L4R5ZI Cortex-M4 and the NUCLEO-H7A3ZI-Q Cortex-M7; ``benchmarks/mcu.py`` recomputes it
and prints predicted / published). Cores with no published result here (M33, M55, M85,
ESP32-S3) use the same factor: their tables are derived from the ISA alone, so later published
results check the physics, not a fit. Pure Python; no numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "CORE_COSTS",
    "FRONTEND_OPS",
    "OP_KINDS",
    "STALL_FACTOR",
    "Core",
    "CoreCosts",
    "CycleModelError",
    "Layer",
    "Prediction",
    "core_from_cpu",
    "dense_fallback",
    "frontend_layers",
    "layer_cycles",
    "layers_from_json",
    "layers_to_json",
    "predict",
]


class CycleModelError(ValueError):
    """Input the cycle model cannot cost (an unknown op kind, a negative count)."""


class Core(StrEnum):
    """A microcontroller core family: what decides the kernel's instruction mix."""

    M4 = "cortex-m4"
    M7 = "cortex-m7"
    M33 = "cortex-m33"
    M55 = "cortex-m55"
    M85 = "cortex-m85"
    ESP32S3 = "xtensa-lx7"


#: Op kinds of the int8 graph. conv: k x k dense convolution (im2col + matrix product);
#: pointwise: 1 x 1 convolution (no im2col); depthwise: one filter per channel; fc: fully
#: connected; pool: max/average pooling (counted per input element); add: residual add;
#: activation: a standalone activation (ReLU after a conv is a clamp inside the conv's
#: requantisation and costs nothing extra); softmax. The frontend kinds are the MFCC's.
OP_KINDS: tuple[str, ...] = (
    "conv",
    "pointwise",
    "depthwise",
    "fc",
    "pool",
    "add",
    "activation",
    "softmax",
    "frontend-mac",
    "frontend-sqrt",
    "frontend-log",
)

#: ``FrontendSpec.cost()`` counts -> the layer kind that costs them: q15 MAC groups, roots, logs.
FRONTEND_OPS: Mapping[str, str] = {
    "window": "frontend-mac",
    "fft": "frontend-mac",
    "magnitude": "frontend-mac",
    "mel": "frontend-mac",
    "dct": "frontend-mac",
    "sqrt": "frontend-sqrt",
    "log": "frontend-log",
}


@dataclass(frozen=True)
class Layer:
    """The work of one op of the int8 graph, counted from its shapes.

    ``macs``: multiply-accumulates; ``outputs``: output elements (each requantised once);
    ``elements``: elements an element-wise op (pool: inputs read; add, activation, softmax,
    frontend roots and logs: values computed) processes; ``im2col``: patch elements copied to
    the column buffer (output pixels x patch size; k x k convolutions only).
    """

    kind: str
    macs: int = 0
    outputs: int = 0
    elements: int = 0
    im2col: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise CycleModelError(f"op kind {self.kind!r}: unknown (known: {', '.join(OP_KINDS)})")
        for name in ("macs", "outputs", "elements", "im2col"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CycleModelError(f"{self.kind} layer: {name} must be an integer >= 0")


@dataclass(frozen=True)
class CoreCosts:
    """Ideal cycles per unit of work for one core family (see the table's comments)."""

    dense: float  # per MAC, matrix-product kernel (conv k x k after im2col, pointwise 1x1)
    fc: float  # per MAC, vector x matrix (each weight used once: load-bound)
    depthwise: float  # per MAC, incl. building its per-pixel column buffer
    im2col: float  # per patch element copied (and widened) to the column buffer
    requant: float  # per output element
    pool: float  # per input element
    add: float  # per element
    activation: float  # per element of a standalone activation
    softmax: float  # per element
    layer: float  # per op: interpreter dispatch and kernel setup
    frontend_mac: float  # per q15 MAC (CMSIS-DSP window/FFT/mel/DCT)
    frontend_sqrt: float  # per square root (q15 Newton iterations)
    frontend_log: float  # per log (table + interpolation)
    source: str = ""

    def per_unit(self, kind: str) -> tuple[float, float, float, float]:
        """(per MAC, per output, per element, per im2col element) for one op kind."""
        mac = {
            "conv": self.dense,
            "pointwise": self.dense,
            "depthwise": self.depthwise,
            "fc": self.fc,
            "frontend-mac": self.frontend_mac,
        }.get(kind, 0.0)
        element = {
            "pool": self.pool,
            "add": self.add,
            "activation": self.activation,
            "softmax": self.softmax,
            "frontend-sqrt": self.frontend_sqrt,
            "frontend-log": self.frontend_log,
        }.get(kind, 0.0)
        requant = self.requant if kind in ("conv", "pointwise", "depthwise", "fc") else 0.0
        im2col = self.im2col if kind == "conv" else 0.0
        return mac, requant, element, im2col


# --- the per-core tables (ideal cycles; instruction counts of the kernels' inner loops) -------
#
# Cortex-M4 (ARMv7E-M + DSP extension, single issue, SMLAD = 2 16-bit MACs in 1 cycle):
#   dense    1.25  CMSIS-NN arm_nn_mat_mult_kernel_s8_s16 / arm_nn_mat_mult_nt_t_s8: a 2 x 2
#                  output tile over 4 inputs = 16 MACs costs 8 SMLAD + 4-6 loads + 6-8 sign
#                  extensions (SXTB16/ROR) = ~20 instructions.
#   fc       1.6   arm_nn_vec_mat_mult_t_s8: 2 rows x 4 columns = 8 MACs: 1 input load + 2
#                  extends shared, 2 weight loads + 4 extends, 4 SMLAD = 13 instructions.
#   depthwise 4.0  arm_depthwise_conv_s8_opt: per output pixel the k x k x C window is widened
#                  to q15 (1.5/element, as im2col), then per 4 channels per tap 2 input loads,
#                  1 weight load + 3 extends and 4 single MACs (SMLABB/SMLATT; channels do not
#                  sum, so SMLAD's pairing is lost) = 10 instructions / 4 MACs (2.5).
#   im2col   1.5   arm_q7_to_q15_with_offset: load 4, 2 SXTAB16, ROR, 2 stores per 4 elements.
#   requant  12    arm_nn_requantize (SMULL, rounding add, 2 shifts) + bias load/add, output
#                  offset, SSAT clamp, byte store, tile bookkeeping.
#   pool 1, add 20 (three requantisations per element, 4-wide), activation 4 (LUT or clamp),
#   softmax 60 (max pass, fixed-point exp and sum, a division-free output pass),
#   layer 1000 (TFLM/X-CUBE-AI per-op dispatch, quant-param lookups, kernel prologue).
#   frontend: q15 MAC 1.0 (CMSIS-DSP SMLAD loops with loads), sqrt 40, log 30.
# Cortex-M33 (ARMv8-M Mainline + DSP extension): the same instructions at the same single-issue
#   cost as the M4 (its CoreMark/MHz is ~15 % higher from the branch/pipeline, which shows in
#   the scalar per-element costs only).
# Cortex-M7 (dual issue: a load or an ALU op beside the MAC pipe): dense 0.65 (the 20
#   instructions of a 16-MAC tile in ~10-11 cycles), fc 0.9, depthwise 2.2 (its widening and
#   single MACs pair with loads), im2col 0.8, requant 8, scalar element costs ~0.6x the M4.
# Cortex-M55 (Helium/MVE, two beats per cycle: a 128-bit vector op in 2 cycles): dense 0.16
#   (arm_nn_mat_mult_nt_t_s8 MVE: 4 rows x 16 inputs = 64 MACs from 1+4 VLDRB and 4 VMLADAVA,
#   loads overlapping MACs beat-wise: ~10 cycles), fc 0.25 (one 16-byte weight load per 16 MACs,
#   load-bound), depthwise 0.75 (channels in lanes, 4-lane int32 VMLA after widening loads),
#   im2col 0.25 (int8 patch copied with vector moves, no widening), requant 3 (4 outputs per
#   VQRDMULH/VRSHL sequence), vectorised pool/add/activation; scalar parts like the M33.
# Cortex-M85: the same Helium datapath (two beats per cycle) as the M55 with a superscalar
#   scalar pipeline like the M7's: Helium kernels unchanged, scalar per-layer/softmax costs lower.
# ESP32-S3 (Xtensa LX7 + PIE, 128-bit, EE.VMULAS.S8.ACCX: 16 int8 MACs per instruction with a
#   fused load): dense 0.25 (ESP-NN s3 conv: one output accumulator per ACCX plus alignment and
#   extraction, ~4 instructions per 16 MACs), fc 0.3, depthwise 1.0 (8-lane int16 after widening),
#   im2col 0.5, requant 10 (scalar MULSH-based), scalar costs like the M4. Weights come through
#   the flash cache (quad/octal SPI), which the shared stall factor only approximates.
CORE_COSTS: Mapping[Core, CoreCosts] = {
    Core.M4: CoreCosts(
        dense=1.25, fc=1.6, depthwise=4.0, im2col=1.5, requant=12.0,
        pool=1.0, add=20.0, activation=4.0, softmax=60.0, layer=1000.0,
        frontend_mac=1.0, frontend_sqrt=40.0, frontend_log=30.0,
        source="ARMv7E-M DSP: SMLAD dual 16-bit MAC, single issue",
    ),
    Core.M33: CoreCosts(
        dense=1.25, fc=1.6, depthwise=4.0, im2col=1.5, requant=11.0,
        pool=0.9, add=18.0, activation=3.5, softmax=52.0, layer=900.0,
        frontend_mac=1.0, frontend_sqrt=36.0, frontend_log=27.0,
        source="ARMv8-M Mainline DSP: SMLAD as the M4, single issue",
    ),
    Core.M7: CoreCosts(
        dense=0.65, fc=0.9, depthwise=2.2, im2col=0.8, requant=8.0,
        pool=0.6, add=12.0, activation=2.5, softmax=40.0, layer=700.0,
        frontend_mac=0.6, frontend_sqrt=25.0, frontend_log=20.0,
        source="ARMv7E-M DSP: SMLAD, dual issue (load beside MAC)",
    ),
    Core.M55: CoreCosts(
        dense=0.16, fc=0.25, depthwise=0.75, im2col=0.25, requant=3.0,
        pool=0.25, add=1.5, activation=0.5, softmax=30.0, layer=900.0,
        frontend_mac=0.25, frontend_sqrt=30.0, frontend_log=25.0,
        source="Helium MVE: 16-lane int8 VMLADAVA, two beats per cycle",
    ),
    Core.M85: CoreCosts(
        dense=0.16, fc=0.25, depthwise=0.7, im2col=0.2, requant=3.0,
        pool=0.25, add=1.5, activation=0.5, softmax=20.0, layer=600.0,
        frontend_mac=0.25, frontend_sqrt=20.0, frontend_log=16.0,
        source="Helium MVE as the M55, superscalar scalar pipeline",
    ),
    Core.ESP32S3: CoreCosts(
        dense=0.25, fc=0.3, depthwise=1.0, im2col=0.5, requant=10.0,
        pool=1.0, add=8.0, activation=2.0, softmax=60.0, layer=1000.0,
        frontend_mac=0.5, frontend_sqrt=40.0, frontend_log=30.0,
        source="Xtensa LX7 PIE: 128-bit EE.VMULAS.S8.ACCX with fused load",
    ),
}  # fmt: skip

#: Published over ideal cycles: flash wait states behind the prefetch/cache, loop overhead and
#: load-use stalls the instruction counts above leave out. Fitted on the four MLPerf Tiny v1.0
#: closed results (mlcommons/tiny_results_v1.0, STMicroelectronics, X-CUBE-AI) quoted in
#: ../shared/notes/real-device-artifacts.md: published / ideal is 1.80 (KWS) and 1.51
#: (ResNet-8) on the Cortex-M4, 1.70 and 1.59 on the Cortex-M7 -- per-core geometric means
#: 1.650 and 1.643, so one factor serves both cores and is kept for the others;
#: ``benchmarks/mcu.py`` recomputes it. The only fitted constant.
STALL_FACTOR = 1.65


@dataclass(frozen=True)
class Prediction:
    """Cycles of one inference, split by op kind, and the latency at ``mhz``."""

    core: Core
    mhz: float
    cycles: float
    by_kind: Mapping[str, float] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return self.cycles / (self.mhz * 1e3)


def layer_cycles(core: Core, layer: Layer, stall: float = STALL_FACTOR) -> float:
    """Cycles of one layer on ``core`` (ideal count x the stall factor)."""
    costs = CORE_COSTS[core]
    mac, requant, element, im2col = costs.per_unit(layer.kind)
    ideal = (
        layer.macs * mac
        + layer.outputs * requant
        + layer.elements * element
        + layer.im2col * im2col
        + costs.layer
    )
    return ideal * stall


def predict(
    core: Core, layers: Iterable[Layer], mhz: float, stall: float = STALL_FACTOR
) -> Prediction:
    """Cycles and latency of one inference of ``layers`` on ``core`` at ``mhz``."""
    if not math.isfinite(mhz) or mhz <= 0:
        raise CycleModelError(f"clock: {mhz!r} MHz is not a positive number")
    by_kind: dict[str, float] = {}
    for layer in layers:
        by_kind[layer.kind] = by_kind.get(layer.kind, 0.0) + layer_cycles(core, layer, stall)
    return Prediction(core, float(mhz), sum(by_kind.values()), by_kind)


def frontend_layers(counts: Mapping[str, int]) -> tuple[Layer, ...]:
    """The MFCC frontend's op counts as layers: ``{**cost.macs, **cost.ops}`` of a
    ``FrontendSpec.cost()``, or any plain dict with the keys of :data:`FRONTEND_OPS`."""
    macs = roots = logs = 0
    for name, count in counts.items():
        kind = FRONTEND_OPS.get(name)
        if kind is None:
            raise CycleModelError(
                f"frontend op {name!r}: unknown (known: {', '.join(FRONTEND_OPS)})"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CycleModelError(f"frontend op {name!r}: count must be an integer >= 0")
        if kind == "frontend-mac":
            macs += count
        elif kind == "frontend-sqrt":
            roots += count
        else:
            logs += count
    return (
        Layer("frontend-mac", macs=macs),
        Layer("frontend-sqrt", elements=roots),
        Layer("frontend-log", elements=logs),
    )


def dense_fallback(macs: int) -> tuple[Layer, ...]:
    """A variant measured before per-op counts existed: all its MACs as one pointwise layer
    (the cheapest dense kernel with no im2col), so its prediction stays a lower bound."""
    return (Layer("pointwise", macs=max(0, int(macs))),)


def layers_to_json(layers: Sequence[Layer]) -> list[dict[str, int | str]]:
    """Compact manifest form: only the non-zero counts of each layer."""
    out: list[dict[str, int | str]] = []
    for layer in layers:
        item: dict[str, int | str] = {"op": layer.kind}
        for name in ("macs", "outputs", "elements", "im2col"):
            value = getattr(layer, name)
            if value:
                item[name] = value
        out.append(item)
    return out


def layers_from_json(data: object) -> tuple[Layer, ...]:
    """Layers back from a manifest's ``metrics.ops``; one ``CycleModelError`` line if malformed."""
    if not isinstance(data, list):
        raise CycleModelError("ops: expected a list of layers")
    layers = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise CycleModelError(f"ops[{index}]: expected an object with an 'op' name")
        unknown = set(item) - {"op", "macs", "outputs", "elements", "im2col"}
        if unknown:
            raise CycleModelError(f"ops[{index}]: unknown field {sorted(unknown)[0]!r}")
        try:
            layers.append(
                Layer(
                    item["op"],
                    macs=item.get("macs", 0),
                    outputs=item.get("outputs", 0),
                    elements=item.get("elements", 0),
                    im2col=item.get("im2col", 0),
                )
            )
        except CycleModelError as exc:
            raise CycleModelError(f"ops[{index}]: {exc}") from None
    return tuple(layers)


_CPU_PATTERNS: tuple[tuple[str, Core], ...] = (
    (r"cortex-?m85", Core.M85),
    (r"cortex-?m55", Core.M55),
    (r"cortex-?m33", Core.M33),
    (r"cortex-?m7\b", Core.M7),
    (r"cortex-?m4", Core.M4),
    (r"xtensa\s*lx7|esp32-?s3", Core.ESP32S3),
)


def core_from_cpu(cpu: str) -> Core | None:
    """The core family a profile's CPU description names ("STM32H743 (Cortex-M7 480 MHz)"),
    or None. Read from the text every profile already carries on the wire, so a user's own
    profile ("nRF5340 (Cortex-M33 128 MHz)") is costed without a new field."""
    text = cpu.lower()
    for pattern, core in _CPU_PATTERNS:
        if re.search(pattern, text):
            return core
    return None

"""``mcu-sim``: a simulated microcontroller running the bundle's int8 graph with integers only.

Why an emulator and not onnxruntime with a small profile: a Cortex-M has no room for a float
runtime, no OS allocator and a hard SRAM/flash budget. What decides whether a variant works on
one is (a) the integer arithmetic of its kernels, which is *not* float math rounded at the end,
(b) whether its weights fit flash and its activation arena fits SRAM, and (c) how many cycles
its kernels take. This module models exactly those three:

* **Arithmetic** as in TFLite Micro / CMSIS-NN (``arm_nn_requantize``): int8 activations and
  weights, int32 accumulators (input offset applied before the multiply, int32 bias added),
  per-channel requantisation ``acc * multiplier * 2**(shift - 31)`` by a saturating rounding
  doubling high multiply and a rounding right shift, output offset and an activation clamp
  (ReLU/ReLU6 are clamps). Float appears only to quantise the input (as the ONNX graph's
  ``QuantizeLinear`` does, so both runtimes see the same int8 input), to dequantise the logits
  for reporting, and at load time to build the softmax lookup table (TFLM's ``Prepare``).
* **Budgets**: flash = ``mcu.safetensors`` + ``mcu.json`` bytes; SRAM = the peak of a greedy
  arena plan over the int8 graph (TFLM's greedy planner: lifetimes, largest-first placement,
  16-byte alignment, kernel scratch buffers as CMSIS-NN sizes them). Over either, ``load``
  refuses with both numbers.
* **Latency** from a cycle model at the profile's clock (never host wall time): MACs x the
  core's cycles per int8 MAC (:func:`edgefleet.perf.cycles_per_mac`) + per-element requantise
  cost + memory traffic (activations in SRAM, weights streamed from flash) + per-layer setup.

Only numpy is needed; ``mcu.safetensors`` is parsed here (the format is a JSON header and raw
little-endian bytes) so the safetensors package is not a dependency of an MCU agent.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes.base import (
    BudgetExceededError,
    BundleFormatError,
    MemoryUsage,
    Runtime,
)
from edgefleet.bundle import Bundle
from edgefleet.mcu_format import LAYOUT, MCU_FORMAT, MCU_FORMAT_VERSION, Q31_SHIFT, SUPPORTED_OPS
from edgefleet.perf import cycles_per_mac
from edgefleet.profiles import DeviceProfile

__all__ = [
    "ArenaPlan",
    "CycleEstimate",
    "CycleModel",
    "McuGraph",
    "McuSimRuntime",
    "estimate_cycles",
    "parse_graph",
    "plan_arena",
    "read_safetensors",
    "requantize",
]

IntArray = npt.NDArray[np.integer[Any]]
I32 = npt.NDArray[np.int32]
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ALIGN = 16  # TFLM aligns every arena buffer to 16 bytes
_CHUNK = 32  # samples per vectorised pass on the host
_ST_DTYPES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64}
_DENSE = ("conv2d", "depthwise_conv2d", "fully_connected")
_SAME_QPARAMS = ("max_pool2d", "average_pool2d", "clamp")


# --- integer arithmetic (TFLite MultiplyByQuantizedMultiplier) ------------------------------


def requantize(acc: IntArray, multiplier: Any, shift: Any) -> I32:
    """``acc * multiplier * 2**(shift - 31)``, rounded as TFLite/CMSIS-NN do, as int32.

    ``SaturatingRoundingDoublingHighMul(acc << max(shift, 0), multiplier)`` then
    ``RoundingDivideByPOT(., max(-shift, 0))`` (round half away from zero). The 64-bit
    intermediates are the SMULL a Cortex-M executes; everything stays in integers.
    """
    mult = np.asarray(multiplier, dtype=np.int64)
    sh = np.asarray(shift, dtype=np.int64)
    x = np.clip(acc.astype(np.int64) << np.maximum(sh, 0), _INT32_MIN, _INT32_MAX)
    ab = x * mult
    ab = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = np.where(ab >= 0, ab >> Q31_SHIFT, -((-ab) >> Q31_SHIFT))  # truncating division
    high = np.where((x == _INT32_MIN) & (mult == _INT32_MIN), _INT32_MAX, high)
    right = np.maximum(-sh, 0)
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    out = (high >> right) + ((high & mask) > threshold)
    result: I32 = out.astype(np.int32)
    return result


def _clamp_int8(y: IntArray, lo: int = -128, hi: int = 127) -> npt.NDArray[np.int8]:
    out: npt.NDArray[np.int8] = np.clip(y, max(lo, -128), min(hi, 127)).astype(np.int8)
    return out


# --- the graph ------------------------------------------------------------------------------


def read_safetensors(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """Parse safetensors bytes (u64 header length, JSON header, raw data) into numpy arrays."""
    if len(data) < 8:
        raise BundleFormatError("mcu.safetensors is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise BundleFormatError("mcu.safetensors header overruns the file")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"mcu.safetensors header is not JSON: {exc}") from exc
    body = memoryview(data)[8 + size :]
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise BundleFormatError(f"tensor {name!r}: dtype {meta.get('dtype')!r} not integer")
        start, end = (int(v) for v in meta["data_offsets"])
        shape = [int(d) for d in meta["shape"]]
        count = math.prod(shape)
        if not 0 <= start <= end <= len(body) or end - start != count * np.dtype(dtype).itemsize:
            raise BundleFormatError(f"tensor {name!r}: bad data offsets")
        tensors[name] = np.frombuffer(body[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        tensors[name] = tensors[name].astype(dtype, copy=False).reshape(shape)
    return tensors


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class McuGraph:
    """A validated ``mcu.json`` with its integer tensors."""

    input: str
    output: str
    tensors: Mapping[str, TensorInfo]
    ops: Sequence[Mapping[str, Any]]
    params: Mapping[str, np.ndarray[Any, Any]]

    def weight_bytes(self, op: Mapping[str, Any]) -> int:
        """Flash bytes one op streams: its weights, bias, multipliers and shifts."""
        keys = ("weight", "bias", "multiplier", "shift")
        return sum(
            int(self.params[op[k]].nbytes)
            for k in keys
            if isinstance(op.get(k), str) and op[k] in self.params
        )


def parse_graph(graph_bytes: bytes, tensor_bytes: bytes) -> McuGraph:
    """Check format, version, ops and every reference, so inference cannot fail half-way."""
    try:
        graph = json.loads(graph_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"mcu.json is not JSON: {exc}") from exc
    if not isinstance(graph, dict) or graph.get("format") != MCU_FORMAT:
        raise BundleFormatError(f"mcu.json is not an {MCU_FORMAT} graph")
    if graph.get("version") != MCU_FORMAT_VERSION:
        raise BundleFormatError(
            f"mcu graph version {graph.get('version')!r} is not supported "
            f"(this runtime reads {MCU_FORMAT_VERSION})"
        )
    if graph.get("layout", LAYOUT) != LAYOUT:
        raise BundleFormatError(f"mcu graph layout {graph.get('layout')!r} is not {LAYOUT}")
    params = read_safetensors(tensor_bytes)
    try:
        tensors = {
            name: TensorInfo(
                tuple(int(d) for d in t["shape"]), float(t["scale"]), int(t["zero_point"])
            )
            for name, t in graph["tensors"].items()
            if t.get("dtype", "int8") == "int8"
        }
        ops = list(graph["ops"])
        first, last = str(graph["input"]), str(graph["output"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleFormatError(f"mcu.json is malformed: {exc}") from exc
    if len(tensors) != len(graph["tensors"]):
        raise BundleFormatError("mcu graph: every activation tensor must be int8")
    defined = {first}
    for index, op in enumerate(ops):
        kind = op.get("op")
        if kind not in SUPPORTED_OPS:
            raise BundleFormatError(f"mcu graph op {index}: unsupported op {kind!r}")
        for name in [*op.get("inputs", []), op.get("output")]:
            if name not in tensors:
                raise BundleFormatError(f"mcu graph op {index} ({kind}): unknown tensor {name!r}")
        missing = [i for i in op["inputs"] if i not in defined]
        if missing:
            raise BundleFormatError(
                f"mcu graph op {index} ({kind}) reads {missing} before it is written"
            )
        defined.add(op["output"])
        for key in ("weight", "bias", "multiplier", "shift"):
            ref = op.get(key)
            if kind in _DENSE and (not isinstance(ref, str) or ref not in params):
                raise BundleFormatError(f"mcu graph op {index} ({kind}): missing tensor {key}")
        if kind in _DENSE:
            _check_dense(index, op, params, tensors)
        if kind in _SAME_QPARAMS:
            a, b = tensors[op["inputs"][0]], tensors[op["output"]]
            if (a.scale, a.zero_point) != (b.scale, b.zero_point):
                raise BundleFormatError(f"mcu graph op {index} ({kind}) must keep its quantisation")
        if kind == "softmax":
            out = tensors[op["output"]]
            if out.zero_point != -128 or not math.isclose(out.scale, 1 / 256):
                raise BundleFormatError("mcu softmax output must be scale 1/256, zero point -128")
    if last not in defined or first not in tensors:
        raise BundleFormatError("mcu graph: input/output tensors are not connected")
    return McuGraph(first, last, tensors, ops, params)


def _check_dense(
    index: int,
    op: Mapping[str, Any],
    params: Mapping[str, np.ndarray[Any, Any]],
    tensors: Mapping[str, TensorInfo],
) -> None:
    w = params[op["weight"]]
    want = {"weight": np.int8, "bias": np.int32, "multiplier": np.int32, "shift": np.int8}
    for key, dtype in want.items():
        if params[op[key]].dtype != dtype:
            raise BundleFormatError(
                f"mcu graph op {index}: {key} is {params[op[key]].dtype}, expected "
                f"{np.dtype(dtype)}"
            )
    channels = w.shape[0]
    for key in ("bias", "multiplier", "shift"):
        if params[op[key]].shape != (channels,):
            raise BundleFormatError(f"mcu graph op {index}: {key} is not per output channel")
    x, y = tensors[op["inputs"][0]], tensors[op["output"]]
    if op["op"] == "fully_connected":
        if w.ndim != 2 or w.shape[1] != x.numel or y.numel != channels:
            raise BundleFormatError(f"mcu graph op {index}: fully_connected shapes disagree")
    elif w.ndim != 4 or y.shape[1] != channels or x.shape[1] != w.shape[1] * int(op["groups"]):
        raise BundleFormatError(f"mcu graph op {index}: {op['op']} shapes disagree")


# --- kernels --------------------------------------------------------------------------------


def _windows(
    x: IntArray, kh: int, kw: int, stride: Sequence[int], out_hw: tuple[int, int]
) -> list[IntArray]:
    sh, sw = stride
    ho, wo = out_hw
    return [
        x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


def _out_hw(op: Mapping[str, Any], h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
    pt, pl, pb, pr = op.get("padding", [0, 0, 0, 0])
    sh, sw = op.get("stride", [1, 1])
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def _pad(x: IntArray, op: Mapping[str, Any], value: int) -> IntArray:
    pt, pl, pb, pr = op.get("padding", [0, 0, 0, 0])
    out: IntArray = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)
    return out


def _conv(op: Mapping[str, Any], g: McuGraph, x: npt.NDArray[np.int8]) -> I32:
    """conv2d / depthwise_conv2d accumulators: sum((x - zp_in) * w) + bias, in int32."""
    zp = g.tensors[op["inputs"][0]].zero_point
    w = g.params[op["weight"]].astype(np.int32)
    o, cin_g, kh, kw = w.shape
    xs = _pad(x.astype(np.int32) - np.int32(zp), op, 0)  # padding is real 0 == zero point
    n, _, h, wd = x.shape
    ho, wo = _out_hw(op, h, wd, kh, kw)
    taps = _windows(xs, kh, kw, op["stride"], (ho, wo))
    groups = int(op.get("groups", 1))
    if op["op"] == "depthwise_conv2d" and cin_g == 1 and o == groups:
        acc = np.zeros((n, o, ho, wo), dtype=np.int32)
        for t, tap in enumerate(taps):
            acc += tap * w[:, 0, t // kw, t % kw][None, :, None, None]
    else:
        per = o // groups
        acc = np.empty((n, o, ho * wo), dtype=np.int32)
        for gi in range(groups):
            cols = np.stack([tap[:, gi * cin_g : (gi + 1) * cin_g] for tap in taps], axis=2)
            cols = cols.reshape(n, cin_g * kh * kw, ho * wo)
            wg = w[gi * per : (gi + 1) * per].reshape(per, cin_g * kh * kw)
            acc[:, gi * per : (gi + 1) * per] = np.matmul(wg, cols)
        acc = acc.reshape(n, o, ho, wo)
    acc += g.params[op["bias"]][None, :, None, None]
    return acc


def _dense(op: Mapping[str, Any], g: McuGraph, x: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    mult, shift = g.params[op["multiplier"]], g.params[op["shift"]]
    if op["op"] == "fully_connected":
        zp = g.tensors[op["inputs"][0]].zero_point
        xs = x.reshape(x.shape[0], -1).astype(np.int32) - np.int32(zp)
        acc: I32 = np.matmul(xs, g.params[op["weight"]].astype(np.int32).T)
        acc += g.params[op["bias"]][None, :]
        y = requantize(acc, mult[None, :], shift[None, :])
    else:
        acc = _conv(op, g, x)
        y = requantize(acc, mult[None, :, None, None], shift[None, :, None, None])
    y += np.int32(op["output_zero_point"])
    return _clamp_int8(y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127)))


def _pool(op: Mapping[str, Any], g: McuGraph, x: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    kh, kw = op["kernel"]
    _, _, h, w = x.shape
    ho, wo = _out_hw(op, h, w, kh, kw)
    if op["op"] == "max_pool2d":
        taps = _windows(_pad(x, op, -128), kh, kw, op.get("stride", [kh, kw]), (ho, wo))
        y: IntArray = np.max(np.stack(taps), axis=0)
    else:  # TFLite average pool: padded cells are not counted; rounding half away from zero
        xs = _pad(x.astype(np.int32), op, 0)
        ones = _pad(np.ones((1, 1, h, w), dtype=np.int32), op, 0)
        stride = op.get("stride", [kh, kw])
        total = np.sum(np.stack(_windows(xs, kh, kw, stride, (ho, wo))), axis=0)
        count = np.sum(np.stack(_windows(ones, kh, kw, stride, (ho, wo))), axis=0)
        half = count // 2
        y = np.where(total >= 0, (total + half) // count, -((-total + half) // count))
    return _clamp_int8(y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127)))


def _softmax_lut(scale: float, beta: float) -> I32:
    """exp(-d * scale * beta) in Q16 for every int8 distance d from the row maximum.

    Built once at load (as TFLM's Prepare builds its table); inference only indexes it.
    """
    d = np.arange(256, dtype=np.float64)
    lut: I32 = np.round(np.exp(-d * scale * beta) * 65536.0).astype(np.int32)
    return lut


def _run_op(
    op: Mapping[str, Any],
    g: McuGraph,
    vals: Mapping[str, npt.NDArray[np.int8]],
    luts: Mapping[int, I32],
    index: int,
) -> npt.NDArray[np.int8]:
    kind = op["op"]
    x = vals[op["inputs"][0]]
    if kind in _DENSE:
        return _dense(op, g, x)
    if kind in ("global_average_pool", "reshape"):
        acc = x.astype(np.int32) - np.int32(op["input_zero_point"])
        if kind == "global_average_pool":
            acc = acc.reshape(acc.shape[0], acc.shape[1], -1).sum(axis=2, dtype=np.int32)
        y = requantize(acc, op["multiplier"], op["shift"]) + np.int32(op["output_zero_point"])
        return _clamp_int8(y)
    if kind == "add":  # TFLite int8 ADD: both sides to a common scale with headroom
        sides = [
            requantize((vals[name].astype(np.int32) - np.int32(zp)) << op["left_shift"], m, s)
            for name, zp, m, s in zip(
                op["inputs"],
                op["input_zero_points"],
                op["input_multipliers"],
                op["input_shifts"],
                strict=True,
            )
        ]
        y = requantize(sides[0] + sides[1], op["multiplier"], op["shift"])
        y += np.int32(op["output_zero_point"])
        return _clamp_int8(
            y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127))
        )
    if kind in ("max_pool2d", "average_pool2d"):
        return _pool(op, g, x)
    if kind == "clamp":  # ReLU: min = zero point; ReLU6: max = zero point + round(6 / scale)
        return _clamp_int8(x, int(op["activation_min"]), int(op["activation_max"]))
    if kind == "softmax":
        flat = x.reshape(x.shape[0], -1).astype(np.int32)
        e = luts[index][flat.max(axis=1, keepdims=True) - flat]
        total = e.sum(axis=1, keepdims=True, dtype=np.int32)
        y = ((e << 8) + total // 2) // total - 128  # output scale 1/256, zero point -128
        return _clamp_int8(y)
    raise BundleFormatError(f"op {kind!r} has no kernel")  # unreachable after parse_graph


# --- memory plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArenaPlan:
    """The SRAM arena an MCU must reserve: ``arena_bytes`` (greedy plan) >= ``lower_bound``."""

    arena_bytes: int
    lower_bound_bytes: int
    buffers: tuple[tuple[str, int, int, int, int], ...]  # name, size, first, last, offset


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _scratch_bytes(op: Mapping[str, Any], g: McuGraph) -> int:
    """Kernel scratch as CMSIS-NN's ``*_get_buffer_size`` reports for the kernel it would pick.

    conv (not a plain 1x1): two im2col columns in int16; depthwise 3x3 with padding <= 1 and
    the generic depthwise otherwise: none / one int16 column; everything else: none.
    """
    kind = op["op"]
    if kind not in ("conv2d", "depthwise_conv2d"):
        return 0
    _, cin_g, kh, kw = g.params[op["weight"]].shape
    plain = kh == kw == 1 and list(op["stride"]) == [1, 1] and not any(op["padding"])
    if kind == "conv2d":
        return 0 if plain else 2 * cin_g * kh * kw * 2
    channels = g.tensors[op["inputs"][0]].shape[1]
    if kh == kw == 3 and max(op["padding"]) <= 1:
        return 0
    return int(channels * kh * kw * 2)


def plan_arena(g: McuGraph) -> ArenaPlan:
    """Greedy arena plan over the int8 graph (lifetimes, largest first, lowest free offset).

    An elementwise op on a tensor nothing else reads (``reshape`` requantisation, ``clamp``)
    runs in place, as TFLM/CMSIS kernels do.
    """
    readers: dict[str, int] = {}
    for op in g.ops:
        for name in op["inputs"]:
            readers[name] = readers.get(name, 0) + 1
    root: dict[str, str] = {}

    def owner(name: str) -> str:
        while name in root:
            name = root[name]
        return name

    first: dict[str, int] = {g.input: 0}
    last: dict[str, int] = {g.input: 0}
    sizes: dict[str, int] = {g.input: g.tensors[g.input].numel}
    for index, op in enumerate(g.ops):
        for name in op["inputs"]:
            last[owner(name)] = max(last[owner(name)], index)
        src = op["inputs"][0]
        if (
            op["op"] in ("reshape", "clamp")
            and readers.get(src, 0) == 1
            and g.tensors[src].numel == g.tensors[op["output"]].numel
            and src != g.input
        ):
            root[op["output"]] = owner(src)
        else:
            first[op["output"]] = last[op["output"]] = index
            sizes[op["output"]] = g.tensors[op["output"]].numel
        scratch = _scratch_bytes(op, g)
        if scratch:
            name = f"scratch:op{index}"
            first[name], last[name], sizes[name] = index, index, scratch
    last[owner(g.output)] = len(g.ops)
    placed: list[tuple[str, int, int, int, int]] = []
    for name in sorted(first, key=lambda n: (-sizes[n], first[n], n)):
        lo, hi, size = first[name], last[name], _aligned(sizes[name])
        offset = 0
        for b in sorted((b for b in placed if b[2] <= hi and lo <= b[3]), key=lambda b: b[4]):
            if offset + size <= b[4]:
                break
            offset = max(offset, b[4] + b[1])
        placed.append((name, size, lo, hi, offset))
    arena = max((b[4] + b[1] for b in placed), default=0)
    bound = max(
        (sum(b[1] for b in placed if b[2] <= t <= b[3]) for t in range(len(g.ops) + 1)),
        default=0,
    )
    return ArenaPlan(arena, bound, tuple(sorted(placed, key=lambda b: b[2])))


# --- cycle model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleModel:
    """Cycle costs of one int8 inference on a Cortex-M class core.

    ``cycles_per_mac`` is the core's sustained int8 kernel rate (shared with the coordinator's
    latency model through :func:`edgefleet.perf.cycles_per_mac`). The rest are the usual
    first-order costs of CMSIS-NN kernels: each output element is requantised, offset and
    clamped (a handful of instructions); activations move over the 32-bit SRAM bus (a word per
    cycle); weights stream from flash through the prefetch buffer (about two bytes per cycle
    once wait states are hidden); each layer pays a fixed setup cost.
    """

    cycles_per_mac: float
    cycles_per_output: float = 4.0
    sram_cycles_per_byte: float = 0.25
    flash_cycles_per_byte: float = 0.5
    cycles_per_layer: float = 500.0

    @classmethod
    def for_profile(cls, profile: DeviceProfile) -> CycleModel:
        return cls(cycles_per_mac=cycles_per_mac(profile))


@dataclass(frozen=True)
class CycleEstimate:
    """One batch-1 inference: the work counted and the cycles and time it costs."""

    macs: int
    outputs: int
    sram_bytes: int
    flash_bytes: int
    layers: int
    cycles: float
    mac_cycles: float
    cpu_mhz: int

    @property
    def latency_ms(self) -> float:
        return self.cycles / (self.cpu_mhz * 1e3)


def _op_macs(op: Mapping[str, Any], g: McuGraph) -> int:
    out = g.tensors[op["output"]]
    if op["op"] == "fully_connected":
        return int(g.params[op["weight"]].size)
    if op["op"] in ("conv2d", "depthwise_conv2d"):
        _, cin_g, kh, kw = g.params[op["weight"]].shape
        return out.numel * int(cin_g * kh * kw)
    return 0


def estimate_cycles(
    g: McuGraph, profile: DeviceProfile, model: CycleModel | None = None
) -> CycleEstimate:
    """Cycles and latency of one inference of ``g`` on ``profile``'s core at its clock."""
    cm = model or CycleModel.for_profile(profile)
    macs = outputs = sram = flash = 0
    for op in g.ops:
        macs += _op_macs(op, g)
        out = g.tensors[op["output"]].numel
        outputs += out
        sram += sum(g.tensors[i].numel for i in op["inputs"]) + out
        flash += g.weight_bytes(op)
    mac_cycles = macs * cm.cycles_per_mac
    cycles = (
        mac_cycles
        + outputs * cm.cycles_per_output
        + sram * cm.sram_cycles_per_byte
        + flash * cm.flash_cycles_per_byte
        + len(g.ops) * cm.cycles_per_layer
    )
    return CycleEstimate(
        macs, outputs, sram, flash, len(g.ops), cycles, mac_cycles, profile.cpu_mhz
    )


# --- the runtime ----------------------------------------------------------------------------


class McuSimRuntime(Runtime):
    """Integer-only inference with the device's flash/SRAM budgets and a cycle-model clock."""

    name = "mcu-sim"
    latency_source = "cycle-model"

    def __init__(
        self, profile: DeviceProfile, threads: int = 1, cycle_model: CycleModel | None = None
    ) -> None:
        super().__init__(profile, threads)
        self.cycle_model = cycle_model or CycleModel.for_profile(profile)
        self._graph: McuGraph | None = None
        self._luts: dict[int, I32] = {}
        self.plan: ArenaPlan | None = None
        self.estimate: CycleEstimate | None = None
        self.flash_bytes = 0

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        graph_bytes = bundle.file(str(entry.get("graph", "mcu.json")))
        tensor_bytes = bundle.file(str(entry.get("tensors", "mcu.safetensors")))
        flash = len(graph_bytes) + len(tensor_bytes)
        if flash > self.profile.storage_bytes:
            raise BudgetExceededError(
                "flash",
                flash,
                self.profile.storage_bytes,
                f"weights {len(tensor_bytes)} + graph {len(graph_bytes)} bytes on "
                f"{self.profile.name}",
            )
        graph = parse_graph(graph_bytes, tensor_bytes)
        plan = plan_arena(graph)
        if plan.arena_bytes > self.profile.ram_bytes:
            raise BudgetExceededError(
                "SRAM arena",
                plan.arena_bytes,
                self.profile.ram_bytes,
                f"peak activation arena of the int8 graph on {self.profile.name}",
            )
        luts = {
            i: _softmax_lut(graph.tensors[op["inputs"][0]].scale, float(op.get("beta", 1.0)))
            for i, op in enumerate(graph.ops)
            if op["op"] == "softmax"
        }
        self._graph, self._luts, self.plan, self.flash_bytes = graph, luts, plan, flash
        self.estimate = estimate_cycles(graph, self.profile, self.cycle_model)

    @property
    def graph(self) -> McuGraph:
        if self._graph is None:
            raise BundleFormatError("mcu-sim: no variant loaded")
        return self._graph

    def quantize_input(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """Float input -> int8, exactly as the ONNX graph's ``QuantizeLinear`` does it
        (float32 division, round half to even, saturate), so every runtime sees one input."""
        info = self.graph.tensors[self.graph.input]
        q = np.rint(batch.astype(np.float32) / np.float32(info.scale))
        q = q.reshape(batch.shape[0], *info.shape[1:]) + np.float32(info.zero_point)
        return _clamp_int8(np.clip(q, -128, 127).astype(np.int32))

    def run_int8(self, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """The integer graph from the int8 input tensor to the int8 output tensor.

        Large batches run in chunks: the vectorised kernels' im2col buffers grow with the
        batch, and the emulator's own host memory should not balloon on an evaluation pass.
        """
        if q.shape[0] > _CHUNK:
            parts = [self.run_int8(q[i : i + _CHUNK]) for i in range(0, q.shape[0], _CHUNK)]
            return np.concatenate(parts)
        g = self.graph
        vals: dict[str, npt.NDArray[np.int8]] = {g.input: q}
        n = q.shape[0]
        for index, op in enumerate(g.ops):
            y = _run_op(op, g, vals, self._luts, index)
            vals[op["output"]] = y.reshape(n, *g.tensors[op["output"]].shape[1:])
        return vals[g.output]

    def dequantize_output(self, q: npt.NDArray[np.int8]) -> np.ndarray[Any, np.dtype[np.float32]]:
        info = self.graph.tensors[self.graph.output]
        real = (q.astype(np.int32) - np.int32(info.zero_point)).astype(np.float32)
        out: np.ndarray[Any, np.dtype[np.float32]] = (real * np.float32(info.scale)).reshape(
            q.shape[0], -1
        )
        return out

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = self.dequantize_output(self.run_int8(self.quantize_input(batch)))
        assert self.estimate is not None
        self.last_latency_ms = self.estimate.latency_ms * batch.shape[0]
        return out

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
        """Class indices by an integer argmax over the int8 output (ties: the lowest index)."""
        self.validate_input(batch)
        q = self.run_int8(self.quantize_input(batch))
        out: npt.NDArray[np.intp] = q.reshape(q.shape[0], -1).argmax(axis=1)
        return out

    def memory(self) -> MemoryUsage:
        if self._graph is None or self.plan is None:
            return MemoryUsage(0, 0, "not loaded")
        return MemoryUsage(
            weights=self.flash_bytes,
            working=self.plan.arena_bytes,
            method="flash: mcu.safetensors + mcu.json; SRAM: greedy arena plan of the int8 graph",
        )

    def unload(self) -> None:
        self._graph, self._luts, self.plan, self.estimate = None, {}, None, None
        self.flash_bytes = 0
        super().unload()

"""The ``mcu-sim`` integer kernels: conv / depthwise / fully-connected, pooling, add, softmax.

Why its own module: this is the arithmetic an MCU variant is judged by, and it is read (and
reviewed against TFLite Micro / CMSIS-NN) apart from the runtime's budgets and cycle model in
:mod:`.mcu_sim`; last-layer fine-tuning (:mod:`edgefleet.agent.finetune_mcu`) runs the same
kernels through :func:`run_graph`.

As in TFLite Micro / CMSIS-NN (``arm_nn_requantize``): int8 activations and weights, int32
accumulators (input offset applied before the multiply, int32 bias added), per-channel
requantisation ``acc * multiplier * 2**(shift - 31)`` by a saturating rounding doubling high
multiply and a rounding right shift, output offset and an activation clamp (ReLU/ReLU6 are
clamps). Float appears only at load, to build the softmax lookup table (TFLM's ``Prepare``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes.base import BundleFormatError
from edgefleet.agent.runtimes.mcu_graph import DENSE_OPS, McuGraph
from edgefleet.mcu_format import Q31_SHIFT

__all__ = ["I32", "IntArray", "clamp_int8", "requantize", "run_graph", "run_op", "softmax_lut"]

IntArray = npt.NDArray[np.integer[Any]]
I32 = npt.NDArray[np.int32]
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


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


def clamp_int8(y: IntArray, lo: int = -128, hi: int = 127) -> npt.NDArray[np.int8]:
    out: npt.NDArray[np.int8] = np.clip(y, max(lo, -128), min(hi, 127)).astype(np.int8)
    return out


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
            k = cin_g * kh * kw
            # one 2-D (K, batch * pixels) operand: numpy hands 2-D float64 products to BLAS
            # (a stacked 3-D matmul runs numpy's own loop, ~100x slower). float64 is exact
            # here: each product is below 2**16 in magnitude and every sum far below 2**53.
            cols2 = cols.reshape(n, k, ho * wo).transpose(1, 0, 2).reshape(k, n * ho * wo)
            wg = w[gi * per : (gi + 1) * per].reshape(per, k).astype(np.float64)
            prod = wg @ cols2.astype(np.float64)
            acc[:, gi * per : (gi + 1) * per] = prod.reshape(per, n, ho * wo).transpose(1, 0, 2)
        acc = acc.reshape(n, o, ho, wo)
    acc += g.params[op["bias"]][None, :, None, None]
    return acc


def _dense(op: Mapping[str, Any], g: McuGraph, x: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    mult, shift = g.params[op["multiplier"]], g.params[op["shift"]]
    if op["op"] == "fully_connected":
        zp = g.tensors[op["inputs"][0]].zero_point
        xs = x.reshape(x.shape[0], -1).astype(np.int32) - np.int32(zp)
        wf = g.params[op["weight"]].astype(np.float64).T
        acc: I32 = np.matmul(xs.astype(np.float64), wf).astype(np.int32)  # exact, see _conv
        acc += g.params[op["bias"]][None, :]
        y = requantize(acc, mult[None, :], shift[None, :])
    else:
        acc = _conv(op, g, x)
        y = requantize(acc, mult[None, :, None, None], shift[None, :, None, None])
    y += np.int32(op["output_zero_point"])
    return clamp_int8(y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127)))


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
    return clamp_int8(y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127)))


def softmax_lut(scale: float, beta: float) -> I32:
    """exp(-d * scale * beta) in Q16 for every int8 distance d from the row maximum.

    Built once at load (as TFLM's Prepare builds its table); inference only indexes it.
    """
    d = np.arange(256, dtype=np.float64)
    lut: I32 = np.round(np.exp(-d * scale * beta) * 65536.0).astype(np.int32)
    return lut


def run_op(
    op: Mapping[str, Any],
    g: McuGraph,
    vals: Mapping[str, npt.NDArray[np.int8]],
    luts: Mapping[int, I32],
    index: int,
) -> npt.NDArray[np.int8]:
    kind = op["op"]
    x = vals[op["inputs"][0]]
    if kind in DENSE_OPS:
        return _dense(op, g, x)
    if kind == "concat":  # TFLM int8 CONCATENATION: inputs already at the output's scale
        parts = [vals[name].reshape(x.shape[0], *vals[name].shape[1:]) for name in op["inputs"]]
        joined: npt.NDArray[np.int8] = np.concatenate(parts, axis=int(op["axis"]))
        return joined
    if kind in ("global_average_pool", "reshape", "requantize"):
        acc = x.astype(np.int32) - np.int32(op["input_zero_point"])
        if kind == "global_average_pool":
            acc = acc.reshape(acc.shape[0], acc.shape[1], -1).sum(axis=2, dtype=np.int32)
        y = requantize(acc, op["multiplier"], op["shift"]) + np.int32(op["output_zero_point"])
        return clamp_int8(y)
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
        return clamp_int8(
            y, int(op.get("activation_min", -128)), int(op.get("activation_max", 127))
        )
    if kind in ("max_pool2d", "average_pool2d"):
        return _pool(op, g, x)
    if kind == "leaky_relu":  # TFLM QuantizeLeakyRelu: a requantisation per sign
        v = x.astype(np.int32) - np.int32(op["input_zero_point"])
        pos = requantize(v, op["multiplier"], op["shift"])
        neg = requantize(v, op["alpha_multiplier"], op["alpha_shift"])
        return clamp_int8(np.where(v >= 0, pos, neg) + np.int32(op["output_zero_point"]))
    if kind == "pad":  # TFLM PAD (int8): the output zero point, i.e. real 0, fills the border
        padded: npt.NDArray[np.int8] = _pad(x, op, int(op["value"])).astype(np.int8)
        return padded
    if kind == "clamp":  # ReLU: min = zero point; ReLU6: max = zero point + round(6 / scale)
        return clamp_int8(x, int(op["activation_min"]), int(op["activation_max"]))
    if kind == "softmax":
        flat = x.reshape(x.shape[0], -1).astype(np.int32)
        e = luts[index][flat.max(axis=1, keepdims=True) - flat]
        total = e.sum(axis=1, keepdims=True, dtype=np.int32)
        y = ((e << 8) + total // 2) // total - 128  # output scale 1/256, zero point -128
        return clamp_int8(y)
    raise BundleFormatError(f"op {kind!r} has no kernel")  # unreachable after parse_graph


def run_graph(
    g: McuGraph, q: npt.NDArray[np.int8], luts: Mapping[int, I32], stop: int | None = None
) -> dict[str, npt.NDArray[np.int8]]:
    """Run ``g.ops[:stop]`` (all ops by default) on the int8 input ``q``.

    Returns every int8 tensor computed, by name (the input included), each shaped
    ``[batch, *its shape[1:]]``. ``luts`` are the softmax tables by op index
    (:func:`softmax_lut`, built at load).
    """
    vals: dict[str, npt.NDArray[np.int8]] = {g.input: q}
    n = q.shape[0]
    for index, op in enumerate(g.ops[:stop]):
        y = run_op(op, g, vals, luts, index)
        vals[op["output"]] = y.reshape(n, *g.tensors[op["output"]].shape[1:])
    return vals

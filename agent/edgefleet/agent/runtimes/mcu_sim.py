"""``mcu-sim``: a simulated microcontroller running the bundle's int8 graph with integers only.

Why an emulator and not onnxruntime with a small profile: a Cortex-M has no room for a float
runtime, no OS allocator and a hard SRAM/flash budget. What decides whether a variant works on
one is (a) the integer arithmetic of its kernels, which is *not* float math rounded at the end,
(b) whether its weights fit flash and its activation arena fits SRAM, and (c) how many cycles
its kernels take. This module models exactly those three:

* **The graph** is the bundle's ``model.tflite``, the very file TFLite Micro and LiteRT load
  (:mod:`.mcu_tflite` reads it and derives every integer parameter as TFLM's ``Prepare``
  does); bundles from before it, or an agent without the ``tflite-micro`` schema module, fall
  back to ``mcu.json`` + ``mcu.safetensors`` (the same integer graph).
* **Arithmetic** bit-exact with TFLite Micro's reference kernels (checked against TFLM's own
  interpreter, 0 differing outputs: ``tests/test_mcu_tflm_exact.py``): int8 activations and
  weights, int32 accumulators (input offset applied before the multiply, int32 bias added),
  per-channel requantisation ``acc * multiplier * 2**(shift - 31)`` by a saturating rounding
  doubling high multiply and a rounding right shift, output offset and an activation clamp
  (ReLU/ReLU6 are clamps). Float appears only to quantise the input (as the ONNX graph's
  ``QuantizeLinear`` does, so both runtimes see the same int8 input; NaN reads as real 0,
  as in the ``tflm`` and ``litert`` runtimes, never an undefined cast), to dequantise the
  logits for reporting, and at load time to build the softmax lookup table of ``mcu.json``
  graphs.
* **Budgets**: flash = ``model.tflite`` bytes (or ``mcu.safetensors`` + ``mcu.json``) plus
  the TFLM code its op list links (:mod:`edgefleet.mcu_flash`, the build's own figure);
  SRAM = the peak of a greedy arena plan over the int8 graph (TFLM's greedy planner:
  lifetimes, largest-first placement, 16-byte alignment, kernel scratch buffers as CMSIS-NN
  sizes them). It equals TFLM's reported arena head for graphs without im2col scratch and
  exceeds it by that scratch otherwise (TFLM's reference kernels need none). A variant whose
  device computes an MFCC frontend also needs that frontend's working buffers in SRAM
  (``FrontendSpec.cost().ram_bytes``: the 1 s int16 clip, the FFT frame, mel and feature
  buffers), beside the arena, so arena + frontend must fit the profile's SRAM (and the arena,
  one array, its largest contiguous region). Over any budget, ``load`` refuses with both numbers.
* **Latency** from the per-op cycle model of the profile's core at its clock (never host wall
  time): :func:`edgefleet.perf.mcu_latency_ms` over the manifest's op counts, the coordinator's
  own prediction (the frontend's share is added by the base runtime for a raw-audio request).
  A bundle whose manifest has no op counts is costed from the loaded graph's ops.

Only numpy is needed. The emulator is split so that each module stays readable on its own:
the graph format and its checks (:mod:`.mcu_graph`), the integer kernels (:mod:`.mcu_kernels`)
and, here, the budgets (the arena plan itself is :mod:`edgefleet.arena`, shared with the
coordinator's model ops), the cycle model and the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from edgefleet.agent.runtimes.mcu_graph import McuGraph, parse_graph, read_safetensors
from edgefleet.agent.runtimes.mcu_kernels import (
    I32,
    requantize,
    run_graph,
    softmax_lut,
)
from edgefleet.agent.runtimes.mcu_tflite import parse_tflite, schema_available
from edgefleet.agent.runtimes.tflite_io import TensorQuant, mcu_flash, tflite_ops
from edgefleet.arena import ArenaPlan, Lifetimes
from edgefleet.bundle import Bundle
from edgefleet.cycles import Layer, Prediction, predict
from edgefleet.frontend.spec import FrontendError, manifest_cost
from edgefleet.mcu_flash import FlashImage, kernels_of_graph
from edgefleet.perf import manifest_layers, mcu_core
from edgefleet.profiles import DeviceProfile

__all__ = [
    "ArenaPlan",
    "CycleEstimate",
    "McuGraph",
    "McuSimRuntime",
    "estimate_cycles",
    "graph_layers",
    "parse_graph",
    "plan_arena",
    "read_safetensors",
    "requantize",
]

_ALIGN = 16  # TFLM aligns every arena buffer to 16 bytes
_CHUNK = 32  # samples per vectorised pass on the host


# --- memory plan ----------------------------------------------------------------------------


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
    """Greedy arena plan over the int8 graph (:mod:`edgefleet.arena`), 16-byte aligned.

    An elementwise op on a tensor nothing else reads (``reshape`` requantisation, ``clamp``)
    runs in place, as TFLM/CMSIS kernels do; kernel scratch lives for its op only.
    """
    readers: dict[str, int] = {}
    for op in g.ops:
        for name in op["inputs"]:
            readers[name] = readers.get(name, 0) + 1
    lifetimes = Lifetimes()
    lifetimes.define(g.input, 0, g.tensors[g.input].numel)
    for index, op in enumerate(g.ops):
        for name in op["inputs"]:
            lifetimes.read(name, index)
        src = op["inputs"][0]
        if (
            op["op"] in ("reshape", "clamp")
            and readers.get(src, 0) == 1
            and g.tensors[src].numel == g.tensors[op["output"]].numel
            and src != g.input
        ):
            lifetimes.alias(op["output"], src)
        else:
            lifetimes.define(op["output"], index, g.tensors[op["output"]].numel)
        scratch = _scratch_bytes(op, g)
        if scratch:
            lifetimes.define(f"scratch:op{index}", index, scratch)
    lifetimes.keep_until(g.output, len(g.ops))
    return lifetimes.plan(len(g.ops), align=_ALIGN)


# --- cycle model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleEstimate:
    """One batch-1 inference of the network (no frontend) on a profile's core: the layers
    costed, where their counts came from (``manifest`` or ``graph``), the cycle model's answer."""

    layers: tuple[Layer, ...]
    source: str
    prediction: Prediction

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def cycles(self) -> float:
        return self.prediction.cycles

    @property
    def latency_ms(self) -> float:
        return self.prediction.ms


def graph_layers(g: McuGraph) -> tuple[Layer, ...]:
    """The int8 graph's work per op as the cycle model counts it (what the coordinator's
    ``count_layers`` writes into ``metrics.ops`` from the float graph): for bundles whose
    manifest has no op counts. Shape-only ops (reshape, requantise, concat, pad) cost nothing."""
    layers: list[Layer] = []
    for op in g.ops:
        kind, out = op["op"], g.tensors[op["output"]].numel
        if kind in ("conv2d", "depthwise_conv2d"):
            _, cin_g, kh, kw = g.params[op["weight"]].shape
            macs = out * int(cin_g * kh * kw)
            plain = kh == kw == 1 and list(op["stride"]) == [1, 1]
            if kind == "depthwise_conv2d":
                layers.append(Layer("depthwise", macs=macs, outputs=out))
            elif plain:
                layers.append(Layer("pointwise", macs=macs, outputs=out))
            else:
                pixels = out // int(g.params[op["weight"]].shape[0])
                im2col = pixels * int(cin_g * kh * kw)
                layers.append(Layer("conv", macs=macs, outputs=out, im2col=im2col))
        elif kind == "fully_connected":
            layers.append(Layer("fc", macs=int(g.params[op["weight"]].size), outputs=out))
        elif kind in ("max_pool2d", "average_pool2d", "global_average_pool"):
            layers.append(Layer("pool", elements=g.tensors[op["inputs"][0]].numel))
        elif kind == "add":
            layers.append(Layer("add", elements=out))
        elif kind in ("leaky_relu", "clamp"):
            layers.append(Layer("activation", elements=out))
        elif kind == "softmax":
            layers.append(Layer("softmax", elements=out))
    return tuple(layers)


def estimate_cycles(
    g: McuGraph, profile: DeviceProfile, manifest: Mapping[str, Any] | None = None
) -> CycleEstimate:
    """Cycles and latency of one inference of the network on ``profile``'s core at its clock:
    the manifest's op counts (``metrics.ops``: exactly :func:`edgefleet.perf.mcu_latency_ms`
    without the frontend, what selection predicted), or the loaded graph's own when the
    manifest has none. Malformed counts raise ``BundleFormatError``."""
    metrics = (manifest or {}).get("metrics") or {}
    if "ops" in metrics:
        try:
            layers, source = manifest_layers(manifest or {}, frontend=False), "manifest"
        except ValueError as exc:
            raise BundleFormatError(f"manifest metrics: {exc}") from exc
    else:
        layers, source = graph_layers(g), "graph"
    return CycleEstimate(layers, source, predict(mcu_core(profile), layers, profile.cpu_mhz))


# --- the runtime ----------------------------------------------------------------------------


def _single_thread_blas() -> None:
    """Keep numpy's BLAS on one thread in a process that simulates a (single-core) MCU.

    The kernels' products are small float64 matmuls; multi-threaded OpenBLAS on them costs
    10x more CPU when several simulated devices share the host's cores (measured: ResNet-8
    23 ms single-threaded vs 275 ms with default threads under load). ``threadpoolctl`` is
    used when installed (it is in the dev and coordinator environments); without it the
    limit is left to ``OPENBLAS_NUM_THREADS``.
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        return
    threadpool_limits(limits=1, user_api="blas")


class McuSimRuntime(Runtime):
    """Integer-only inference with the device's flash/SRAM budgets and a cycle-model clock."""

    name = "mcu-sim"
    latency_source = "cycle-model"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._graph: McuGraph | None = None
        self._luts: dict[int, I32] = {}
        self.plan: ArenaPlan | None = None
        self.estimate: CycleEstimate | None = None
        self.flash: FlashImage | None = None
        #: SRAM the device's MFCC frontend holds beside the arena (0 without a frontend)
        self.frontend_ram_bytes = 0

    @property
    def flash_bytes(self) -> int:
        return 0 if self.flash is None else self.flash.total

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        if entry.get("model") and schema_available():
            # the same file TFLM and LiteRT load, parsed as TFLM's Prepare reads it
            model = bundle.file(str(entry["model"]))
            flash = mcu_flash(bundle, len(model), tflite_ops(model))
            self._check_flash(flash)
            graph = parse_tflite(model)
        else:  # bundles from before model.tflite, or an agent without the tflite schema
            graph_bytes = bundle.file(str(entry.get("graph", "mcu.json")))
            tensor_bytes = bundle.file(str(entry.get("tensors", "mcu.safetensors")))
            graph = parse_graph(graph_bytes, tensor_bytes)
            flash = mcu_flash(
                bundle, len(graph_bytes) + len(tensor_bytes), kernels_of_graph(graph.ops)
            )
            self._check_flash(flash)
        plan = plan_arena(graph)
        try:
            cost = manifest_cost(bundle.manifest)
        except FrontendError as exc:
            raise BundleFormatError(f"manifest input: {exc}") from exc
        frontend = 0 if cost is None else cost.ram_bytes
        if plan.arena_bytes + frontend > self.profile.ram_bytes:
            raise BudgetExceededError(
                "SRAM arena + frontend" if frontend else "SRAM arena",
                plan.arena_bytes + frontend,
                self.profile.ram_bytes,
                f"peak activation arena of the int8 graph {plan.arena_bytes}"
                + (f" + MFCC frontend buffers {frontend}" if frontend else "")
                + f" bytes on {self.profile.name}",
            )
        luts = {
            i: softmax_lut(graph.tensors[op["inputs"][0]].scale, float(op.get("beta", 1.0)))
            for i, op in enumerate(graph.ops)
            if op["op"] == "softmax"
        }
        estimate = estimate_cycles(graph, self.profile, bundle.manifest)
        _single_thread_blas()
        self._graph, self._luts, self.plan, self.flash = graph, luts, plan, flash
        self.estimate, self.frontend_ram_bytes = estimate, frontend

    def _check_flash(self, flash: FlashImage) -> None:
        if flash.total > self.profile.storage_bytes:
            raise BudgetExceededError(
                "flash",
                flash.total,
                self.profile.storage_bytes,
                f"{flash.describe()} on {self.profile.name}",
            )

    @property
    def graph(self) -> McuGraph:
        if self._graph is None:
            raise BundleFormatError("mcu-sim: no variant loaded")
        return self._graph

    def quantize_input(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """Float input -> int8 exactly as the ONNX graph's ``QuantizeLinear`` does it (float32
        division, round half to even, saturate), through the one quantiser the ``tflm`` and
        ``litert`` runtimes use too (:class:`.tflite_io.TensorQuant`): NaN reads as real 0
        (the zero point), infinities saturate, so every MCU runtime sees one input."""
        info = self.graph.tensors[self.graph.input]
        q = TensorQuant(info.scale, info.zero_point).quantize(batch)
        return q.reshape(batch.shape[0], *info.shape[1:])

    def run_int8(self, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """The integer graph from the int8 input tensor to the int8 output tensor.

        Large batches run in chunks: the vectorised kernels' im2col buffers grow with the
        batch, and the emulator's own host memory should not balloon on an evaluation pass.
        """
        if q.shape[0] > _CHUNK:
            parts = [self.run_int8(q[i : i + _CHUNK]) for i in range(0, q.shape[0], _CHUNK)]
            return np.concatenate(parts)
        return self.activations(q)[self.graph.output]

    def activations(
        self, q: npt.NDArray[np.int8], stop: int | None = None
    ) -> dict[str, npt.NDArray[np.int8]]:
        """Every int8 tensor the loaded graph computes from ``q`` before op ``stop`` (all ops
        by default), by name -- the same kernels as inference, one batch pass."""
        return run_graph(self.graph, q, self._luts, stop)

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
        # raw audio becomes features first (q15 on an MCU), as infer() does for every runtime
        q = self.run_int8(self.quantize_input(self.features(batch)))
        out: npt.NDArray[np.intp] = q.reshape(q.shape[0], -1).argmax(axis=1)
        return out

    def memory(self) -> MemoryUsage:
        if self._graph is None or self.plan is None or self.flash is None:
            return MemoryUsage(0, 0, "not loaded")
        front = (
            f" + MFCC frontend buffers {self.frontend_ram_bytes} bytes"
            if self.frontend_ram_bytes
            else ""
        )
        return MemoryUsage(
            weights=self.flash.total,
            working=self.plan.arena_bytes + self.frontend_ram_bytes,
            method=f"flash: {self.flash.describe()}; SRAM: greedy arena plan of the int8 "
            f"graph {self.plan.arena_bytes} bytes{front}",
        )

    def unload(self) -> None:
        self._graph, self._luts, self.plan, self.estimate = None, {}, None, None
        self.flash, self.frontend_ram_bytes = None, 0
        super().unload()

"""How fast a device computes: the number the latency model scales by.

A variant's latency is measured once, on the build host. To predict it on a
device we scale by the ratio of host to device compute throughput, both
expressed the same way: sustained single-thread fp32 multiply-accumulates per
second in a small dense matrix product (the core of conv/linear inference).

- A real device (``--profile auto``) measures it with numpy, when present.
- A simulated device class cannot be measured on this host, so it reports the
  nominal figure of its core: clock x peak MACs per cycle x 0.8 (a sustained
  fraction typical of BLAS kernels). Measured latencies from the fleet then
  refine each device's prediction (see ``edgefleet.coordinator.latency``).
- A microcontroller runs integer kernels (CMSIS-NN style); its latency comes from
  the per-op cycle model of its core (``edgefleet.cycles``), and its figure here is
  the int8 MACs per second of that model's dense (pointwise) kernel, for display and
  for the agents' benchmark report.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.cycles import (
    CORE_COSTS,
    STALL_FACTOR,
    Core,
    Layer,
    core_from_cpu,
    dense_fallback,
    frontend_layers,
    layers_from_json,
    predict,
)
from edgefleet.profiles import DeviceProfile

SUSTAINED_FRACTION = 0.8

# Peak single-core MACs per cycle by core type: fp32 FMA lanes per cycle for
# application cores (NEON/SVE pipes x 4 lanes), int8 MACs for MCU DSP/SIMD units.
_PEAK_MACS_PER_CYCLE: dict[str, float] = {
    "phone-flagship": 16.0,  # Cortex-X3: 4 x 128-bit FP pipes
    "phone-budget": 8.0,  # Cortex-A75: 2 x 128-bit
    "rpi5": 8.0,  # Cortex-A76: 2 x 128-bit
    "rpi4": 4.0,  # Cortex-A72: 2 x 64-bit effective for FMA
    "rpi3": 2.0,  # Cortex-A53: 1 x 128-bit (issued as 2 x 64)
    "rpi-zero2w": 2.0,  # Cortex-A53
    "jetson-nano": 4.0,  # Cortex-A57 (the GPU is not used by our CPU runtimes)
}


# How much faster than fp32 a core runs each precision's kernels. Cores with
# ARMv8.2 half-precision and dot-product instructions (A75/A76/X3) run fp16 at
# twice and int8 at about four times fp32; older cores (A53/A57/A72) have no
# fp16 arithmetic (converted to fp32, a little slower) and int8 through
# widening multiplies (about twice fp32). MCU figures above are already int8.
_PRECISION_SPEEDUP: dict[str, dict[str, float]] = {
    "dotprod": {"fp32": 1.0, "fp16": 2.0, "int8": 4.0},
    "armv8.0": {"fp32": 1.0, "fp16": 0.9, "int8": 2.0},
    "mcu": {"fp32": 1.0, "fp16": 1.0, "int8": 1.0},
}
_CORE_FAMILY: dict[str, str] = {
    "phone-flagship": "dotprod",
    "phone-budget": "dotprod",
    "rpi5": "dotprod",
    "rpi4": "armv8.0",
    "rpi3": "armv8.0",
    "rpi-zero2w": "armv8.0",
    "jetson-nano": "armv8.0",
}


def precision_speedup(profile: DeviceProfile, precision: str) -> float:
    """Throughput of ``precision`` kernels relative to fp32 on this device class (1.0 if unknown)."""
    family = "mcu" if profile.is_mcu else _CORE_FAMILY.get(profile.name)
    if family is None:
        return 1.0
    return _PRECISION_SPEEDUP[family].get(precision, 1.0)


@dataclass(frozen=True)
class Benchmark:
    macs_per_second: float
    method: str


def mcu_core(profile: DeviceProfile) -> Core:
    """The core family whose kernels an MCU profile runs, read from its CPU description.

    A profile naming no known core is costed as a Cortex-M4 (single-issue DSP, the slowest
    family here), so an unknown board is never promised more than it can do."""
    return core_from_cpu(profile.cpu) or Core.M4


def nominal_benchmark(profile: DeviceProfile) -> Benchmark | None:
    """The catalog figure for a simulated device class, or None if the class is unknown."""
    if profile.is_mcu:
        core = mcu_core(profile)
        mps = profile.cpu_mhz * 1e6 / cycles_per_mac(profile)
        return Benchmark(mps, f"nominal:{core.value}:cycle-model")
    peak = _PEAK_MACS_PER_CYCLE.get(profile.name)
    if peak is None:
        return None
    mps = profile.cpu_mhz * 1e6 * peak * SUSTAINED_FRACTION
    return Benchmark(mps, f"nominal:{profile.name}:{peak:g}-macs-per-cycle")


def cycles_per_mac(profile: DeviceProfile) -> float:
    """Cycles one int8 MAC of a dense (pointwise) kernel costs on an MCU profile's core,
    stalls included. A summary figure: predictions cost each op by its kind
    (:func:`edgefleet.cycles.predict`)."""
    return CORE_COSTS[mcu_core(profile)].dense * STALL_FACTOR


def manifest_layers(manifest: Mapping[str, Any], frontend: bool = True) -> tuple[Layer, ...]:
    """A variant's work on an MCU from its manifest: the graph's per-op counts
    (``metrics.ops``; a manifest written before them: its MACs as one pointwise layer) plus,
    for a model whose input is raw audio, the MFCC frontend the device computes first
    (``input.frontend`` over ``input.raw``'s samples, counted by ``FrontendSpec.cost``;
    left out with ``frontend=False``). Malformed counts raise ``CycleModelError``, a bad
    frontend ``FrontendError`` (both ``ValueError``)."""
    metrics = manifest.get("metrics") or {}
    ops = metrics.get("ops")
    if ops is not None:
        layers = layers_from_json(ops)
    else:
        layers = dense_fallback(int(metrics.get("macs", 0)))
    spec = (manifest.get("input") or {}).get("frontend")
    if frontend and isinstance(spec, Mapping):
        from edgefleet.frontend import FrontendSpec

        samples = int(manifest["input"]["raw"]["shape"][-1])
        cost = FrontendSpec.from_dict(spec).cost(samples)
        layers = (*layers, *frontend_layers({**cost.macs, **cost.ops}))
    return layers


def mcu_latency_ms(
    profile: DeviceProfile, manifest: Mapping[str, Any], frontend: bool = True
) -> float:
    """One inference of a variant on an MCU profile, from its manifest
    (:func:`manifest_layers` through the cycle model): what the coordinator predicts, so a
    runtime reporting simulated device time can report the same number. ``frontend=False``:
    the network alone (a runtime adds the frontend only for a request that needed it)."""
    layers = manifest_layers(manifest, frontend)
    return predict(mcu_core(profile), layers, profile.cpu_mhz).ms


def measure_host(duration: float = 0.3, size: int = 64) -> Benchmark:
    """Measure this machine: repeated ``size`` x ``size`` fp32 matmuls for ``duration`` seconds.

    Small matrices keep BLAS single-threaded, matching one inference thread.
    Without numpy (a minimal agent install) the clock-based estimate is used.
    """
    if importlib.util.find_spec("numpy") is None:
        import psutil

        freq = psutil.cpu_freq()
        mhz = freq.max if freq and freq.max else 1000.0
        return Benchmark(mhz * 1e6 * 4.0 * SUSTAINED_FRACTION, "estimated:clock")
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    for _ in range(20):  # warm up caches and the BLAS dispatch
        a @ b
    runs = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < duration:
        for _ in range(50):
            a @ b
        runs += 50
        elapsed = time.perf_counter() - start
    return Benchmark(runs * size**3 / elapsed, f"measured:numpy-matmul-{size}")


def device_benchmark(profile: DeviceProfile) -> Benchmark:
    """What an agent reports: nominal for simulated classes, measured otherwise."""
    if profile.simulated:
        nominal = nominal_benchmark(profile)
        if nominal is not None:
            return nominal
    return measure_host()

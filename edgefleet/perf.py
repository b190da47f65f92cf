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
- A microcontroller runs integer kernels (CMSIS-NN style); its figure is int8
  MACs per second, and ``cycles_per_mac`` feeds the MCU cycle model.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

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
    # MCUs: effective int8 MACs per cycle of CMSIS-NN / ESP-NN kernels (SIMD MACs
    # less load/requantization overhead), in line with published MLPerf Tiny latencies.
    "cortex-m7": 1.0,  # SMLAD dual MAC, dual-issue pipeline
    "cortex-m4": 0.4,  # SMLAD, single issue
    "esp32-s3": 1.0,  # PIE 128-bit SIMD
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
    "cortex-m7": "mcu",
    "cortex-m4": "mcu",
    "esp32-s3": "mcu",
}


def precision_speedup(profile: DeviceProfile, precision: str) -> float:
    """Throughput of ``precision`` kernels relative to fp32 on this device class (1.0 if unknown)."""
    family = _CORE_FAMILY.get(profile.name)
    if family is None:
        return 1.0
    return _PRECISION_SPEEDUP[family].get(precision, 1.0)


@dataclass(frozen=True)
class Benchmark:
    macs_per_second: float
    method: str


def nominal_benchmark(profile: DeviceProfile) -> Benchmark | None:
    """The catalog figure for a simulated device class, or None if the class is unknown."""
    peak = _PEAK_MACS_PER_CYCLE.get(profile.name)
    if peak is None:
        return None
    mps = profile.cpu_mhz * 1e6 * peak * SUSTAINED_FRACTION
    return Benchmark(mps, f"nominal:{profile.name}:{peak:g}-macs-per-cycle")


def cycles_per_mac(profile: DeviceProfile) -> float:
    """Cycles one int8 MAC costs on an MCU profile (inverse of its sustained rate)."""
    peak = _PEAK_MACS_PER_CYCLE.get(profile.name, 1.0)
    return 1.0 / (peak * SUSTAINED_FRACTION)


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

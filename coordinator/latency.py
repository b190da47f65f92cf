"""Per-device latency prediction, calibrated by the agent's micro-benchmark.

Every variant's latency is measured on the build host, per runtime. A
roofline-style split turns it into a device prediction:

- compute: ``MACs / (device MACs/s x precision speedup)``, the device's
  throughput from the agent's micro-benchmark (``edgefleet.perf``) and the
  speedup of int8/fp16 kernels on its core family;
- overhead: what the host measurement leaves beyond its own dense compute
  (operator dispatch, quantize/dequantize, memory traffic), scaled by the
  host/device throughput ratio;

times a per-device correction learnt from latencies the device reported. A
microcontroller's prediction comes from a cycle model instead: MACs x cycles
per MAC at the profile's clock, the way MCU inference cost is usually estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.selection import PRECISION_FAMILY, LatencyPredictor, VariantFacts
from coordinator.store import DeviceRecord
from edgefleet.perf import cycles_per_mac, precision_speedup
from edgefleet.profiles import DeviceProfile

_CORRECTION_BOUNDS = (0.1, 10.0)


@dataclass(frozen=True)
class DeviceLatencyModel(LatencyPredictor):
    profile: DeviceProfile
    device_macs_per_second: float
    host_macs_per_second: float
    correction: float = 1.0

    def uncorrected_ms(self, v: VariantFacts, runtime: str) -> float:
        if runtime == "mcu-sim":
            cycles = v.macs * cycles_per_mac(self.profile)
            return cycles / (self.profile.cpu_mhz * 1e3)
        host_compute_ms = v.macs / self.host_macs_per_second * 1e3
        host_ms = v.host_latency_ms.get(runtime)
        if host_ms is None:  # measured in another runtime only: use the slowest we know
            host_ms = max(v.host_latency_ms.values(), default=host_compute_ms)
        overhead_ms = max(0.0, host_ms - host_compute_ms)
        device = self.device_macs_per_second or self.host_macs_per_second
        family = PRECISION_FAMILY.get(v.precision, v.precision)
        compute_ms = v.macs / (device * precision_speedup(self.profile, family)) * 1e3
        return overhead_ms * self.host_macs_per_second / device + compute_ms

    def predict_ms(self, variant: VariantFacts, runtime: str) -> float:
        return self.uncorrected_ms(variant, runtime) * self.correction

    def refined(
        self, variant: VariantFacts, runtime: str, observed_ms: float
    ) -> DeviceLatencyModel:
        """The model corrected by one observed latency of ``variant`` on this device."""
        predicted = self.uncorrected_ms(variant, runtime)
        if predicted <= 0 or observed_ms <= 0:
            return self
        low, high = _CORRECTION_BOUNDS
        factor = min(high, max(low, observed_ms / predicted))
        return DeviceLatencyModel(
            self.profile, self.device_macs_per_second, self.host_macs_per_second, factor
        )


def model_for_device(
    record: DeviceRecord,
    host_macs_per_second: float,
    known: dict[str, VariantFacts],
    latest_metrics: dict[str, float],
) -> DeviceLatencyModel:
    """The device's latency model, refined by the latency it reports for its active variant."""
    model = DeviceLatencyModel(
        record.profile,
        record.benchmark_macs_per_second or host_macs_per_second,
        host_macs_per_second,
    )
    observed = latest_metrics.get("inference_latency_ms")
    active = known.get(record.active_variant)
    runtime = record.desired.runtime if record.desired.variant == record.active_variant else ""
    if observed and active is not None:
        runtime = runtime or next(iter(active.runtimes), "onnxruntime")
        return model.refined(active, runtime, observed)
    return model

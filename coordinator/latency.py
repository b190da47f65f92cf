"""Per-device latency prediction, calibrated by the agent's micro-benchmark.

Every variant's latency is measured on the build host, per runtime. On a device
it is predicted as ``host latency x host throughput / device throughput``,
both throughputs from the same micro-benchmark (``edgefleet.perf``), times a
per-device correction learnt from latencies the device actually reported. A
microcontroller's prediction comes from a cycle model instead: MACs x cycles
per MAC at the profile's clock, the way MCU inference cost is usually estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.selection import LatencyPredictor, VariantFacts
from coordinator.store import DeviceRecord
from edgefleet.perf import cycles_per_mac
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
        host_ms = v.host_latency_ms.get(runtime)
        if host_ms is None:  # measured in another runtime only: use the slowest we know
            host_ms = max(
                v.host_latency_ms.values(), default=v.macs / self.host_macs_per_second * 1e3
            )
        device = self.device_macs_per_second or self.host_macs_per_second
        return host_ms * self.host_macs_per_second / device

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

"""Per-device latency prediction, calibrated by the agent's micro-benchmark.

Every variant's latency is measured on the build host, per runtime. A
roofline-style split turns it into a device prediction:

- compute: ``MACs / (device MACs/s x precision speedup)``, the device's
  throughput from the agent's micro-benchmark (``edgefleet.perf``) and the
  speedup of int8/fp16 kernels on its core family;
- overhead: what the host measurement leaves beyond its own dense compute
  (operator dispatch, quantize/dequantize, memory traffic), scaled by the
  host/device throughput ratio;
- per-call overhead: what one call through the runtime costs on the device
  whatever the model (dispatch, copying input and logits), measured by the
  agent with an empty graph per runtime (``edgefleet.agent.runtimes.overhead``). For a
  small model it is most of the latency: without it a 0.035 ms prediction met
  0.2 ms measured and a healthy canary was rolled back. It is added in full,
  though the host figure holds some call overhead of its own: a slightly high
  prediction only makes the latency gate a little more lenient;

times a per-device correction learnt from latencies the device reported (its
own baseline: the measured latency of the variant it serves). A
microcontroller's prediction comes from the per-op cycle model of its core
instead (``edgefleet.cycles``: each layer's MACs, outputs and elements at that
op kind's cost on that core, at the profile's clock), from the per-layer counts
in the variant's manifest; a manifest without them is costed as one pointwise
layer of its MACs (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.coordinator.variant_selection import (
    CYCLE_MODEL_RUNTIMES,
    PRECISION_FAMILY,
    LatencyPredictor,
    VariantFacts,
)
from edgefleet.cycles import dense_fallback, predict
from edgefleet.metric_names import call_overhead_metric
from edgefleet.perf import mcu_core, precision_speedup
from edgefleet.profiles import DeviceProfile

_CORRECTION_BOUNDS = (0.1, 10.0)


@dataclass(frozen=True)
class DeviceLatencyModel(LatencyPredictor):
    profile: DeviceProfile
    device_macs_per_second: float
    host_macs_per_second: float
    correction: float = 1.0
    call_overhead_ms: Mapping[str, float] = field(default_factory=dict)  # per runtime

    def uncorrected_ms(self, v: VariantFacts, runtime: str) -> float:
        if runtime in CYCLE_MODEL_RUNTIMES:
            layers = v.layers or dense_fallback(v.macs)
            return predict(mcu_core(self.profile), layers, self.profile.cpu_mhz).ms
        return (
            self.call_overhead_ms.get(runtime, 0.0)
            + self._model_ms(v, runtime)
            + self.frontend_ms(v)
        )

    def frontend_ms(self, v: VariantFacts) -> float:
        """The float MFCC an application processor computes from raw audio before the network
        (its MACs at the device's rate; the host-measured latency is the network's alone). On
        an MCU the frontend is in the cycle model's layers instead."""
        if v.frontend is None:
            return 0.0
        device = self.device_macs_per_second or self.host_macs_per_second
        return v.frontend.total_macs / device * 1e3

    def _model_ms(self, v: VariantFacts, runtime: str) -> float:
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
        return replace(self, correction=factor)


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
        call_overhead_ms=reported_call_overheads(record, latest_metrics),
    )
    observed = latest_metrics.get("inference_latency_ms")
    active = known.get(record.active_variant)
    runtime = record.desired.runtime if record.desired.variant == record.active_variant else ""
    if observed and active is not None:
        runtime = runtime or next(iter(active.runtimes), "onnxruntime")
        return model.refined(active, runtime, observed)
    return model


def reported_call_overheads(
    record: DeviceRecord, latest_metrics: Mapping[str, float]
) -> dict[str, float]:
    """The per-call overhead the device's agent measured, per runtime of its profile."""
    out: dict[str, float] = {}
    for runtime in record.profile.runtimes:
        ms = latest_metrics.get(call_overhead_metric(runtime))
        if ms is not None and math.isfinite(ms) and ms >= 0:
            out[runtime] = ms
    return out

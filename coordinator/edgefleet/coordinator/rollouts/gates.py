"""Rollout gates: whether a device in an applied wave is healthy, from what it reports.

A device fails the gate when its activation failed, or when its reported error rate,
latency (against the prediction the rollout was planned with, adjusted for the runtime's
per-call overhead), accuracy or, for a language model, time to first token or decode rate is
out of bounds; it is *unjudged* while it has served too
few requests with the new variant for any of those numbers to mean something. Pure
functions of telemetry, so the manager only reads the store and applies the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgefleet.coordinator.rollouts.document import Gate, PlannedDevice, Rollout
from edgefleet.coordinator.variant_selection import CYCLE_MODEL_RUNTIMES
from edgefleet.metric_names import call_overhead_metric, variant_inferences_metric

NO_TRAFFIC = "no traffic: cannot judge"


@dataclass
class DeviceHealth:
    device_id: str
    activated: bool
    failed: str = ""  # non-empty: why the device counts against the gate
    unjudged: str = ""  # non-empty: activated, but too little traffic to judge it yet


def device_status(rollout: Rollout, device: PlannedDevice, health: DeviceHealth | None) -> str:
    """waiting | pending | active | failed | rolled_back, as operators read it."""
    if device.wave > rollout.current_wave:
        return "waiting"
    if rollout.state == "rolled_back":
        return "rolled_back"
    if health is None:
        return "pending"
    if health.failed:
        return "failed"
    return "active" if health.activated else "pending"


_CAUSE_NEEDLES = (
    ("by operator", "operator"),
    ("activation failed", "activation"),
    ("error rate", "error_rate"),
    ("latency", "latency"),
    ("accuracy", "accuracy"),
    ("time to first token", "ttft"),
    ("tokens/s", "decode_speed"),
    ("timed out", "timeout"),
)
ROLLBACK_CAUSES = tuple(cause for _, cause in _CAUSE_NEEDLES)


def rollback_cause(message: str) -> str:
    for needle, cause in _CAUSE_NEEDLES:
        if needle in message:
            return cause
    return "other"


def expected_latency_ms(metrics: dict[str, float], device: PlannedDevice) -> float:
    """The planned prediction, plus the runtime's per-call overhead if the device reported it
    only after the rollout was planned (agents measure it in the background at start)."""
    reported = metrics.get(call_overhead_metric(device.runtime), 0.0)
    if device.runtime in CYCLE_MODEL_RUNTIMES or not math.isfinite(reported):
        return device.predicted_latency_ms
    return device.predicted_latency_ms + max(0.0, reported - device.call_overhead_ms)


def metric_failure(metrics: dict[str, float], gate: Gate, device: PlannedDevice) -> str:
    predicted_ms = expected_latency_ms(metrics, device)
    error_rate = metrics.get("inference_error_rate")
    if error_rate is not None and error_rate > gate.max_error_rate:
        return f"error rate {error_rate:.1%} > {gate.max_error_rate:.1%}"
    if device.context_limit > 0:
        # a language model serves Generate only: the inference latency and accuracy a device
        # last reported belong to a classifier it served before, never to this variant
        return generation_failure(metrics, gate)
    latency = metrics.get("inference_latency_ms")
    if latency is not None and predicted_ms > 0 and latency / predicted_ms > gate.max_latency_ratio:
        baseline = device.baseline_latency_ms
        basis = f"; this device's baseline {baseline:.3g} ms" if baseline > 0 else ""
        return (
            f"latency {latency:.3g} ms is {latency / predicted_ms:.1f}x the predicted "
            f"{predicted_ms:.3g} ms (limit {gate.max_latency_ratio:g}x{basis})"
        )
    accuracy = metrics.get("inference_accuracy")
    if accuracy is not None and accuracy < gate.min_accuracy:
        return f"accuracy {accuracy:.1%} < {gate.min_accuracy:.1%}"
    return generation_failure(metrics, gate)


def generation_failure(metrics: dict[str, float], gate: Gate) -> str:
    """A language model's gates: median time to first token and decode rate, as reported."""
    ttft = metrics.get("generation_ttft_ms")
    if gate.max_ttft_ms > 0 and ttft is not None and ttft > gate.max_ttft_ms:
        return f"time to first token {ttft:.4g} ms > {gate.max_ttft_ms:g} ms"
    rate = metrics.get("generation_tokens_per_s")
    if gate.min_tokens_per_s > 0 and rate is not None and rate < gate.min_tokens_per_s:
        return f"decode {rate:.4g} tokens/s < {gate.min_tokens_per_s:g} tokens/s"
    return ""


def missing_evidence(metrics: dict[str, float], gate: Gate, variant: str) -> str:
    """Why the device's traffic is too little to judge ``variant`` ("" when it is enough)."""
    served = int(metrics.get(variant_inferences_metric(variant), 0.0))
    if served < gate.min_inferences:
        return f"{served} of {gate.min_inferences} inferences served"
    generation_gated = gate.max_ttft_ms > 0 or gate.min_tokens_per_s > 0
    if generation_gated and "generation_ttft_ms" not in metrics:
        return "no generation reported yet"  # a generation gate never passes on no evidence
    return ""

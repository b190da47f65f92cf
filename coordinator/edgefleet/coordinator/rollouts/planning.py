"""Planning a rollout: which devices, which variant each, and in which wave.

Pure functions over device records and variant facts, no I/O: a selector picks devices,
variant selection picks each device's best-fitting variant under the deploy's policy
tightened by the device's own latency budget, and a stable per-rollout order spreads the
devices over the waves. Kept apart from the manager so a plan can be read (and tested)
without Redis.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.latency import model_for_device
from edgefleet.coordinator.rollouts.document import (
    ACTIVE_STATES,
    DEFAULT_WAVES,
    STRATEGIES,
    PlannedDevice,
    Rollout,
    RolloutRequest,
)
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.coordinator.validation import DEVICE_ID_RE
from edgefleet.coordinator.variant_selection import Policy, Selection, VariantFacts, select
from edgefleet.selectors import EXAMPLES, ROLLOUT_FIELDS, SelectionError, parse_selection
from edgefleet.selectors import Selection as Selector

#: what selection gave a device (an Explanation, or an LMSelection)
_S = TypeVar("_S")

SLO_LABEL = "latency-slo-ms"


def device_facts(record: DeviceRecord) -> dict[str, Any]:
    """What a rollout selector (:mod:`edgefleet.selectors`) sees of a device record."""
    return {
        "device": record.id,
        "profile": record.profile.name,
        "ram": float(record.profile.ram_bytes),
        "runtime": tuple(record.profile.runtimes),  # any of them
        "labels": dict(record.labels),
    }


def parse_selector(selector: str) -> Selector:
    """Parse a rollout's selector (``all``, ``profile:rpi4``, ``label:site=lab``,
    ``device:ID``, ``ram>=1GiB and labels.site=lab``...) or raise InvalidArgument (one line)."""
    if not selector.strip():
        raise InvalidArgument("selector", f"required ({EXAMPLES})")
    try:
        parsed = parse_selection(selector, ROLLOUT_FIELDS)
    except SelectionError as exc:
        raise InvalidArgument("selector", str(exc)) from None
    for cond in parsed.predicate.conditions():
        if cond.field == "device" and not DEVICE_ID_RE.match(str(cond.value)):
            raise InvalidArgument("selector", f"malformed device id {cond.value!r} in {selector!r}")
    return parsed


def selector_matches(selector: str | Selector, record: DeviceRecord) -> bool:
    """Whether ``record`` is selected (a string is parsed first; see :func:`parse_selector`)."""
    parsed = parse_selector(selector) if isinstance(selector, str) else selector
    return parsed.matches(device_facts(record))


def validate_selector(selector: str) -> None:
    parse_selector(selector)


def wave_fractions(request: RolloutRequest) -> tuple[float, ...]:
    if request.strategy not in STRATEGIES:
        raise InvalidArgument("strategy", f"must be one of {', '.join(STRATEGIES)}")
    if request.strategy == "all":
        return (1.0,)
    if request.strategy == "canary":
        if not 0 < request.canary_fraction < 1:
            raise InvalidArgument("canary_fraction", "must be between 0 and 1 (exclusive)")
        return (request.canary_fraction, 1.0)
    waves = request.waves or DEFAULT_WAVES
    if any(not 0 < w <= 1 for w in waves) or list(waves) != sorted(set(waves)):
        raise InvalidArgument("waves", "must be increasing fractions in (0, 1]")
    return (*waves, 1.0) if waves[-1] < 1.0 else tuple(waves)


def assign_waves(count: int, fractions: Sequence[float]) -> list[int]:
    """Wave index of each of ``count`` ordered devices: wave i ends at ceil(f_i * count),
    and every wave gets at least one device while devices remain."""
    out: list[int] = []
    for wave, fraction in enumerate(fractions):
        end = max(len(out) + 1, math.ceil(fraction * count))
        while len(out) < min(end, count):
            out.append(wave)
    return out


def device_policy(record: DeviceRecord, policy: Policy) -> Policy:
    """The deploy's policy, tightened by the device's own latency budget, with the variant the
    device runs now as the incumbent selection keeps among near-equals.

    A device may carry a label ``latency-slo-ms`` (set with ``edgefleet-agent
    --label latency-slo-ms=5``): the per-inference budget of the application it
    serves. The stricter of it and the deploy's SLO applies.
    """
    policy = replace(policy, incumbent=record.active_variant or "")
    raw = record.labels.get(SLO_LABEL)
    if raw is None:
        return policy
    try:
        own = float(raw)
    except ValueError:
        return policy
    if not math.isfinite(own) or own <= 0:
        return policy
    slo = own if policy.latency_slo_ms is None else min(own, policy.latency_slo_ms)
    return replace(policy, latency_slo_ms=slo)


@dataclass(frozen=True)
class Explanation:
    selection: Selection
    device_macs_per_second: float
    latency_correction: float
    baseline_latency_ms: float = 0.0  # measured latency of the variant the device serves
    call_overhead_ms: Mapping[str, float] = field(default_factory=dict)  # per runtime


def explain(
    record: DeviceRecord,
    variants: list[VariantFacts],
    policy: Policy,
    host_macs_per_second: float,
    metrics: dict[str, float],
) -> Explanation:
    """The variant selection for one device, given the metrics it last reported."""
    known = {v.id: v for v in variants}
    predictor = model_for_device(record, host_macs_per_second, known, metrics)
    observed = metrics.get("inference_latency_ms", 0.0)
    return Explanation(
        select(record.profile, variants, predictor, device_policy(record, policy)),
        predictor.device_macs_per_second,
        predictor.correction,
        observed if observed > 0 and record.active_variant in known else 0.0,
        predictor.call_overhead_ms,
    )


def device_order(rollout_id: str, device_id: str) -> str:
    """A device's place in a rollout's order: stable, and spread over profiles."""
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()


def in_wave_order(
    rollout_id: str, chosen: Sequence[tuple[DeviceRecord, _S]], fractions: Sequence[float]
) -> list[tuple[tuple[DeviceRecord, _S], int]]:
    """Each chosen device (with what selection gave it) in the rollout's stable order, spread
    over profiles, with its wave: one order for classifier and LM rollouts alike."""
    ordered = sorted(chosen, key=lambda item: device_order(rollout_id, item[0].id))
    return list(zip(ordered, assign_waves(len(ordered), fractions), strict=True))


def plan_devices(
    rollout_id: str,
    chosen: list[tuple[DeviceRecord, Explanation]],
    fractions: Sequence[float],
) -> list[PlannedDevice]:
    """Each device with a winning variant, in a stable order spread over profiles, placed
    in its wave."""
    devices = []
    for (record, explained), wave in in_wave_order(rollout_id, chosen, fractions):
        winner = explained.selection.winner
        assert winner is not None and winner.runtime is not None
        devices.append(
            PlannedDevice(
                device_id=record.id,
                name=record.name,
                profile=record.profile.name,
                wave=wave,
                variant=winner.variant.id,
                recipe=winner.variant.recipe,
                runtime=winner.runtime,
                variant_bytes=winner.variant.bundle_bytes,
                predicted_latency_ms=winner.predicted_latency_ms or 0.0,
                previous=replace(record.desired, generation=0),
                baseline_latency_ms=explained.baseline_latency_ms,
                call_overhead_ms=explained.call_overhead_ms.get(winner.runtime, 0.0),
            )
        )
    return devices


def busy_rollout(device_id: str, rollouts: list[Rollout]) -> str:
    for r in rollouts:
        if r.state in ACTIVE_STATES and any(d.device_id == device_id for d in r.devices):
            return r.id
    return "?"

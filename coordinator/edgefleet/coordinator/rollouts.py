"""Staged rollouts: deploy a model's best-fitting variants to a selection of devices,
wave by wave, gated on reported health, rolling back automatically.

Level-triggered, like a Kubernetes controller: the rollout document in Redis is
the whole truth, and every ``tick`` (a) writes each device's desired state from
it (idempotent: the generation bumps only on change) and (b) looks at what the
devices report to decide the next transition. A coordinator that dies mid-rollout
resumes on restart exactly where the document says, and a lost message is
repaired by the next tick. Transitions are compare-and-set on a version, so two
replicas never apply conflicting ones.

States: ``running`` -> ``succeeded`` | ``rolled_back``; ``running`` <-> ``paused``;
an operator can roll back a running or paused rollout at any time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.coordinator.latency import model_for_device
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import DEVICE_ID_RE
from edgefleet.coordinator.state.model import Desired, DeviceRecord
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.variant_selection import Policy, Selection, VariantFacts, select
from edgefleet.metric_names import call_overhead_metric, variant_inferences_metric

STRATEGIES = ("all", "canary", "waves")
ACTIVE_STATES = ("running", "paused")
DEFAULT_WAVES = (0.05, 0.25, 1.0)
DEFAULT_CANARY = 0.1
#: Requests each device must have served with its new variant before its wave can pass.
DEFAULT_MIN_INFERENCES = 20
NO_TRAFFIC = "no traffic: cannot judge"
SLO_LABEL = "latency-slo-ms"


@dataclass(frozen=True)
class Gate:
    """When a wave counts as healthy, and when a rollout must roll back.

    A device that reports no inferences reports no error rate, latency or accuracy either,
    so without ``min_inferences`` every such gate would pass on no evidence. A wave whose
    devices have served fewer requests with the new variant holds ("no traffic: cannot
    judge") and, like a wave that never activates, rolls back when ``wave_timeout_seconds``
    runs out: a variant nobody could judge is not left half-deployed. 0 turns it off.
    """

    soak_seconds: float = 30.0
    max_failed_devices: int = 0  # activation failures tolerated per rollout
    max_error_rate: float = 0.05  # reported inference_error_rate
    max_latency_ratio: float = 3.0  # reported inference_latency_ms / predicted
    min_accuracy: float = 0.0  # reported inference_accuracy (where labels exist)
    wave_timeout_seconds: float = 600.0
    min_inferences: int = DEFAULT_MIN_INFERENCES


@dataclass(frozen=True)
class PlannedDevice:
    device_id: str
    name: str
    profile: str
    wave: int
    variant: str
    recipe: str
    runtime: str
    variant_bytes: int
    predicted_latency_ms: float
    previous: Desired
    #: What the device measured for the variant it served before (0: none). The prediction
    #: above is calibrated by it, so the latency gate compares with the device's own baseline.
    baseline_latency_ms: float = 0.0
    #: The runtime's per-call overhead included in the prediction (0: not reported yet).
    call_overhead_ms: float = 0.0


@dataclass(frozen=True)
class SkippedDevice:
    device_id: str
    name: str
    reason: str


@dataclass(frozen=True)
class Rollout:
    id: str
    model: str
    selector: str
    strategy: str
    waves: tuple[float, ...]
    gate: Gate
    devices: tuple[PlannedDevice, ...]
    skipped: tuple[SkippedDevice, ...]
    state: str = "running"
    current_wave: int = 0
    wave_started_at: float = 0.0
    wave_healthy_since: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    message: str = ""
    version: int = 0

    def in_applied_waves(self) -> list[PlannedDevice]:
        return [d for d in self.devices if d.wave <= self.current_wave]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        d: dict[str, Any] = json.loads(text)
        return cls(
            id=d["id"],
            model=d["model"],
            selector=d["selector"],
            strategy=d["strategy"],
            waves=tuple(d["waves"]),
            # a rollout stored before min_inferences existed keeps the gate it was created with
            gate=Gate(**{"min_inferences": 0, **d["gate"]}),
            devices=tuple(
                PlannedDevice(**{**p, "previous": Desired(**p["previous"])}) for p in d["devices"]
            ),
            skipped=tuple(SkippedDevice(**s) for s in d["skipped"]),
            state=d["state"],
            current_wave=d["current_wave"],
            wave_started_at=d["wave_started_at"],
            wave_healthy_since=d["wave_healthy_since"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            message=d["message"],
            version=d["version"],
        )


@dataclass(frozen=True)
class RolloutRequest:
    model: str
    selector: str
    strategy: str = "all"
    waves: tuple[float, ...] = ()
    canary_fraction: float = DEFAULT_CANARY
    gate: Gate = field(default_factory=Gate)
    policy: Policy = field(default_factory=Policy)


# --- selectors ----------------------------------------------------------------------------


def selector_matches(selector: str, record: DeviceRecord) -> bool:
    """``all``, ``profile:NAME`` (or a bare profile name), ``label:KEY=VALUE``,
    ``device:ID``; comma-separated terms match any of them."""
    for raw in selector.split(","):
        term = raw.strip()
        kind, sep, value = term.partition(":")
        if term == "all":
            return True
        if not sep:
            kind, value = "profile", term
        if kind == "profile" and record.profile.name == value:
            return True
        if kind == "device" and record.id == value:
            return True
        if kind == "label":
            key, _, want = value.partition("=")
            if record.labels.get(key) == want:
                return True
    return False


def validate_selector(selector: str) -> None:
    if not selector.strip():
        raise InvalidArgument("selector", "required (e.g. all, profile:rpi4, label:site=lab)")
    for raw in selector.split(","):
        term = raw.strip()
        kind, sep, value = term.partition(":")
        if term == "all" or (not sep and term):
            continue
        if kind not in ("profile", "label", "device") or not value:
            raise InvalidArgument("selector", f"bad term {term!r}")
        if kind == "label" and "=" not in value:
            raise InvalidArgument("selector", f"label terms are label:KEY=VALUE, got {term!r}")
        if kind == "device" and not DEVICE_ID_RE.match(value):
            raise InvalidArgument("selector", f"malformed device id in {term!r}")


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
    """The deploy's policy, tightened by the device's own latency budget.

    A device may carry a label ``latency-slo-ms`` (set with ``edgefleet-agent
    --label latency-slo-ms=5``): the per-inference budget of the application it
    serves. The stricter of it and the deploy's SLO applies.
    """
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


# --- the manager --------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    selection: Selection
    device_macs_per_second: float
    latency_correction: float
    baseline_latency_ms: float = 0.0  # measured latency of the variant the device serves
    call_overhead_ms: Mapping[str, float] = field(default_factory=dict)  # per runtime


@dataclass
class DeviceHealth:
    device_id: str
    activated: bool
    failed: str = ""  # non-empty: why the device counts against the gate
    unjudged: str = ""  # non-empty: activated, but too little traffic to judge it yet


class RolloutManager:
    """Creates rollouts, answers queries, and advances them on every ``tick``."""

    def __init__(
        self,
        store: FleetStore,
        variants: Callable[[str], list[VariantFacts]],
        host_macs_per_second: float,
        clock: Callable[[], float] = time.time,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._variants = variants
        self._host_mps = host_macs_per_second
        self._clock = clock

    # queries ----------------------------------------------------------------------------

    def _model_variants(self, model: str) -> list[VariantFacts]:
        try:
            return self._variants(model)
        except LookupError as exc:
            raise NotFound(f"unknown model {model!r} (see edgefleet models ls)") from exc
        except RuntimeError as exc:  # an unreadable manifest
            raise FailedPrecondition(str(exc)) from exc

    async def explain(
        self, device_id: str, model: str, policy: Policy | None = None
    ) -> Explanation:
        record = await self._store.get(device_id)
        if record is None:
            raise NotFound(f"device {device_id} is not registered")
        return await self._explain(record, self._model_variants(model), policy or Policy())

    async def _explain(
        self, record: DeviceRecord, variants: list[VariantFacts], policy: Policy
    ) -> Explanation:
        metrics = await self._store.latest_metrics(record.id)
        known = {v.id: v for v in variants}
        predictor = model_for_device(record, self._host_mps, known, metrics)
        observed = metrics.get("inference_latency_ms", 0.0)
        return Explanation(
            select(record.profile, variants, predictor, device_policy(record, policy)),
            predictor.device_macs_per_second,
            predictor.correction,
            observed if observed > 0 and record.active_variant in known else 0.0,
            predictor.call_overhead_ms,
        )

    async def get(self, rollout_id: str) -> Rollout:
        doc = await self._store.get_rollout(rollout_id)
        if doc is None:
            raise NotFound(f"rollout {rollout_id} does not exist")
        return Rollout.from_json(doc)

    async def list_rollouts(self) -> list[Rollout]:
        out = []
        for rid in await self._store.list_rollout_ids():
            doc = await self._store.get_rollout(rid)
            if doc is not None:
                out.append(Rollout.from_json(doc))
        return out

    # creation ---------------------------------------------------------------------------

    async def create(self, request: RolloutRequest) -> Rollout:
        validate_selector(request.selector)
        fractions = wave_fractions(request)
        variants = self._model_variants(request.model)
        if not variants:
            raise FailedPrecondition(f"model {request.model!r} has no variants to deploy")
        records = await self._store.get_many(await self._store.list_ids())
        matched = [r for r in records if selector_matches(request.selector, r)]
        if not matched:
            raise FailedPrecondition(f"selector {request.selector!r} matches no device")
        # A quick refusal with a count; not atomic, so the store's claim at the end decides
        # when CreateRollout calls race (it also covers rollouts stored before claims existed).
        busy = await self._devices_in_active_rollouts()
        clash = sorted(busy & {r.id for r in matched})
        if clash:
            raise FailedPrecondition(
                f"{len(clash)} selected device(s) are in an active rollout "
                f"(e.g. {clash[0]} in {busy_rollout(clash[0], await self.list_rollouts())}); "
                "pause, finish or roll it back first"
            )
        rollout_id = f"ro-{uuid.uuid4().hex[:10]}"
        planned: list[tuple[DeviceRecord, Explanation]] = []
        skipped: list[SkippedDevice] = []
        for record in matched:
            explained = await self._explain(record, variants, request.policy)
            if explained.selection.winner is None:
                skipped.append(SkippedDevice(record.id, record.name, explained.selection.reason))
            else:
                planned.append((record, explained))
        if not planned:
            raise FailedPrecondition(
                f"no selected device can run any variant of {request.model!r}: {skipped[0].reason}"
            )

        def order(item: tuple[DeviceRecord, Explanation]) -> str:  # stable, spread over profiles
            return hashlib.sha256(f"{rollout_id}:{item[0].id}".encode()).hexdigest()

        planned.sort(key=order)
        waves = assign_waves(len(planned), fractions)
        devices = []
        for (record, explained), wave in zip(planned, waves, strict=True):
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
        now = self._clock()
        rollout = Rollout(
            id=rollout_id,
            model=request.model,
            selector=request.selector,
            strategy=request.strategy,
            waves=fractions[: max(waves) + 1],
            gate=request.gate,
            devices=tuple(devices),
            skipped=tuple(skipped),
            wave_started_at=now,
            created_at=now,
            updated_at=now,
            message=f"wave 1 of {max(waves) + 1}: {waves.count(0)} device(s)",
        )
        refused = await self._store.create_rollout(
            rollout_id, rollout.to_json(), now, [d.device_id for d in devices]
        )
        if refused is not None:  # a concurrent CreateRollout claimed a device first
            raise FailedPrecondition(
                f"device {refused.device_id} is already in active rollout {refused.rollout_id}; "
                "let it finish or roll it back first"
                if refused.device_id
                else f"rollout id {refused.rollout_id} is taken; try again"
            )
        if self._metrics is not None:  # series exist at 0 before the first event
            for cause in ROLLBACK_CAUSES:
                self._metrics.rollout_rollbacks.labels(rollout.model, cause)
            self._metrics.rollout_waves.labels(rollout.model)
        await self._apply_desired(rollout)
        return rollout

    async def _devices_in_active_rollouts(self) -> set[str]:
        return {
            d.device_id
            for r in await self.list_rollouts()
            if r.state in ACTIVE_STATES
            for d in r.devices
        }

    # control ----------------------------------------------------------------------------

    async def control(self, rollout_id: str, action: str) -> Rollout:
        """``pause``, ``resume`` or ``rollback`` (retried on a concurrent transition)."""
        for _ in range(10):
            rollout = await self.get(rollout_id)
            if action == "pause":
                if rollout.state != "running":
                    raise FailedPrecondition(
                        f"rollout {rollout_id} is {rollout.state}, not running"
                    )
                new = self._transition(rollout, state="paused", message="paused by operator")
            elif action == "resume":
                if rollout.state != "paused":
                    raise FailedPrecondition(f"rollout {rollout_id} is {rollout.state}, not paused")
                now = self._clock()
                new = self._transition(
                    rollout, state="running", message="resumed", wave_started_at=now
                )
            elif action == "rollback":
                if rollout.state not in ACTIVE_STATES:
                    raise FailedPrecondition(f"rollout {rollout_id} is already {rollout.state}")
                new = self._transition(
                    rollout, state="rolled_back", message="rolled back by operator"
                )
            else:
                raise InvalidArgument("action", "must be pause, resume or rollback")
            if await self._store.update_rollout(rollout_id, rollout.version, new.to_json()):
                await self._apply_desired(new)
                self._count_transition(rollout, new)
                return new
        raise FailedPrecondition(f"rollout {rollout_id} is changing too fast; try again")

    def _transition(self, rollout: Rollout, **changes: Any) -> Rollout:
        return replace(rollout, version=rollout.version + 1, updated_at=self._clock(), **changes)

    # the control loop -------------------------------------------------------------------

    async def tick(self) -> None:
        """Reconcile every active or rolled-back rollout once."""
        states: dict[str, int] = {}
        devices: dict[tuple[str, str], int] = {}
        for rollout in await self.list_rollouts():
            if rollout.state in ACTIVE_STATES or rollout.state == "rolled_back":
                await self._apply_desired(rollout)
            if rollout.state == "running":
                rollout = await self._advance(rollout)
            states[rollout.state] = states.get(rollout.state, 0) + 1
            if rollout.state in ACTIVE_STATES and self._metrics is not None:
                health = {h.device_id: h for h in await self.health(rollout)}
                for d in rollout.devices:
                    status = device_status(rollout, d, health.get(d.device_id))
                    key = (rollout.model, status)
                    devices[key] = devices.get(key, 0) + 1
        if self._metrics is not None:
            self._metrics.set_rollouts(states, devices)

    def _count_transition(self, old: Rollout, new: Rollout) -> None:
        if self._metrics is None:
            return
        if new.state == "rolled_back":
            self._metrics.rollout_rollbacks.labels(old.model, rollback_cause(new.message)).inc()
        elif new.current_wave > old.current_wave:
            self._metrics.rollout_waves.labels(old.model).inc()

    async def _apply_desired(self, rollout: Rollout) -> None:
        """Write each applied device's desired state: the new variant, or its previous one
        after a rollback. Devices whose desired state another rollout has since taken
        over are left alone."""
        for device in rollout.in_applied_waves():
            if rollout.state == "rolled_back":
                target = device.previous
                current = await self._store.get(device.device_id)
                if current is None or current.desired.rollout != rollout.id:
                    continue
            else:
                target = Desired(
                    variant=device.variant,
                    model=rollout.model,
                    runtime=device.runtime,
                    rollout=rollout.id,
                    variant_bytes=device.variant_bytes,
                )
            await self._store.set_desired(device.device_id, target)

    async def health(self, rollout: Rollout) -> list[DeviceHealth]:
        """How each device in the applied waves is doing against the gate."""
        gate = rollout.gate
        out = []
        for device in rollout.in_applied_waves():
            record = await self._store.get(device.device_id)
            if record is None:
                out.append(DeviceHealth(device.device_id, False, "device was removed"))
                continue
            activated = record.active_variant == device.variant
            failed = ""
            if record.failed_variant == device.variant:
                failed = f"activation failed: {record.failure_reason or 'no reason given'}"
            unjudged = ""
            if not failed and activated:
                metrics = await self._store.latest_metrics(device.device_id)
                failed = _metric_failure(metrics, gate, device)
                unjudged = _missing_evidence(metrics, gate, device.variant)
            out.append(DeviceHealth(device.device_id, activated, failed, unjudged))
        return out

    async def _advance(self, rollout: Rollout) -> Rollout:
        """Apply at most one transition; returns the rollout as it now stands."""
        now = self._clock()
        health = await self.health(rollout)
        failures = [h for h in health if h.failed]
        gate = rollout.gate
        activation_failures = [h for h in failures if h.failed.startswith("activation failed")]
        metric_failures = [h for h in failures if h not in activation_failures]
        new: Rollout | None = None
        if metric_failures or len(activation_failures) > gate.max_failed_devices:
            worst = (metric_failures or activation_failures)[0]
            new = self._transition(
                rollout,
                state="rolled_back",
                message=f"gate failed on {worst.device_id}: {worst.failed} "
                f"({len(failures)} unhealthy device(s)); rolled back",
            )
        elif all(h.activated or h.failed for h in health) and any(h.unjudged for h in health):
            new = self._hold_unjudged(rollout, health, now)
        elif all(h.activated or h.failed for h in health):
            if not rollout.wave_healthy_since:
                new = self._transition(rollout, wave_healthy_since=now, message="soaking")
            elif now - rollout.wave_healthy_since >= gate.soak_seconds:
                last = max(d.wave for d in rollout.devices)
                if rollout.current_wave >= last:
                    new = self._transition(rollout, state="succeeded", message="all waves healthy")
                else:
                    wave = rollout.current_wave + 1
                    count = sum(1 for d in rollout.devices if d.wave == wave)
                    new = self._transition(
                        rollout,
                        current_wave=wave,
                        wave_started_at=now,
                        wave_healthy_since=0.0,
                        message=f"wave {wave + 1} of {last + 1}: {count} device(s)",
                    )
        elif now - rollout.wave_started_at > gate.wave_timeout_seconds:
            pending = [h.device_id for h in health if not h.activated and not h.failed]
            new = self._transition(
                rollout,
                state="rolled_back",
                message=f"wave timed out: {len(pending)} device(s) never activated "
                f"(e.g. {pending[0]}); rolled back",
            )
        if new is not None and await self._store.update_rollout(
            rollout.id, rollout.version, new.to_json()
        ):
            await self._apply_desired(new)
            self._count_transition(rollout, new)
            return new
        return rollout

    def _hold_unjudged(
        self, rollout: Rollout, health: list[DeviceHealth], now: float
    ) -> Rollout | None:
        """Every device activated but some served too little to judge: the wave holds (its
        soak starts over once they have), and rolls back when the wave times out."""
        unjudged = [h for h in health if h.unjudged]
        summary = f"{len(unjudged)} device(s), e.g. {unjudged[0].device_id}: {unjudged[0].unjudged}"
        if now - rollout.wave_started_at > rollout.gate.wave_timeout_seconds:
            return self._transition(
                rollout,
                state="rolled_back",
                message=f"wave timed out: {NO_TRAFFIC} ({summary}); rolled back",
            )
        message = f"holding: {NO_TRAFFIC} ({summary})"
        if message == rollout.message and not rollout.wave_healthy_since:
            return None  # nothing changed: no write
        return self._transition(rollout, wave_healthy_since=0.0, message=message)


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
    if device.runtime == "mcu-sim" or not math.isfinite(reported):
        return device.predicted_latency_ms
    return device.predicted_latency_ms + max(0.0, reported - device.call_overhead_ms)


def _metric_failure(metrics: dict[str, float], gate: Gate, device: PlannedDevice) -> str:
    predicted_ms = expected_latency_ms(metrics, device)
    error_rate = metrics.get("inference_error_rate")
    if error_rate is not None and error_rate > gate.max_error_rate:
        return f"error rate {error_rate:.1%} > {gate.max_error_rate:.1%}"
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
    return ""


def _missing_evidence(metrics: dict[str, float], gate: Gate, variant: str) -> str:
    """Why the device's traffic is too little to judge ``variant`` ("" when it is enough)."""
    served = int(metrics.get(variant_inferences_metric(variant), 0.0))
    if served >= gate.min_inferences:
        return ""
    return f"{served} of {gate.min_inferences} inferences served"


def busy_rollout(device_id: str, rollouts: list[Rollout]) -> str:
    for r in rollouts:
        if r.state in ACTIVE_STATES and any(d.device_id == device_id for d in r.devices):
            return r.id
    return "?"

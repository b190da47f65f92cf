"""The rollout manager: creates rollouts, answers queries, and advances them.

Level-triggered, like a Kubernetes controller: the rollout document in Redis is
the whole truth, and every ``tick`` (a) writes each device's desired state from
it (idempotent: the generation bumps only on change) and (b) looks at what the
devices report to decide the next transition. A coordinator that dies mid-rollout
resumes on restart exactly where the document says, and a lost message is
repaired by the next tick. Transitions are compare-and-set on a version, so two
replicas never apply conflicting ones.

An operator can pause, resume, or roll back a running or paused rollout at any time. What
to deploy where is :mod:`.planning` (:mod:`.lm_planning` for a language model: a variant and a
context limit per device); whether a device is healthy is :mod:`.gates`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.coordinator.lm_selection import LMSelection
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.rollouts.document import (
    ACTIVE_STATES,
    Rollout,
    RolloutRequest,
    SkippedDevice,
)
from edgefleet.coordinator.rollouts.gates import (
    NO_TRAFFIC,
    ROLLBACK_CAUSES,
    DeviceHealth,
    device_status,
    metric_failure,
    missing_evidence,
    rollback_cause,
)
from edgefleet.coordinator.rollouts.lm_planning import (
    plan_lm_devices,
    select_lm_device,
    select_lm_devices,
)
from edgefleet.coordinator.rollouts.planning import (
    Explanation,
    busy_rollout,
    explain,
    parse_selector,
    plan_devices,
    selector_matches,
    wave_fractions,
)
from edgefleet.coordinator.state.model import Desired, DeviceRecord
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.variant_selection import Policy, VariantFacts


class RolloutManager:
    """Creates rollouts, answers queries, and advances them on every ``tick``."""

    def __init__(
        self,
        store: FleetStore,
        variants: Callable[[str], list[VariantFacts]],
        host_macs_per_second: float,
        clock: Callable[[], float] = time.time,
        metrics: CoordinatorMetrics | None = None,
        lm_manifests: Callable[[str], Sequence[tuple[str, Mapping[str, Any]]]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._lm_manifests = lm_manifests
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

    def _model_lm_manifests(self, model: str) -> Sequence[tuple[str, Mapping[str, Any]]]:
        """``(id, manifest)`` of a language model's variants; empty for any other model."""
        if self._lm_manifests is None:
            return ()
        try:
            return self._lm_manifests(model)
        except LookupError as exc:
            raise NotFound(f"unknown model {model!r} (see edgefleet models ls)") from exc
        except (RuntimeError, ValueError, KeyError) as exc:  # an unreadable manifest
            raise FailedPrecondition(str(exc)) from exc

    async def explain_lm(self, device_id: str, model: str) -> LMSelection | None:
        """LM selection for a language model (context limit and the budget that set it);
        ``None`` when ``model`` is not a language model (the classifier path explains it)."""
        manifests = self._model_lm_manifests(model)
        if not manifests:
            return None
        record = await self._store.get(device_id)
        if record is None:
            raise NotFound(f"device {device_id} is not registered")
        try:
            return select_lm_device(record, manifests)
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"model {model!r}: malformed LM manifest ({exc})") from exc

    async def _explain(
        self, record: DeviceRecord, variants: list[VariantFacts], policy: Policy
    ) -> Explanation:
        metrics = await self._store.latest_metrics(record.id)
        return explain(record, variants, policy, self._host_mps, metrics)

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
        selector = parse_selector(request.selector)  # parsed once, matched per device
        fractions = wave_fractions(request)
        lm_manifests = self._model_lm_manifests(request.model)  # a language model?
        variants = [] if lm_manifests else self._model_variants(request.model)
        if not variants and not lm_manifests:
            raise FailedPrecondition(f"model {request.model!r} has no variants to deploy")
        records = await self._store.get_many(await self._store.list_ids())
        matched = [r for r in records if selector_matches(selector, r)]
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
        lm_planned: list[tuple[DeviceRecord, LMSelection]] = []
        skipped: list[SkippedDevice] = []
        if lm_manifests:  # each device: the LM variant and the context limit it holds
            try:
                lm_planned, skipped = select_lm_devices(matched, lm_manifests)
            except (ValueError, KeyError, TypeError) as exc:
                raise FailedPrecondition(
                    f"model {request.model!r}: malformed LM manifest ({exc})"
                ) from exc
        for record in [] if lm_manifests else matched:
            explained = await self._explain(record, variants, request.policy)
            if explained.selection.winner is None:
                skipped.append(SkippedDevice(record.id, record.name, explained.selection.reason))
            else:
                planned.append((record, explained))
        if not planned and not lm_planned:
            raise FailedPrecondition(
                f"no selected device can run any variant of {request.model!r}: {skipped[0].reason}"
            )
        devices = (
            plan_lm_devices(rollout_id, lm_planned, fractions)
            if lm_manifests
            else plan_devices(rollout_id, planned, fractions)
        )
        last_wave = max(d.wave for d in devices)
        now = self._clock()
        rollout = Rollout(
            id=rollout_id,
            model=request.model,
            selector=request.selector,
            strategy=request.strategy,
            waves=fractions[: last_wave + 1],
            gate=request.gate,
            devices=tuple(devices),
            skipped=tuple(skipped),
            wave_started_at=now,
            created_at=now,
            updated_at=now,
            message=f"wave 1 of {last_wave + 1}: {sum(d.wave == 0 for d in devices)} device(s)",
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
                    context_limit=device.context_limit,
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
                failed = metric_failure(metrics, gate, device)
                unjudged = missing_evidence(metrics, gate, device.variant)
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

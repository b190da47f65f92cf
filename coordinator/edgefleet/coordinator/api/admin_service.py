"""AdminService: fleet queries, rollouts and credentials, called by the CLI.

Every method needs an admin token (:func:`.guard.admin_rpc`: writes need the admin role,
reads accept read-only too), checks the request's bounds before the core sees it, and
converts rollouts, gates and variant verdicts to and from their wire messages.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from edgefleet.coordinator.api.convert import STATUS_FROM_WIRE, device_to_proto, timestamp
from edgefleet.coordinator.api.guard import admin_rpc
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import Registry
from edgefleet.coordinator.rollouts.document import DEFAULT_CANARY, Gate, Rollout, RolloutRequest
from edgefleet.coordinator.rollouts.gates import DeviceHealth, device_status
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.tokens import Tokens
from edgefleet.coordinator.validation import (
    check_finite,
    check_text,
    checked_policy,
    validate_device_id,
    validate_rollout_id,
)
from edgefleet.coordinator.variant_selection import Verdict
from edgefleet.limits import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_SELECTOR_CHARS, MAX_WAVES
from edgefleet.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)


def gate_from_proto(msg: admin_pb2.RolloutGate | None) -> Gate:
    default = Gate()
    if msg is None:
        return default
    for name in (
        "soak_seconds",
        "max_error_rate",
        "max_latency_ratio",
        "min_accuracy",
        "wave_timeout_seconds",
        "max_ttft_ms",
        "min_tokens_per_s",
    ):
        check_finite(f"gate.{name}", getattr(msg, name))
    gate = Gate(
        soak_seconds=msg.soak_seconds or default.soak_seconds,
        max_failed_devices=msg.max_failed_devices,
        max_error_rate=msg.max_error_rate or default.max_error_rate,
        max_latency_ratio=msg.max_latency_ratio or default.max_latency_ratio,
        min_accuracy=msg.min_accuracy,
        wave_timeout_seconds=msg.wave_timeout_seconds or default.wave_timeout_seconds,
        min_inferences=(
            msg.min_inferences if msg.HasField("min_inferences") else default.min_inferences
        ),
        max_ttft_ms=msg.max_ttft_ms,
        min_tokens_per_s=msg.min_tokens_per_s,
    )
    for name in (
        "soak_seconds",
        "max_failed_devices",
        "max_error_rate",
        "wave_timeout_seconds",
        "min_inferences",
        "max_ttft_ms",
        "min_tokens_per_s",
    ):
        if getattr(gate, name) < 0:
            raise InvalidArgument(f"gate.{name}", "must be >= 0")
    return gate


def _gate_to_proto(g: Gate) -> admin_pb2.RolloutGate:
    return admin_pb2.RolloutGate(
        soak_seconds=g.soak_seconds,
        max_failed_devices=g.max_failed_devices,
        max_error_rate=g.max_error_rate,
        max_latency_ratio=g.max_latency_ratio,
        min_accuracy=g.min_accuracy,
        wave_timeout_seconds=g.wave_timeout_seconds,
        min_inferences=g.min_inferences,
        max_ttft_ms=g.max_ttft_ms,
        min_tokens_per_s=g.min_tokens_per_s,
    )


def candidate_to_proto(v: Verdict, chosen: bool) -> admin_pb2.Candidate:
    return admin_pb2.Candidate(
        variant_id=v.variant.id,
        recipe=v.variant.recipe,
        precision=v.variant.precision,
        accuracy=v.variant.accuracy,
        bundle_bytes=v.variant.bundle_bytes,
        runtime=v.runtime or "",
        predicted_latency_ms=v.predicted_latency_ms or 0.0,
        fits=v.fits,
        failures=list(v.failures),
        chosen=chosen,
    )


def rollout_to_proto(r: Rollout, health: dict[str, DeviceHealth]) -> admin_pb2.Rollout:
    devices = []
    for d in r.devices:
        h = health.get(d.device_id)
        status = device_status(r, d, h)
        detail = h.failed if h is not None and status in ("failed", "rolled_back") else ""
        devices.append(
            admin_pb2.RolloutDevice(
                device_id=d.device_id,
                name=d.name,
                profile=d.profile,
                wave=d.wave,
                variant_id=d.variant,
                recipe=d.recipe,
                runtime=d.runtime,
                predicted_latency_ms=d.predicted_latency_ms,
                status=status,
                detail=detail,
                context_limit=d.context_limit,
            )
        )
    return admin_pb2.Rollout(
        id=r.id,
        model=r.model,
        selector=r.selector,
        strategy=r.strategy,
        state=r.state,
        current_wave=r.current_wave,
        waves=list(r.waves),
        message=r.message,
        devices=devices,
        skipped=[
            admin_pb2.SkippedDevice(device_id=s.device_id, name=s.name, reason=s.reason)
            for s in r.skipped
        ],
        created_at=timestamp(r.created_at),
        updated_at=timestamp(r.updated_at),
        gate=_gate_to_proto(r.gate),
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    """Fleet queries and changes for the CLI; every call needs the admin token."""

    def __init__(
        self,
        registry: Registry,
        tokens: Tokens,
        rollouts: RolloutManager,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._tokens = tokens
        self._rollouts = rollouts
        self._metrics = metrics

    @admin_rpc(write=False)
    async def ExplainDevice(
        self, request: admin_pb2.ExplainDeviceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ExplainDeviceResponse:
        validate_device_id(request.device_id)
        check_text("model", request.model, MAX_NAME_CHARS, required=True)
        policy = checked_policy(request.accuracy_tolerance, request.latency_slo_ms)
        lm = await self._rollouts.explain_lm(request.device_id, request.model)
        if lm is not None:  # a language model: the context limit and the budget that set it
            return admin_pb2.ExplainDeviceResponse(
                device_id=request.device_id,
                model=request.model,
                reason=lm.reason,
                chosen_variant=lm.winner.facts.id if lm.winner else "",
            )
        explained = await self._rollouts.explain(request.device_id, request.model, policy)
        chosen = explained.selection.winner
        return admin_pb2.ExplainDeviceResponse(
            device_id=request.device_id,
            model=request.model,
            reason=explained.selection.reason,
            chosen_variant=chosen.variant.id if chosen else "",
            candidates=[
                candidate_to_proto(v, chosen is not None and v.variant.id == chosen.variant.id)
                for v in explained.selection.verdicts
            ],
            device_macs_per_second=explained.device_macs_per_second,
            latency_correction=explained.latency_correction,
        )

    @admin_rpc(write=True)
    async def CreateRollout(
        self, request: admin_pb2.CreateRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RolloutResponse:
        check_text("model", request.model, MAX_NAME_CHARS, required=True)
        check_text("selector", request.selector, MAX_SELECTOR_CHARS)
        check_text("strategy", request.strategy, MAX_NAME_CHARS)
        check_finite("canary_fraction", request.canary_fraction)
        if len(request.waves) > MAX_WAVES:
            raise InvalidArgument("waves", f"at most {MAX_WAVES} waves")
        for i, fraction in enumerate(request.waves):
            check_finite(f"waves[{i}]", fraction)
        rollout = await self._rollouts.create(
            RolloutRequest(
                model=request.model,
                selector=request.selector,
                strategy=request.strategy or "all",
                waves=tuple(request.waves),
                canary_fraction=request.canary_fraction or DEFAULT_CANARY,
                gate=gate_from_proto(request.gate if request.HasField("gate") else None),
                policy=checked_policy(request.accuracy_tolerance, request.latency_slo_ms),
            )
        )
        log.info("created rollout %s of %s to %s", rollout.id, rollout.model, rollout.selector)
        return await self._rollout_reply(rollout)

    @admin_rpc(write=False)
    async def GetRollout(
        self, request: admin_pb2.GetRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RolloutResponse:
        validate_rollout_id(request.rollout_id)
        return await self._rollout_reply(await self._rollouts.get(request.rollout_id))

    @admin_rpc(write=False)
    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListRolloutsResponse:
        replies = [await self._rollout_reply(r) for r in await self._rollouts.list_rollouts()]
        return admin_pb2.ListRolloutsResponse(rollouts=[r.rollout for r in replies])

    @admin_rpc(write=True)
    async def ControlRollout(
        self, request: admin_pb2.ControlRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RolloutResponse:
        validate_rollout_id(request.rollout_id)
        check_text("action", request.action, MAX_NAME_CHARS)
        rollout = await self._rollouts.control(request.rollout_id, request.action)
        log.info("rollout %s: %s", rollout.id, request.action)
        return await self._rollout_reply(rollout)

    @admin_rpc(write=True)
    async def CreateEnrollmentToken(
        self,
        request: admin_pb2.CreateEnrollmentTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.CreateEnrollmentTokenResponse:
        token, expires = await self._registry.create_enrollment_token(
            request.uses, request.ttl_seconds
        )
        log.info("issued an enrollment token for %d device(s)", request.uses)
        return admin_pb2.CreateEnrollmentTokenResponse(
            token=token, expires_at=timestamp(expires), uses=request.uses
        )

    @admin_rpc(write=True)
    async def RevokeDevice(
        self, request: admin_pb2.RevokeDeviceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RevokeDeviceResponse:
        await self._registry.revoke_device(request.device_id)
        log.warning("revoked device %s", request.device_id)
        return admin_pb2.RevokeDeviceResponse()

    async def _rollout_reply(self, rollout: Rollout) -> admin_pb2.RolloutResponse:
        health = {h.device_id: h for h in await self._rollouts.health(rollout)}
        return admin_pb2.RolloutResponse(rollout=rollout_to_proto(rollout, health))

    @admin_rpc(write=False)
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListDevicesResponse:
        status = None
        if request.status != admin_pb2.DEVICE_STATUS_UNSPECIFIED:
            status = STATUS_FROM_WIRE.get(request.status)
            if status is None:
                raise InvalidArgument("status", f"unknown status {request.status}")
        if len(request.profile) > MAX_ID_CHARS:
            raise InvalidArgument("profile", f"longer than {MAX_ID_CHARS} characters")
        page = await self._registry.list_devices_page(
            profile=request.profile or None,
            status=status,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_pb2.ListDevicesResponse(
            devices=[device_to_proto(v) for v in page.views],
            next_page_token=page.next_page_token,
        )

    @admin_rpc(write=False)
    async def GetDevice(
        self, request: admin_pb2.GetDeviceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetDeviceResponse:
        view = await self._registry.get_device(request.device_id)
        return admin_pb2.GetDeviceResponse(device=device_to_proto(view))

    @admin_rpc(write=True)
    async def RemoveDevice(
        self, request: admin_pb2.RemoveDeviceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RemoveDeviceResponse:
        await self._registry.remove_device(request.device_id)
        log.info("removed device %s", request.device_id)
        return admin_pb2.RemoveDeviceResponse()

    @admin_rpc(write=False)
    async def GetFleetSummary(
        self, request: admin_pb2.GetFleetSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetFleetSummaryResponse:
        s = await self._registry.fleet_summary()
        return admin_pb2.GetFleetSummaryResponse(
            total=s.total,
            online=s.online,
            offline=s.offline,
            by_profile=[
                admin_pb2.ProfileCount(profile=p.profile, online=p.online, offline=p.offline)
                for p in s.by_profile
            ],
            offline_after_seconds=s.offline_after,
        )

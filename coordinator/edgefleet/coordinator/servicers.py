"""gRPC servicers: the only coordinator code that touches wire types.

Each method reads the bearer secret from metadata, converts the request to
plain objects (validating it), calls the registry, and converts back. Core
errors become status codes here, so every failure reaches the client as a
status with a message naming the problem, never as an internal error.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.coordinator.errors import (
    AUTH_FAILURE_REASONS,
    CoordinatorError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from edgefleet.coordinator.metrics import CoordinatorMetrics, profile_label
from edgefleet.coordinator.registry import (
    AGENT_STATES,
    MAX_TELEMETRY_BATCH,
    DeviceStatus,
    DeviceView,
    HeartbeatReport,
    Registration,
    Registry,
    validate_device_id,
)
from edgefleet.coordinator.rollouts import (
    DEFAULT_CANARY,
    DeviceHealth,
    Gate,
    Rollout,
    RolloutManager,
    RolloutRequest,
    device_status,
)
from edgefleet.coordinator.state.model import Desired, TelemetryIn
from edgefleet.coordinator.tokens import Tokens
from edgefleet.coordinator.variant_selection import Policy, Verdict
from edgefleet.limits import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_SELECTOR_CHARS,
    MAX_WAVES,
    finite_problem,
    shown_id,
)
from edgefleet.pki import DEVICE_URI_PREFIX
from edgefleet.profiles import ProfileError
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.wire import profile_from_proto, profile_to_proto

log = logging.getLogger(__name__)
T = TypeVar("T")

_STATE_FROM_WIRE = {
    device_pb2.AGENT_STATE_STARTING: "starting",
    device_pb2.AGENT_STATE_READY: "ready",
    device_pb2.AGENT_STATE_DEGRADED: "degraded",
    device_pb2.AGENT_STATE_STOPPING: "stopping",
}
_STATE_TO_WIRE = {v: k for k, v in _STATE_FROM_WIRE.items()}
_STATUS_TO_WIRE = {
    DeviceStatus.ONLINE: admin_pb2.DEVICE_STATUS_ONLINE,
    DeviceStatus.OFFLINE: admin_pb2.DEVICE_STATUS_OFFLINE,
}
_STATUS_FROM_WIRE = {v: k for k, v in _STATUS_TO_WIRE.items()}
assert set(_STATE_TO_WIRE) == set(AGENT_STATES)

_CODES: list[tuple[type[CoordinatorError], grpc.StatusCode]] = [
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The secret from ``authorization: Bearer <secret>`` metadata, or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


def peer_device_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The device id of the caller's verified client certificate (mutual TLS), else None.

    gRPC only fills the x509 fields after verifying the chain against our CA, so
    this is an identity the request body cannot forge.
    """
    auth = context.auth_context() or {}
    for value in auth.get("x509_subject_alternative_name", []):
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.startswith(DEVICE_URI_PREFIX):
            return text.removeprefix(DEVICE_URI_PREFIX)
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: CoordinatorError) -> NoReturn:
    for kind, code in _CODES:
        if isinstance(err, kind):
            await context.abort(code, str(err))
    await context.abort(grpc.StatusCode.INTERNAL, str(err))
    raise AssertionError("unreachable")  # context.abort always raises


def _auth_failure_reason(err: CoordinatorError) -> str:
    """The ``edgefleet_auth_failures_total`` reason of an error, "" if it is not one."""
    if isinstance(err, Unauthenticated | PermissionDenied):
        return err.reason if err.reason in AUTH_FAILURE_REASONS else ""
    return ""


async def _guard(
    context: grpc.aio.ServicerContext[Any, Any],
    call: Callable[[], Awaitable[T]],
    metrics: CoordinatorMetrics | None = None,
) -> T:
    """Run an RPC body; every core error leaves as its status code, and every
    authentication failure is counted on the way (one place for all RPCs)."""
    try:
        return await call()
    except ProfileError as err:
        await _abort(context, InvalidArgument(f"profile.{err.field}", err.reason))
    except CoordinatorError as err:
        reason = _auth_failure_reason(err)
        if reason and metrics is not None:
            metrics.auth_failures.labels(reason).inc()
        await _abort(context, err)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
AdminHandler = Callable[
    ["AdminServicer", Req, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Resp]
]


def admin_rpc(*, write: bool) -> Callable[[AdminHandler[Req, Resp]], AdminHandler[Req, Resp]]:
    """An admin RPC: the caller's token must carry the role (``write`` needs admin, reads
    accept read-only too), and every failure leaves as a gRPC status (:func:`_guard`)."""

    def wrap(body: AdminHandler[Req, Resp]) -> AdminHandler[Req, Resp]:
        @functools.wraps(body)
        async def rpc(
            self: AdminServicer, request: Req, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Resp:
            async def call() -> Resp:
                self._tokens.check_admin(bearer_token(context), write=write)
                return await body(self, request, context)

            return await _guard(context, call, self._metrics)

        return rpc

    return wrap


def _timestamp(unix: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


def desired_to_proto(d: Desired) -> device_pb2.DesiredState:
    return device_pb2.DesiredState(
        generation=d.generation,
        variant_id=d.variant,
        model=d.model,
        variant_bytes=d.variant_bytes,
        rollout_id=d.rollout,
        runtime=d.runtime,
    )


def device_to_proto(view: DeviceView) -> admin_pb2.Device:
    r = view.record
    return admin_pb2.Device(
        id=r.id,
        name=r.name,
        profile=profile_to_proto(r.profile),
        status=_STATUS_TO_WIRE[view.status],
        registered_at=_timestamp(r.registered_at),
        last_seen=_timestamp(r.last_seen),
        agent_version=r.agent_version,
        labels=r.labels,
        reported_state=_STATE_TO_WIRE.get(r.reported_state, device_pb2.AGENT_STATE_UNSPECIFIED),
        uptime_seconds=r.uptime_seconds,
        active_variant=r.active_variant,
        desired=desired_to_proto(r.desired),
        telemetry_records=r.telemetry_records,
        telemetry_sequence=r.telemetry_sequence,
        latest_metrics=view.latest_metrics,
        previous_variant=r.previous_variant,
        failed_variant=r.failed_variant,
        failure_reason=r.failure_reason,
        benchmark=device_pb2.DeviceBenchmark(
            macs_per_second=r.benchmark_macs_per_second, method=r.benchmark_method
        ),
    )


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):  # type: ignore[misc]
    """Register, Heartbeat and ReportTelemetry, called by agents."""

    def __init__(
        self,
        registry: Registry,
        metrics: CoordinatorMetrics,
        bundle_public_keys: tuple[str, ...] = (),
        device_endpoint: str = "",
        known_variant: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._known_variant = known_variant  # bounds the variant label of relayed metrics
        self._bundle_keys = list(bundle_public_keys)
        self.device_endpoint = device_endpoint  # set by the server once the port is bound
        # set by the server when it runs or knows a SuperLink; sent with every heartbeat
        self.federation: device_pb2.Federation | None = None

    async def Register(
        self, request: device_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> device_pb2.RegisterResponse:
        async def call() -> device_pb2.RegisterResponse:
            if not request.HasField("profile"):
                raise InvalidArgument("profile", "required")
            reg = Registration(
                instance_key=request.instance_key,
                name=request.name,
                profile=profile_from_proto(request.profile),
                agent_version=request.agent_version,
                labels=dict(request.labels),
                benchmark_macs_per_second=request.benchmark.macs_per_second,
                benchmark_method=request.benchmark.method,
            )
            enrolled = await self._registry.register(bearer_token(context), reg, request.csr_pem)
            self._metrics.registrations.labels(
                "created" if enrolled.created else "reregistered", profile_label(reg.profile.name)
            ).inc()
            log.info(
                "%s device %s (%s, %s)",
                "registered" if enrolled.created else "re-registered",
                enrolled.device_id,
                reg.name,
                reg.profile.name,
            )
            return device_pb2.RegisterResponse(
                device_id=enrolled.device_id,
                credential=enrolled.credential,
                heartbeat_interval_seconds=enrolled.heartbeat_interval,
                bundle_public_keys=self._bundle_keys,
                certificate_pem=enrolled.certificate_pem,
                ca_certificate_pem=enrolled.ca_certificate_pem,
                device_endpoint=self.device_endpoint,
            )

        try:
            return await _guard(context, call, self._metrics)
        except BaseException:
            profile = profile_label(request.profile.name)
            self._metrics.registrations.labels("rejected", profile).inc()
            raise

    async def Heartbeat(
        self, request: device_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> device_pb2.HeartbeatResponse:
        async def call() -> device_pb2.HeartbeatResponse:
            state = _STATE_FROM_WIRE.get(request.state)
            if state is None:
                raise InvalidArgument("state", f"unknown agent state {request.state}")
            report = HeartbeatReport(
                state=state,
                sequence=request.sequence,
                uptime_seconds=request.uptime_seconds,
                active_variant=request.active_variant,
                previous_variant=request.previous_variant,
                failed_variant=request.failed_variant,
                failure_reason=request.failure_reason,
            )
            desired = await self._registry.heartbeat(
                request.device_id, bearer_token(context), report, peer_device_id(context)
            )
            return device_pb2.HeartbeatResponse(
                desired=desired_to_proto(desired),
                heartbeat_interval_seconds=self._registry.settings.heartbeat_interval,
                server_time_unix=time.time(),
                federation=self.federation,
            )

        try:
            reply = await _guard(context, call, self._metrics)
        except BaseException:
            code = context.code()
            outcome = code.name.lower() if isinstance(code, grpc.StatusCode) else "unknown"
            self._metrics.heartbeats.labels(outcome).inc()
            raise
        self._metrics.heartbeats.labels("ok").inc()
        return reply

    async def ReportTelemetry(
        self,
        request: device_pb2.ReportTelemetryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> device_pb2.ReportTelemetryResponse:
        async def call() -> device_pb2.ReportTelemetryResponse:
            if len(request.records) > MAX_TELEMETRY_BATCH:  # before converting any of them
                raise InvalidArgument("records", f"at most {MAX_TELEMETRY_BATCH} records per call")
            records = [telemetry_from_proto(r) for r in request.records]
            outcome, device, new = await self._registry.report_telemetry(
                request.device_id, bearer_token(context), records, peer_device_id(context)
            )
            for r in new:
                if r.value is not None:
                    self._metrics.relay_device_metric(
                        r.name,
                        r.value,
                        device.active_variant,
                        device.profile.name,
                        self._known_variant,
                    )
            self._metrics.telemetry_records.labels("accepted").inc(outcome.accepted)
            self._metrics.telemetry_records.labels("duplicate").inc(outcome.duplicates)
            return device_pb2.ReportTelemetryResponse(
                acked_sequence=outcome.acked_sequence,
                accepted=outcome.accepted,
                duplicates=outcome.duplicates,
            )

        return await _guard(context, call, self._metrics)


def _finite(field: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    problem = finite_problem(value, low=low, high=high)
    if problem:
        raise InvalidArgument(field, problem)
    return value


def _check_text(field: str, value: str, limit: int, *, required: bool = False) -> None:
    """Refuse a missing or over-long name before any error message could echo it."""
    if required and not value:
        raise InvalidArgument(field, "required")
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")


_ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def validate_rollout_id(rollout_id: str) -> None:
    """Refuse a malformed rollout id before it reaches the store or an error message."""
    if not rollout_id:
        raise InvalidArgument("rollout_id", "required")
    if len(rollout_id) > MAX_ID_CHARS or not _ROLLOUT_ID_RE.match(rollout_id):
        raise InvalidArgument(
            "rollout_id",
            f"malformed id {shown_id(rollout_id)} (at most {MAX_ID_CHARS} of [A-Za-z0-9._-])",
        )


def _policy(tolerance: float, slo_ms: float) -> Policy:
    _finite("accuracy_tolerance", tolerance)
    _finite("latency_slo_ms", slo_ms)
    if tolerance < 0 or tolerance > 1:
        raise InvalidArgument("accuracy_tolerance", "must be a fraction in [0, 1]")
    if slo_ms < 0:
        raise InvalidArgument("latency_slo_ms", "must be >= 0")
    return Policy(
        accuracy_tolerance=tolerance or Policy().accuracy_tolerance,
        latency_slo_ms=slo_ms or None,
    )


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
    ):
        _finite(f"gate.{name}", getattr(msg, name))
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
    )
    for name in (
        "soak_seconds",
        "max_failed_devices",
        "max_error_rate",
        "wave_timeout_seconds",
        "min_inferences",
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
        created_at=_timestamp(r.created_at),
        updated_at=_timestamp(r.updated_at),
        gate=_gate_to_proto(r.gate),
    )


def telemetry_from_proto(msg: device_pb2.TelemetryRecord) -> TelemetryIn:
    body = msg.WhichOneof("body")
    if body == "metric":
        return TelemetryIn(
            sequence=msg.sequence,
            time_unix=msg.time_unix,
            name=msg.metric.name,
            value=msg.metric.value,
            labels=dict(msg.metric.labels),
        )
    if body == "event":
        return TelemetryIn(
            sequence=msg.sequence,
            time_unix=msg.time_unix,
            name=msg.event.kind,
            message=msg.event.message,
            labels=dict(msg.event.attributes),
        )
    raise InvalidArgument(f"records[seq={msg.sequence}]", "needs a metric or an event")


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
        _check_text("model", request.model, MAX_NAME_CHARS, required=True)
        policy = _policy(request.accuracy_tolerance, request.latency_slo_ms)
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
        _check_text("model", request.model, MAX_NAME_CHARS, required=True)
        _check_text("selector", request.selector, MAX_SELECTOR_CHARS)
        _check_text("strategy", request.strategy, MAX_NAME_CHARS)
        _finite("canary_fraction", request.canary_fraction)
        if len(request.waves) > MAX_WAVES:
            raise InvalidArgument("waves", f"at most {MAX_WAVES} waves")
        for i, fraction in enumerate(request.waves):
            _finite(f"waves[{i}]", fraction)
        rollout = await self._rollouts.create(
            RolloutRequest(
                model=request.model,
                selector=request.selector,
                strategy=request.strategy or "all",
                waves=tuple(request.waves),
                canary_fraction=request.canary_fraction or DEFAULT_CANARY,
                gate=gate_from_proto(request.gate if request.HasField("gate") else None),
                policy=_policy(request.accuracy_tolerance, request.latency_slo_ms),
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
        _check_text("action", request.action, MAX_NAME_CHARS)
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
            token=token, expires_at=_timestamp(expires), uses=request.uses
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
            status = _STATUS_FROM_WIRE.get(request.status)
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

"""DeviceService: Register, Heartbeat and ReportTelemetry, called by agents.

Each method reads the caller's credential (bearer metadata, and on the device endpoint
its certificate), converts the request to plain objects, calls the registry, and
converts back; failures leave as status codes through :func:`.guard.guard`.

Every Register and Heartbeat reply carries the fleet's trusted bundle signing keys and the
device endpoints of every live replica, complete each time (level-triggered, like the desired
state): a key rotation or a new replica reaches every agent within one heartbeat, and an agent
whose replica dies already knows where to go next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from edgefleet.coordinator.api.convert import STATE_FROM_WIRE, desired_to_proto
from edgefleet.coordinator.api.guard import bearer_token, guard, peer_device_id
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.metrics import CoordinatorMetrics, profile_label
from edgefleet.coordinator.registry import HeartbeatReport, Registration, Registry
from edgefleet.coordinator.state.model import TelemetryIn
from edgefleet.coordinator.validation import MAX_TELEMETRY_BATCH
from edgefleet.v1 import device_pb2, device_pb2_grpc
from edgefleet.wire import profile_from_proto

log = logging.getLogger(__name__)


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


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):  # type: ignore[misc]
    """Register, Heartbeat and ReportTelemetry, called by agents."""

    def __init__(
        self,
        registry: Registry,
        metrics: CoordinatorMetrics,
        bundle_public_keys: Callable[[], Sequence[str]] | Sequence[str] = (),
        device_endpoint: str = "",
        known_variant: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._known_variant = known_variant  # bounds the variant label of relayed metrics
        # the fleet's trusted signing keys, read per reply (a rotation needs no restart)
        fixed = () if callable(bundle_public_keys) else tuple(bundle_public_keys)
        self._bundle_keys: Callable[[], Sequence[str]] = (
            bundle_public_keys if callable(bundle_public_keys) else lambda: fixed
        )
        self.device_endpoint = device_endpoint  # set by the server once the port is bound
        # every live replica's device endpoint, ours first; kept current by the server
        self.device_endpoints: list[str] = []
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
                bundle_public_keys=self._bundle_keys(),
                certificate_pem=enrolled.certificate_pem,
                ca_certificate_pem=enrolled.ca_certificate_pem,
                device_endpoint=self.device_endpoint,
                device_endpoints=self.device_endpoints,
            )

        try:
            return await guard(context, call, self._metrics)
        except BaseException:
            profile = profile_label(request.profile.name)
            self._metrics.registrations.labels("rejected", profile).inc()
            raise

    async def Heartbeat(
        self, request: device_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> device_pb2.HeartbeatResponse:
        async def call() -> device_pb2.HeartbeatResponse:
            state = STATE_FROM_WIRE.get(request.state)
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
                bundle_public_keys=self._bundle_keys(),
                device_endpoints=self.device_endpoints,
            )

        try:
            reply = await guard(context, call, self._metrics)
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

        return await guard(context, call, self._metrics)

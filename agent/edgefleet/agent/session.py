"""The agent's conversation with the coordinator: enrol once, then heartbeat.

Level-triggered like a Kubernetes kubelet: every heartbeat reply carries the
whole desired state, so a lost message is repaired by the next one and the
agent never has to replay anything. When the coordinator is away the agent
retries with exponential backoff and full jitter; when the coordinator has
forgotten the device (removed, or its state wiped) the agent re-enrols under
its instance key.

Failover: the coordinator lists every live replica's device endpoint (at Register and in
every heartbeat reply; persisted in the identity). The agent orders them by rendezvous
hashing of its instance key, so a fleet spreads evenly over the replicas, and when a replica
joins or comes back only the devices that prefer it move there (the rebalancing an L4 load
balancer with max-connection-age would do, without one). When the endpoint in use stops answering,
the agent moves to the next one after a short jittered pause (``FAILOVER_PAUSE_SECONDS``, so a
fleet does not stampede the survivor in lockstep), and falls back to exponential backoff only
once every listed endpoint failed in a row. Device identity is the mutual-TLS certificate and
the shared credential in Redis, so any replica of the fleet accepts the device as it is.
The trusted bundle signing keys come with every heartbeat reply too (key rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import grpc
import psutil

from edgefleet.agent.artifacts import ArtifactCache, IntegrityError
from edgefleet.agent.battery import Battery
from edgefleet.agent.config import AgentConfig, FatalAgentError
from edgefleet.agent.desired import Desired
from edgefleet.agent.federation import FederationMember, FederationTarget
from edgefleet.agent.identity import Identity, load_identity, new_instance_key, save_identity
from edgefleet.agent.reconcile import Reconciler
from edgefleet.agent.serving import Serving
from edgefleet.agent.telemetry import BufferedRecord, TelemetryBuffer
from edgefleet.agent.transport import Transport, rendezvous_order
from edgefleet.agent.work import AgentWork
from edgefleet.perf import device_benchmark
from edgefleet.v1 import artifact_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.version import __version__
from edgefleet.wire import profile_to_proto

if TYPE_CHECKING:
    pass

log = logging.getLogger("edgefleet.agent")
RPC_TIMEOUT_SECONDS = 10.0
# How long one reconcile pass waits for a download before the loop moves on (the download
# continues in the background; a small bundle is usually active within the same pass).
RECONCILE_WAIT_SECONDS = 1.0
TELEMETRY_BATCH = 200
# Pause before trying the next replica after one failed (uniform in [0, this]): long enough to
# spread a fleet's reconnections, short enough that failover takes a heartbeat or two.
FAILOVER_PAUSE_SECONDS = 1.0
# gRPC codes that say "this endpoint is not answering": move to another replica
_ENDPOINT_DOWN = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def desired_from_proto(message: device_pb2.DesiredState) -> Desired:
    """The wire's desired state as the plain value everything past the session works with."""
    return Desired(
        generation=int(message.generation),
        variant_id=message.variant_id,
        runtime=message.runtime,
        model=message.model,
        rollout_id=message.rollout_id,
        variant_bytes=int(message.variant_bytes),
        context_limit=int(message.context_limit),
    )


@dataclass
class DesiredView:
    """The last desired state the coordinator sent (what later features reconcile toward)."""

    generation: int = 0
    variant_id: str = ""


class AgentSession:
    """Runs until ``stop`` is set; returns normally after a clean goodbye."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.desired = DesiredView()
        self.heartbeats_sent = 0
        self._started = time.monotonic()
        self._interval = 5.0
        self._identity = self._load_or_create_identity()
        self.telemetry = TelemetryBuffer(config.state_dir, config.telemetry_max_records)
        self.telemetry.event("agent_started", f"profile {config.profile.name}")
        self._process = psutil.Process()
        self.benchmark = device_benchmark(config.profile)
        self.artifacts = ArtifactCache(
            config.state_dir,
            self._identity.bundle_public_keys,
            link_kbps=config.profile.link_kbps if config.simulate_link else 0,
        )
        self.serving = Serving(config.profile, config.state_dir)
        self.battery = Battery(config.profile)
        self.work = AgentWork(config, self.serving, self.artifacts, self.telemetry, self.battery)
        self.reconciler = Reconciler(
            self.artifacts,
            device_id=self._identity.device_id,
            wait_seconds=RECONCILE_WAIT_SECONDS,
            runner=self.serving,
        )
        self.variant_status = self.reconciler.status()
        self._desired_state = Desired()
        self.transport = Transport(config.coordinator, config.state_dir, config.ca_cert)
        self._artifacts_stub: artifact_pb2_grpc.ArtifactServiceStub | None = None
        self.federation = FederationMember(
            config.state_dir,
            config.profile,
            config.local_data,
            ca_cert=config.ca_cert,
            labels=config.labels,
            enabled=config.federation,
        )
        self._federation_target = FederationTarget()
        self._endpoint_index = 0  # which of device_targets() the device channel dials
        self._coordinator_index = 0  # which --coordinator address Register goes to
        self._failed_in_a_row = 0  # endpoints that failed since the last success
        self.failovers = 0  # how often the agent moved to another endpoint (tests read it)
        self._refused_keys: tuple[str, ...] = ()

    @property
    def identity(self) -> Identity:
        return self._identity

    def device_targets(self) -> list[str]:
        """Where device calls may go, in failover order ("" = the coordinator address)."""
        if self._identity.device_endpoints:
            return list(self._identity.device_endpoints)
        if self._identity.device_endpoint:
            return [self._identity.device_endpoint]
        return self.transport.coordinators

    @property
    def current_endpoint(self) -> str:
        targets = self.device_targets()
        return targets[self._endpoint_index % len(targets)]

    @property
    def enrollment_target(self) -> str:
        addresses = self.transport.coordinators
        return addresses[self._coordinator_index % len(addresses)]

    def fail_over(self, enrolling: bool) -> float:
        """Move to the next address after a failure; the delay before trying it."""
        self._failed_in_a_row += 1
        if enrolling:
            self._coordinator_index += 1
            count = len(self.transport.coordinators)
        else:
            self._endpoint_index += 1
            count = len(self.device_targets())
        if count > 1:
            self.failovers += 1
        if self._failed_in_a_row < count:  # an untried address is left: go there soon
            return self.config.backoff.rng.uniform(0.0, FAILOVER_PAUSE_SECONDS)
        self._failed_in_a_row = 0  # a whole round failed: back off before the next one
        return self.config.backoff.next_delay()

    def learn_from_reply(self, keys: tuple[str, ...], endpoints: tuple[str, ...]) -> None:
        """Keep the trusted signing keys and replica endpoints a reply carried (empty = same)."""
        changed: dict[str, tuple[str, ...]] = {}
        if keys and keys != self._identity.bundle_public_keys:
            try:
                self.artifacts.set_trusted_keys(keys)
            except IntegrityError as exc:  # keep trusting what we trusted; say why once
                if keys != self._refused_keys:
                    log.error("ignoring the coordinator's signing keys: %s", exc)
                    self._refused_keys = keys
            else:
                changed["bundle_public_keys"] = keys
                log.info("trusted bundle signing keys: %s", ", ".join(k[:12] for k in keys))
        if endpoints and set(endpoints) != set(self._identity.device_endpoints):
            # a replica joined, came back or left: go to this device's preferred one (the
            # fleet rebalances); the same set in another order changes nothing
            changed["device_endpoints"] = rendezvous_order(self._identity.instance_key, endpoints)
            self._endpoint_index = 0
        if changed:
            self._identity = replace(self._identity, **changed)  # type: ignore[arg-type]
            save_identity(self.config.state_dir, self._identity)

    def _load_or_create_identity(self) -> Identity:
        identity = load_identity(self.config.state_dir)
        if identity is None:
            identity = Identity(
                instance_key=new_instance_key(), coordinator=self.config.coordinator
            )
            save_identity(self.config.state_dir, identity)
        return identity

    def _forget_enrollment(self, why: str) -> None:
        log.warning("%s; enrolling again as instance %s", why, self._identity.instance_key[:8])
        self._identity = replace(self._identity, device_id="", credential="")
        save_identity(self.config.state_dir, self._identity)

    async def _register(self, stub: device_pb2_grpc.DeviceServiceStub) -> None:
        if not self.config.enroll_token:
            raise FatalAgentError(
                "this agent is not enrolled and has no enrollment token "
                "(pass --token-file, or set EDGEFLEET_ENROLL_TOKEN)"
            )
        request = device_pb2.RegisterRequest(
            instance_key=self._identity.instance_key,
            name=self.config.name,
            profile=profile_to_proto(self.config.profile),
            agent_version=__version__,
            labels=self.config.labels,
            benchmark=device_pb2.DeviceBenchmark(
                macs_per_second=self.benchmark.macs_per_second, method=self.benchmark.method
            ),
            csr_pem=self.transport.csr(self.config.name),
        )
        try:
            reply = await stub.Register(
                request,
                metadata=(("authorization", f"Bearer {self.config.enroll_token}"),),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,  # a revoked device: retrying cannot help
            ):
                raise FatalAgentError(f"registration refused: {err.details()}") from err
            raise
        if self.transport.secure:
            if not reply.certificate_pem:
                raise FatalAgentError("the coordinator issued no device certificate over TLS")
            self.transport.save_certificate(reply.certificate_pem, reply.ca_certificate_pem)
        self._identity = replace(
            self._identity,
            device_id=reply.device_id,
            credential=reply.credential,
            coordinator=self.config.coordinator,
            bundle_public_keys=tuple(reply.bundle_public_keys),
            device_endpoint=reply.device_endpoint,
            device_endpoints=rendezvous_order(
                self._identity.instance_key, tuple(reply.device_endpoints)
            ),
        )
        self._endpoint_index = 0
        save_identity(self.config.state_dir, self._identity)
        self.artifacts.set_trusted_keys(self._identity.bundle_public_keys)
        self.reconciler.device_id = reply.device_id
        self._interval = reply.heartbeat_interval_seconds or self._interval
        log.info("registered as %s (profile %s)", reply.device_id, self.config.profile.name)
        self.telemetry.event("registered", reply.device_id)

    async def _heartbeat(
        self, stub: device_pb2_grpc.DeviceServiceStub, state: int, timeout: float
    ) -> None:
        self.heartbeats_sent += 1
        reply = await stub.Heartbeat(
            device_pb2.HeartbeatRequest(
                device_id=self._identity.device_id,
                state=state,  # type: ignore[arg-type]
                sequence=self.heartbeats_sent,
                uptime_seconds=time.monotonic() - self._started,
                active_variant=self.variant_status.active_variant,
                previous_variant=self.variant_status.previous_variant,
                failed_variant=self.variant_status.failed_variant,
                failure_reason=self.variant_status.failure_reason,
            ),
            metadata=(("authorization", f"Bearer {self._identity.credential}"),),
            timeout=timeout,
        )
        self._interval = reply.heartbeat_interval_seconds or self._interval
        self.learn_from_reply(tuple(reply.bundle_public_keys), tuple(reply.device_endpoints))
        self._desired_state = desired_from_proto(reply.desired)
        self._federation_target = (
            FederationTarget(reply.federation.superlink_address, reply.federation.tls)
            if reply.HasField("federation")
            else FederationTarget()
        )
        desired = DesiredView(reply.desired.generation, reply.desired.variant_id)
        if desired != self.desired:
            log.info("desired state generation %d: %s", desired.generation, desired)
            self.telemetry.event("desired_state_changed", f"generation {desired.generation}")
            self.desired = desired

    async def _reconcile(self, stub: artifact_pb2_grpc.ArtifactServiceStub) -> None:
        """Move toward the desired variant; the status goes out with the next heartbeat."""
        before = self.variant_status
        self.variant_status = status = await self.reconciler.reconcile(
            self._desired_state,
            stub,
            (("authorization", f"Bearer {self._identity.credential}"),),
        )
        # level-triggered like the variant: the coordinator's context limit for it, every pass
        self.serving.limit_context(
            self._desired_state.variant_id, self._desired_state.context_limit
        )
        if status.active_variant != before.active_variant:
            self.telemetry.event("variant_activated", status.active_variant)
            self.work.variant_activated()
        if status.failed_variant and status.failed_variant != before.failed_variant:
            self.telemetry.event("variant_failed", status.failure_reason)

    async def _reconcile_federation(self) -> None:
        """Keep this device's SuperNode pointed at the SuperLink the coordinator names."""
        message = await asyncio.to_thread(
            self.federation.reconcile, self._federation_target, self._identity.device_id
        )
        if message:
            self.telemetry.event("federation", message)

    def _sample(self) -> None:
        """Buffer this interval's measurements of the agent itself."""
        self.telemetry.metric("agent_rss_bytes", self._process.memory_info().rss)
        self.telemetry.metric("agent_uptime_seconds", time.monotonic() - self._started)
        self.telemetry.metric("telemetry_dropped_records", self.telemetry.dropped())
        self.work.sample()
        if self.federation.node is not None:
            health = "degraded" if self.variant_status.failed_variant else "ok"
            self.federation.write_status(self.battery.percent, health)
            self.telemetry.metric("fl_supernode_up", float(self.federation.running))
            self.telemetry.metric("fl_supernode_restarts", float(self.federation.restarts))

    async def _flush_telemetry(
        self, stub: device_pb2_grpc.DeviceServiceStub, timeout: float
    ) -> None:
        """Send buffered records oldest first; delete each batch once acknowledged."""
        while batch := self.telemetry.peek(TELEMETRY_BATCH):
            reply = await stub.ReportTelemetry(
                device_pb2.ReportTelemetryRequest(
                    device_id=self._identity.device_id,
                    records=[_record_to_proto(r) for r in batch],
                ),
                metadata=(("authorization", f"Bearer {self._identity.credential}"),),
                timeout=timeout,
            )
            if self.telemetry.ack(reply.acked_sequence) == 0:
                break  # the coordinator holds less than we sent; retry next interval

    async def run(self, stop: asyncio.Event) -> None:
        enrollment: grpc.aio.Channel | None = None
        enrolled_via = -1
        device: grpc.aio.Channel | None = None
        dialled = ""
        stub: device_pb2_grpc.DeviceServiceStub | None = None
        state = device_pb2.AGENT_STATE_STARTING
        await self.work.start()
        try:
            while not stop.is_set():
                # measure every interval, reachable or not: the buffer carries it over
                self._sample()
                enrolling = False
                try:
                    if (
                        self.transport.secure
                        and self._identity.enrolled
                        and not self.transport.has_certificate()
                    ):
                        self._forget_enrollment("no device certificate in the state dir")
                    if not self._identity.enrolled:
                        enrolling = True
                        if enrollment is None or enrolled_via != self._coordinator_index:
                            if enrollment is not None:
                                await enrollment.close()
                            enrollment = self.transport.enrollment_channel(self._coordinator_index)
                            enrolled_via = self._coordinator_index
                        await self._register(device_pb2_grpc.DeviceServiceStub(enrollment))
                        enrolling = False
                        if device is not None:
                            await device.close()
                            device = None
                    if device is not None and dialled != self.current_endpoint:
                        await device.close()  # failed over: dial the next replica
                        device = None
                    if device is None:
                        dialled = self.current_endpoint
                        device = self.transport.device_channel(dialled)
                        stub = device_pb2_grpc.DeviceServiceStub(device)
                        self._artifacts_stub = artifact_pb2_grpc.ArtifactServiceStub(device)
                    assert stub is not None
                    await self._heartbeat(stub, state, RPC_TIMEOUT_SECONDS)
                    state = device_pb2.AGENT_STATE_READY
                    await self._reconcile_federation()
                    await self._reconcile(self._artifacts_stub)
                    await self._flush_telemetry(stub, RPC_TIMEOUT_SECONDS)
                    if self.config.backoff.attempt or self._failed_in_a_row:
                        log.info("coordinator reachable again at %s", dialled)
                    self.config.backoff.reset()
                    self._failed_in_a_row = 0
                    delay = self._interval
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    if code == grpc.StatusCode.NOT_FOUND:
                        self._forget_enrollment("coordinator does not know this device")
                        continue
                    if code in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        self._forget_enrollment(
                            f"coordinator rejected this device ({err.details()})"
                        )
                        continue
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        raise FatalAgentError(
                            f"coordinator refused a heartbeat: {err.details()}"
                        ) from err
                    failed = self.enrollment_target if enrolling else dialled
                    delay = (
                        self.fail_over(enrolling)
                        if code in _ENDPOINT_DOWN
                        else self.config.backoff.next_delay()
                    )
                    target = self.enrollment_target if enrolling else self.current_endpoint
                    log.warning(
                        "coordinator %s unreachable (%s); retrying in %.1fs%s",
                        failed,
                        code.name,
                        delay,
                        "" if target == failed else f" with {target}",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            await self.reconciler.aclose()
            await self.work.stop()
            if stub is not None:
                await self._say_goodbye(stub)
        finally:
            await asyncio.to_thread(self.federation.stop)
            if device is not None:
                await device.close()
            if enrollment is not None:
                await enrollment.close()
        self.telemetry.close()

    async def _say_goodbye(self, stub: device_pb2_grpc.DeviceServiceStub) -> None:
        """Tell the coordinator we are going, so the device shows offline at once (best effort)."""
        if not self._identity.enrolled:
            return
        try:
            self.telemetry.event("agent_stopping")
            await self._flush_telemetry(stub, timeout=2.0)
            await self._heartbeat(stub, device_pb2.AGENT_STATE_STOPPING, timeout=2.0)
        except grpc.aio.AioRpcError as err:
            log.info("could not say goodbye to the coordinator (%s)", err.code().name)


def _record_to_proto(r: BufferedRecord) -> device_pb2.TelemetryRecord:
    if r.kind == "metric":
        return device_pb2.TelemetryRecord(
            sequence=r.sequence,
            time_unix=r.time_unix,
            metric=device_pb2.Metric(name=r.name, value=r.value or 0.0, labels=r.labels),
        )
    return device_pb2.TelemetryRecord(
        sequence=r.sequence,
        time_unix=r.time_unix,
        event=device_pb2.Event(kind=r.name, message=r.message, attributes=r.labels),
    )

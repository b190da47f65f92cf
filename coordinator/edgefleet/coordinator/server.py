"""Start and stop the coordinator: Redis, the gRPC server, health and reflection.

The server binds to 127.0.0.1 by default; serving other interfaces is an
explicit choice (``--host``). The standard health and reflection services are
served next to ours so ``grpcurl`` and load balancers work without our protos.

Replica hygiene (issue 18): health follows Redis (a background probe sets every
service NOT_SERVING while Redis does not answer, SERVING again when it does), so
a load balancer stops routing to a replica that can only answer UNAVAILABLE; the
fleet and rollout gauges are read from Redis on every replica; a clean stop
releases the rollout-controller lease; an external Redis that persists nothing is
reported loudly at start (log line and ``edgefleet_state_store_persistent``).

Size: over 500 lines because this is the one place that assembles a replica (Redis, the
fleet identity, the gRPC server with its services and two ports, metrics, the SuperLink,
the advertised device endpoint) and stops the parts in order. Each part's logic lives in
its own module (``fleet_identity``, ``replica_endpoints``, ``limits``, ``fl.superlink``...);
what stays is wiring that reads best as one start-up sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from edgefleet.coordinator.api.admin_service import AdminServicer
from edgefleet.coordinator.api.artifact_service import add_artifact_service
from edgefleet.coordinator.api.device_service import DeviceServicer
from edgefleet.coordinator.api.job_service import add_job_service, model_known_in
from edgefleet.coordinator.api.metrics_interceptor import MetricsInterceptor
from edgefleet.coordinator.api.model_service import ModelServicer
from edgefleet.coordinator.api.training_service import add_training_service
from edgefleet.coordinator.datadir_lock import lock_data_dir
from edgefleet.coordinator.embedded_redis import EmbeddedRedis
from edgefleet.coordinator.errors import Unavailable
from edgefleet.coordinator.fl.runs import SuperLinkTarget, TrainingRuns
from edgefleet.coordinator.fleet_identity import check_fleet_record
from edgefleet.coordinator.limits import Limits, StreamSlots, raise_fd_limit, server_options
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import Registry, RegistrySettings
from edgefleet.coordinator.replica_endpoints import ReplicaEndpoints, advertised_endpoint
from edgefleet.coordinator.rollout_controller import (
    RolloutController,
    replica_owner,
    rollout_gauges,
)
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.shared_store import open_store
from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.fleet_identity import FleetIdentityState
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from edgefleet.coordinator.variants import KnownVariants, model_lm_manifests, model_variants
from edgefleet.fleet_dir import TrustedKeys, load_identity
from edgefleet.fsutil import atomic_write
from edgefleet.interceptors import ValidationInterceptor, WriteDeadlineInterceptor
from edgefleet.perf import measure_host
from edgefleet.pki import CertificateAuthority
from edgefleet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

if TYPE_CHECKING:
    from edgefleet.coordinator.fl.fleet_superlink import FleetSuperLink
    from edgefleet.coordinator.fl.superlink import SuperLinkSupervisor

log = logging.getLogger(__name__)

REDIS_URL_ENV = "EDGEFLEET_REDIS_URL"
#: a separate Redis for the build queue (RQ cannot use a Redis Cluster); default: the fleet's
JOBS_REDIS_URL_ENV = "EDGEFLEET_JOBS_REDIS_URL"
SERVICE_NAMES = (
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CoordinatorConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    redis_url: str | None = None
    settings: RegistrySettings = field(default_factory=RegistrySettings)
    insecure: bool = False  # plaintext, one port: only with --insecure (logged loudly)
    device_port: int = 0  # mutual-TLS device endpoint; 0 = any free port
    tls_hosts: tuple[str, ...] = ()  # extra names/addresses for the server certificate
    metrics_port: int = 9464  # 0 = any free port, -1 = no metrics endpoint
    metrics_refresh: float = 5.0  # seconds between reads of the fleet gauges from Redis
    rollout_interval: float = 2.0  # seconds between rollout controller passes
    health_probe_interval: float = 1.0  # seconds between pings of Redis for the health status
    host_macs_per_second: float = 0.0  # 0 = measure this host at start (latency model)
    # Flower SuperLink for federated fine-tuning: "local" (run and supervise one),
    # "off", or the HOST:PORT of an external one (agents are told where it is)
    superlink: str = "off"
    superlink_port: int = 0  # for "local"; 0 = any free port
    # the host agents are told to reach the device port and SuperLink at ("" = host); needed
    # when binding a wildcard such as 0.0.0.0, which is not an address a device can dial
    advertise_host: str = ""
    limits: Limits = field(default_factory=Limits)  # streams, connections (issue 14)
    # the fleet identity (CA + bundle signing key) every replica shares; None = the data
    # dir's own, created on first start (the embedded single-node default)
    fleet_dir: Path | None = None
    rotate_signing_key: bool = False  # accept a new signing key over the fleet's recorded one
    # the stable NAME:PORT devices dial for this replica's device endpoint (e.g. a TCP load
    # balancer's; TLS passes through it); "" = advertise_host (or host) and the device port
    advertise_device: str = ""

    @property
    def public_host(self) -> str:
        return self.advertise_host or self.host


class Coordinator:
    """A running coordinator. Use ``await Coordinator.start(config)`` then ``await stop()``."""

    def __init__(
        self,
        config: CoordinatorConfig,
        server: grpc.aio.Server,
        store: FleetStore,
        embedded: EmbeddedRedis | None,
        tokens: Tokens,
        port: int,
        health_servicer: health.aio.HealthServicer,
        registry: Registry,
        metrics: CoordinatorMetrics,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.port = port
        self.metrics = metrics
        self.metrics_port: int | None = None
        self._server = server
        self._store = store
        self._embedded = embedded
        self._health = health_servicer
        self._registry = registry
        self._metrics_http: WSGIServer | None = None
        self.rollout_controller: RolloutController | None = None
        self.device_endpoint = ""
        self._refresh_task: asyncio.Task[None] | None = None
        self.superlink: SuperLinkSupervisor | None = None
        self.superlink_address = ""
        self.rollouts: RolloutManager | None = None
        self.service_names: tuple[str, ...] = ()
        # how Redis persists the fleet ("aof", "rdb", "aof+rdb", "" none, None unknown)
        self.redis_persistence: str | None = "aof"
        # names this process's coordinator.json: pids repeat across containers (all pid 1)
        self.instance = uuid.uuid4().hex
        self._probe_task: asyncio.Task[None] | None = None
        self._serving = True
        self.ca_cert_path: Path | None = None  # the fleet CA agents and the CLI trust
        self.endpoints: ReplicaEndpoints | None = None  # advertised in the fleet's list
        self.fleet_superlink: FleetSuperLink | None = None  # --superlink local: the lease's
        self.device_servicer: DeviceServicer | None = None
        #: where TrainingService submits runs (a one-item list the service reads on each call)
        self.federation_target: list[SuperLinkTarget | None] = [None]

    @property
    def metrics_address(self) -> str | None:
        return None if self.metrics_port is None else f"{self.config.host}:{self.metrics_port}"

    def _start_metrics(self) -> None:
        if self.config.metrics_port < 0:
            return
        try:
            http, _ = start_http_server(
                self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry
            )
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: {exc} "
                "(choose another --metrics-port, 0 for any, -1 for none)"
            ) from exc
        self._metrics_http = http
        self.metrics_port = int(http.server_port)
        self._refresh_task = asyncio.create_task(self._refresh_fleet_gauges())

    async def refresh_fleet_gauges(self) -> None:
        """Read the fleet counts from Redis into the device gauges (also called by tests).

        The counts come from the store's per-profile liveness indexes, kept on
        write: one round trip of O(profiles x log N), not a read of every device.
        """
        start = time.perf_counter()
        try:
            summary = await self._registry.fleet_summary()
            latest, outcomes = await self._store.fl_snapshot()
            rollouts = None if self.rollouts is None else await rollout_gauges(self.rollouts)
        except Unavailable:  # Redis away: say so, keep the last values, try again next time
            self.metrics.state_store_up.set(0)
            return
        counts: dict[tuple[str, str], int] = {}
        for p in summary.by_profile:
            counts[("online", p.profile)] = p.online
            counts[("offline", p.profile)] = p.offline
        self.metrics.set_fleet(counts)
        if rollouts is not None:  # from Redis, not from this replica's last tick as leader
            self.metrics.set_rollouts(*rollouts)
        if self.fleet_superlink is not None:
            self.superlink = self.fleet_superlink.supervisor
        if self.superlink is not None:
            self.metrics.superlink_up.set(1 if self.superlink.running() else 0)
        elif self.superlink_address:
            self.metrics.superlink_up.set(-1)
        self.metrics.set_federated(latest, outcomes)
        self.metrics.state_store_up.set(1)
        self.metrics.fleet_refresh_seconds.set(time.perf_counter() - start)

    async def _refresh_fleet_gauges(self) -> None:
        while True:
            start = time.perf_counter()
            await self.refresh_fleet_gauges()
            took = time.perf_counter() - start
            # A refresh is cheap (counts are kept on write), but never let it use more than a
            # third of the loop's time if Redis is slow (heartbeats come first).
            await asyncio.sleep(max(self.config.metrics_refresh, 2 * took))

    async def probe_state_store(self) -> bool:
        """Ping Redis once and make health say what it found; True if Redis answered.

        A replica whose Redis is away can only answer UNAVAILABLE, so every service
        (and the overall "" status) is NOT_SERVING until Redis answers again.
        """
        ok = await self._store.ping(timeout=max(0.5, self.config.health_probe_interval))
        if ok != self._serving:
            if ok:
                log.warning("Redis answers again: health SERVING")
            else:
                log.warning("Redis does not answer: health NOT_SERVING until it does")
            self._serving = ok
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *self.service_names):
                await self._health.set(name, status)
        self.metrics.state_store_up.set(1 if ok else 0)
        return ok

    async def _probe_state_store(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_probe_interval)
            try:
                await self.probe_state_store()
            except Exception:  # never let the probe die: health would freeze
                log.exception("state store probe failed")

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def device_address(self) -> str:
        """Where devices send every call after Register (mutual TLS), or ``address``."""
        return self.device_endpoint or self.address

    @property
    def redis_description(self) -> str:
        if self._embedded is not None:
            return f"embedded redis at {self._embedded.url} (data in {self._embedded.data_dir})"
        return f"redis at {_redact(self.config.redis_url or '')}"

    @classmethod
    async def start(cls, config: CoordinatorConfig) -> Coordinator:
        lock_data_dir(config.data_dir)  # first: a second coordinator must touch nothing here
        config.data_dir.mkdir(parents=True, exist_ok=True)
        raise_fd_limit()
        tokens = Tokens.load(config.data_dir)
        embedded = None
        url = config.redis_url
        if not url:
            embedded = await asyncio.to_thread(EmbeddedRedis.start, config.data_dir)
            url = embedded.url
        try:  # one server, a cluster or a sentinel-managed master: the URL's scheme says
            client = connect(url)
        except ValueError:
            if embedded is not None:
                embedded.stop()
            raise
        store = FleetStore(client)
        try:
            await store.check()
        except Exception:
            await store.close()
            if embedded is not None:
                embedded.stop()
            raise
        persistence = "aof" if embedded is not None else await store.persistence()
        _report_persistence(persistence)
        tls_dir = config.data_dir / "tls"  # this replica's own server certificate
        fleet = FleetIdentityState(client, store.keys)
        try:
            identity, ca_dir = load_identity(
                config.fleet_dir, config.data_dir, tls=not config.insecure
            )
            trusted = TrustedKeys(identity)
            await check_fleet_record(fleet, identity, trusted, rotate=config.rotate_signing_key)
        except BaseException:
            await store.close()
            if embedded is not None:
                embedded.stop()
            raise
        ca = identity.ca
        registry = Registry(store, tokens, config.settings, ca=ca)

        metrics = CoordinatorMetrics()
        limits = config.limits
        server = grpc.aio.server(
            # outermost first: metrics count what validation refuses; the write deadline
            # is innermost, where a stream's messages are written
            interceptors=[
                MetricsInterceptor(metrics),
                ValidationInterceptor(),
                WriteDeadlineInterceptor(limits.stream_write_timeout),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *server_options(limits),
            ],
        )
        # variants: shared through Redis with every replica and worker when Redis is external;
        # the data dir alone with the embedded Redis (the single-node default); shared_store
        variants = open_store(
            config.data_dir,
            None if embedded is not None else url,
            signing_key_path=identity.signing_key_path,  # the fleet's key, wherever mounted
        )
        variants.materialize_datasets = False  # the server reads models, never their data
        device_servicer = DeviceServicer(
            registry, metrics, trusted.current, known_variant=KnownVariants(variants)
        )
        device_pb2_grpc.add_DeviceServiceServicer_to_server(device_servicer, server)
        host_mps = (
            config.host_macs_per_second or (await asyncio.to_thread(measure_host)).macs_per_second
        )
        rollouts = RolloutManager(
            store,
            lambda model: model_variants(variants, model),
            host_mps,
            metrics=metrics,
            lm_manifests=lambda model: model_lm_manifests(variants, model),
        )
        controller = RolloutController(
            rollouts, store, config.rollout_interval, owner=replica_owner(config.data_dir)
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(registry, tokens, rollouts, metrics), server
        )
        # models and variants over the API, on the admin port with the admin auth (issue 18)
        models_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(variants, registry, tokens, rollouts, metrics), server
        )
        slots = StreamSlots(limits.max_streams_per_device, limits.max_streams)
        artifacts = add_artifact_service(
            server, registry, variants, slots, rollouts, metrics, trusted_keys=trusted.current
        )
        # federated runs: any replica starts, watches and stops any run (fl.runs)
        federation_target: list[SuperLinkTarget | None] = [None]
        training = add_training_service(
            server,
            TrainingRuns(
                store,
                config.data_dir / "fl-submit",
                url,
                lambda: federation_target[0],
                {  # the ServerApp registers a result in the store this replica serves
                    "store-dir": str(config.data_dir.absolute()) if embedded is not None else "",
                    "store-redis": "" if embedded is not None else url,
                    "signing-key": str(identity.signing_key_path.absolute()),
                },
            ),
            tokens,
            metrics,
        )
        # build jobs (RQ on Redis): queued here, run by `edgefleet worker`, never in this process
        jobs = add_job_service(
            server, os.environ.get(JOBS_REDIS_URL_ENV) or url, tokens, metrics,
            model_known_in(variants),
        )  # fmt: skip
        service_names = (*SERVICE_NAMES, artifacts, training, jobs)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port, device_port = _bind(server, config, ca, tls_dir)
        except OSError:
            await store.close()
            if embedded is not None:
                embedded.stop()
            raise
        if device_port:
            device_servicer.device_endpoint = (
                config.advertise_device or f"{config.public_host}:{device_port}"
            )
        await server.start()
        coordinator = cls(
            config, server, store, embedded, tokens, port, health_servicer, registry, metrics
        )
        coordinator.rollout_controller = controller
        coordinator.federation_target = federation_target
        coordinator.device_servicer = device_servicer
        coordinator.rollouts = rollouts
        coordinator.service_names = service_names
        coordinator.redis_persistence = persistence
        coordinator.metrics.state_store_persistent.set(
            -1 if persistence is None else 1 if persistence else 0
        )
        coordinator._probe_task = asyncio.create_task(coordinator._probe_state_store())
        coordinator.device_endpoint = device_servicer.device_endpoint
        coordinator.ca_cert_path = None if ca is None else ca_dir / "ca.pem"
        coordinator.endpoints = ReplicaEndpoints(
            fleet,
            advertised_endpoint(
                device_servicer.device_endpoint, config.advertise_device, config.public_host, port
            ),
            lambda live: setattr(device_servicer, "device_endpoints", live),
        )
        await coordinator.endpoints.start()
        controller.start()
        try:
            coordinator._start_metrics()
        except OSError:
            await coordinator.stop(grace=0)
            raise
        try:
            federation = await coordinator._start_federation(ca, tls_dir)
        except (OSError, RuntimeError):
            await coordinator.stop(grace=0)
            raise
        device_servicer.federation = federation
        coordinator._write_info_file()
        # SERVING only now: a load balancer or a test that waits for health must find the
        # metrics endpoint, the SuperLink and coordinator.json already in place
        for name in ("", *service_names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return coordinator

    async def _start_federation(
        self, ca: CertificateAuthority | None, tls_dir: Path
    ) -> device_pb2.Federation | None:
        """Run (``--superlink local``) or point at (``HOST:PORT``) the fleet's SuperLink.

        The local SuperLink serves TLS with a certificate from this coordinator's CA, so
        agents verify it with the CA they already hold; it lives in its own process group
        with a pidfile, so a coordinator killed -9 and restarted adopts it and federated runs
        in flight carry on.
        """
        mode = self.config.superlink
        if mode in ("", "off"):
            return None
        if mode != "local":
            self.superlink_address = mode
            self.federation_target[0] = SuperLinkTarget(mode, self.ca_cert_path if ca else None)
            return device_pb2.Federation(superlink_address=mode, tls=ca is not None)
        from edgefleet.coordinator.fl.fleet_superlink import FleetSuperLink
        from edgefleet.coordinator.fl.superlink import (
            SuperLinkSupervisor,
            free_port,
            superlink_tls,
            wait_listening,
        )
        from edgefleet.fl.redis_secret import credentials_env

        tls = None
        if ca is not None and self.ca_cert_path is not None:
            if self.config.fleet_dir is None:
                tls = superlink_tls(tls_dir, _server_hosts(self.config))
            else:  # the fleet's CA, mounted elsewhere: never mint one in the data dir
                from edgefleet.fl.process import FlowerTls

                ca.server_certificate(tls_dir, _server_hosts(self.config))
                tls = FlowerTls(
                    ca=self.ca_cert_path, cert=tls_dir / "server.pem", key=tls_dir / "server.key"
                )
        port = self.config.superlink_port or free_port(self.config.host)
        state = self.config.data_dir / "superlink"
        local = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        assert self.rollout_controller is not None
        # one SuperLink per fleet: only the rollout-lease holder runs it (fl.fleet_superlink)
        fleet = FleetSuperLink(
            self._store,
            self.rollout_controller,
            lambda: SuperLinkSupervisor(
                state,
                host=self.config.host,
                port=port,
                tls=tls,
                pidfile=state / "superlink.pid",
                # the fleet Redis's credentials reach its ServerApps here, never in a run
                # config the SuperLink stores (edgefleet.fl.redis_secret)
                env=credentials_env(self.config.redis_url or ""),
            ),
            f"{self.config.public_host}:{port}",
            tls is not None,
            lambda: wait_listening(local, port, 30.0),
            self._federation_changed,
            interval=self.config.rollout_interval,
        )
        self.fleet_superlink = fleet
        await fleet.start()
        self.superlink = fleet.supervisor
        if fleet.current is None:
            return None
        return device_pb2.Federation(superlink_address=fleet.current[0], tls=fleet.current[1])

    def _federation_changed(self, address: str, tls: bool) -> None:
        """The fleet's SuperLink moved (or was first named): tell agents on their next
        heartbeat, and submit runs there."""
        self.superlink_address = address
        self.superlink = None if self.fleet_superlink is None else self.fleet_superlink.supervisor
        self.federation_target[0] = SuperLinkTarget(address, self.ca_cert_path if tls else None)
        self._write_info_file()  # local tools on this host read the SuperLink there
        if self.device_servicer is not None:
            self.device_servicer.federation = device_pb2.Federation(
                superlink_address=address, tls=tls
            )

    def _write_info_file(self) -> None:
        """Tell local tools (simulate, demo) where this coordinator listens."""
        info = {
            "address": self.address,
            "device_address": self.device_address,
            "metrics_address": self.metrics_address,
            "ca_cert": None if self.ca_cert_path is None else str(self.ca_cert_path),
            "superlink": self.superlink_address or None,
            # the embedded Redis only (a socket in the data dir, no secret): local tools such as
            # `train start` record rounds there; an external URL may carry a password
            "embedded_redis": self._embedded.url if self._embedded is not None else None,
            "redis_persistence": self.redis_persistence,
            "pid": os.getpid(),
            "instance": self.instance,
        }
        atomic_write(self.config.data_dir / "coordinator.json", json.dumps(info))

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        """Stop in dependency order; every step is bounded so shutdown never hangs.

        The embedded Redis is saved and stopped last, whatever happened before.
        """
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self._probe_task is not None:
            probe = self._probe_task
            probe.cancel()
            steps.append(("health probe", lambda: asyncio.wait([probe])))
        if self.rollout_controller is not None:
            steps.append(("rollout controller", self.rollout_controller.stop))
        if self._refresh_task is not None:
            task = self._refresh_task
            task.cancel()
            steps.append(("metrics refresh", lambda: asyncio.wait([task])))
        if self._metrics_http is not None:
            http = self._metrics_http
            steps.append(("metrics endpoint", lambda: asyncio.to_thread(_close_http, http)))
        if self.fleet_superlink is not None:
            steps.append(("superlink", self.fleet_superlink.stop))
        elif self.superlink is not None:
            superlink = self.superlink
            steps.append(("superlink", lambda: asyncio.to_thread(superlink.stop, 5.0)))
        if self.endpoints is not None:  # first: agents stop being sent here
            steps.append(("device endpoint", self.endpoints.stop))
        steps.append(("health", self._health.enter_graceful_shutdown))
        steps.append(("grpc server", lambda: self._server.stop(grace)))
        steps.append(("state store client", self._store.close))
        if self._embedded is not None:
            embedded = self._embedded
            steps.append(("embedded redis", lambda: asyncio.to_thread(embedded.stop)))
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=grace + 10)
            except TimeoutError:
                log.warning("stopping the %s took over %.0fs; moving on", name, grace + 10)
            except Exception:
                log.exception("stopping the %s failed; moving on", name)
            log.debug("stopped the %s", name)
        self._remove_info_file()
        log.info("stopped")

    def _remove_info_file(self) -> None:
        """Remove coordinator.json only if it is still ours: another coordinator that wrote
        its own since (a replica sharing this data dir by mistake, or a successor) keeps it."""
        path = self.config.data_dir / "coordinator.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(info, dict) and info.get("instance") == self.instance:
            path.unlink(missing_ok=True)
        else:
            log.warning("left %s alone: another coordinator wrote it", path)


def _close_http(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()


def _bind(
    server: grpc.aio.Server,
    config: CoordinatorConfig,
    ca: CertificateAuthority | None,
    tls_dir: Path,
) -> tuple[int, int]:
    """Open the ports: (main port, mutual-TLS device port or 0 in insecure mode).

    TLS mode serves two endpoints from one server and one certificate: the main
    one authenticates the server only (Register with an enrollment token, the
    admin API with its token, health and reflection); the device endpoint also
    requires a client certificate signed by our CA, whose device id every device
    call is checked against. gRPC's Python API cannot ask for a client
    certificate without requiring it, hence two ports.
    """
    address = f"{config.host}:{config.port}"
    try:
        if ca is None:
            log.warning(
                "INSECURE: serving plaintext gRPC without TLS or device certificates on %s "
                "(--insecure); anyone who can reach it can read and forge traffic",
                address,
            )
            port = server.add_insecure_port(address)
            return _check_bound(port, address), 0
        hosts = _server_hosts(config)
        key, cert = ca.server_certificate(tls_dir, hosts)
        port = _check_bound(
            server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)])), address
        )
        device_address = f"{config.host}:{config.device_port}"
        mutual = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca.cert_pem, require_client_auth=True
        )
        device_port = _check_bound(server.add_secure_port(device_address, mutual), device_address)
        return port, device_port
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc


def _server_hosts(config: CoordinatorConfig) -> list[str]:
    """Names/addresses the server certificate (gRPC and SuperLink) must cover."""
    hosts = [config.host, "127.0.0.1", "localhost", *config.tls_hosts]
    if config.advertise_device:  # the name agents dial must verify: it becomes a SAN too
        hosts.append(config.advertise_device.rpartition(":")[0].strip("[]"))
    return hosts + ([config.advertise_host] if config.advertise_host else [])


def _check_bound(port: int, address: str) -> int:
    if port == 0:
        raise OSError(f"cannot listen on {address}: port in use")
    return port


def _report_persistence(persistence: str | None) -> None:
    """One loud line when Redis keeps nothing across its own restart (issue 18): a restart
    would silently re-key the whole fleet (devices re-enrol under new ids, rollouts and
    revocations gone)."""
    if persistence == "":
        log.warning(
            'DATA LOSS RISK: this Redis has no persistence (appendonly no, save ""): '
            "restarting it loses every device, rollout and revocation. Enable AOF "
            "(appendonly yes) and run replicas with Sentinel or Cluster (README: scale-out)"
        )
    elif persistence is None:
        log.warning(
            "cannot tell whether Redis persists the fleet (CONFIG GET refused); make sure "
            "AOF or RDB is on (README: scale-out)"
        )
    else:
        log.info("Redis persistence: %s", persistence)


def _redact(url: str) -> str:
    """Hide a password in a redis URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def run_until_signalled(
    config: CoordinatorConfig, on_ready: Callable[[Coordinator], None] | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight calls and stop Redis cleanly."""
    coordinator = await Coordinator.start(config)
    if on_ready is not None:
        on_ready(coordinator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await coordinator.stop()

"""Run a simulated fleet as agent containers whose cgroup limits mirror each device class.

The process backend (``edgefleet.devtools.simulate``) lets every agent use the whole host; here each
agent runs in its own container from the agent image with memory, CPU and pid limits derived
from its catalog profile, so a Pi Zero 2 W really has 512 MiB and a fraction of a core. This
is ``edgefleet simulate --backend docker`` and is also how docker-compose.yml sizes its agents.

Containers use host networking (the coordinator is reached at the same HOST:PORT as from the
host, and engines started with ``--bridge=none`` work) and carry labels, so a crashed run can be
cleaned up with :func:`remove_stale` by label rather than by guessing names.

TLS as everywhere else: each container gets the coordinator's CA certificate (copied into it
before it starts, so remote engines work too), verifies the coordinator with it, enrols with
the token and gets its own device certificate for the mutual-TLS device port. Plaintext only
with an explicit ``insecure=True`` (``edgefleet --insecure simulate --backend docker``).

The Docker SDK (``docker`` package) is imported lazily: :func:`container_limits` is useful
(and tested) without it.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.catalog import get_profile
from edgefleet.devtools.simulate import StopReport
from edgefleet.profiles import GIB, MIB, DeviceProfile

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

DEFAULT_AGENT_IMAGE = "edgefleet-agent:latest"
# Where the coordinator's CA certificate is put in each agent container (owned by root, 0444).
CONTAINER_CA_DIR = "/etc/edgefleet"
CONTAINER_CA_PATH = f"{CONTAINER_CA_DIR}/ca.pem"

# Labels on every container this module starts.
LABEL_MANAGED = "edgefleet.managed-by"
LABEL_FLEET = "edgefleet.fleet"
LABEL_PROFILE = "edgefleet.profile"
LABEL_DEVICE = "edgefleet.device-name"
MANAGED_BY = "edgefleet-simulate"

# --- profile -> container limits -----------------------------------------------------------
#
# memory: the device's RAM (a cgroup limit is a ceiling, not a reservation, so the full RAM
#   costs the host nothing), capped at MEMORY_CAP so one "flagship phone" cannot claim a small
#   CI host's whole memory, and at least AGENT_MEMORY_FLOOR: microcontrollers have KiB of SRAM,
#   but what simulates them is a Python agent (~55 MB RSS), whose SRAM/flash budgets are enforced
#   by the mcu-sim runtime, not by the cgroup. Swap is off (memswap = memory): devices have none.
# cpus: the device's aggregate clock (cores x MHz) expressed in host cores, taking one host x86
#   core as worth HOST_CORE_MHZ of device clock (~3 GHz at ~2.5x the per-clock work of a
#   Cortex-A53/A72-class core), clamped to [CPU_FLOOR, CPU_CAP]. The floor keeps the simulated
#   MCUs' Python process able to start within seconds; the cap is what a 2-core host can grant.
# pids: PIDS_PER_CORE per device core, at least PIDS_FLOOR (the agent itself uses ~8 threads).
MEMORY_CAP = 8 * GIB
AGENT_MEMORY_FLOOR = 96 * MIB
HOST_CORE_MHZ = 8000
CPU_FLOOR = 0.10
CPU_CAP = 2.0
PIDS_PER_CORE = 32
PIDS_FLOOR = 64


@dataclass(frozen=True)
class ContainerLimits:
    """cgroup limits for one agent container, in the units ``docker inspect`` reports."""

    memory_bytes: int
    nano_cpus: int
    pids: int

    @property
    def cpus(self) -> float:
        return self.nano_cpus / 1e9


def container_limits(profile: DeviceProfile, host_cpus: int | None = None) -> ContainerLimits:
    """Memory/CPU/pid limits that mirror ``profile``'s device class (see the table above).

    ``host_cpus`` lowers the CPU cap to what this engine has (Docker refuses more).
    """
    memory = max(AGENT_MEMORY_FLOOR, min(profile.ram_bytes, MEMORY_CAP))
    cap = CPU_CAP if host_cpus is None else min(CPU_CAP, float(host_cpus))
    cpus = max(CPU_FLOOR, min(cap, profile.cpu_cores * profile.cpu_mhz / HOST_CORE_MHZ))
    pids = max(PIDS_FLOOR, profile.cpu_cores * PIDS_PER_CORE)
    return ContainerLimits(memory_bytes=memory, nano_cpus=round(cpus * 100) * 10_000_000, pids=pids)


# --- the fleet ------------------------------------------------------------------------------


class DockerFleetError(RuntimeError):
    """The engine or the image is not usable; the message says what to do."""


@dataclass
class AgentContainer:
    """One running agent: its device name, profile, container and the limits it was given."""

    name: str
    profile: str
    limits: ContainerLimits
    container: Container


def _ca_archive(ca_pem: bytes) -> bytes:
    """A tar of ``CONTAINER_CA_DIR``/ca.pem, for ``put_archive`` into a created container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        now = time.time()
        directory = tarfile.TarInfo(CONTAINER_CA_DIR.lstrip("/"))
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, now
        tar.addfile(directory)
        cert = tarfile.TarInfo(CONTAINER_CA_PATH.lstrip("/"))
        cert.size, cert.mode, cert.mtime = len(ca_pem), 0o444, now
        tar.addfile(cert, io.BytesIO(ca_pem))
    return buf.getvalue()


def _client(client: DockerClient | None) -> DockerClient:
    if client is not None:
        return client
    try:
        import docker
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise DockerFleetError(
            "the docker backend needs the Docker SDK: pip install docker"
        ) from exc
    try:
        c = docker.from_env()
        c.ping()
    except docker.errors.DockerException as exc:
        raise DockerFleetError(f"cannot reach the Docker engine: {exc}") from exc
    return c


@dataclass
class DockerFleet:
    """Agent containers started together; :meth:`stop` removes every one of them."""

    client: DockerClient
    fleet_id: str
    agents: list[AgentContainer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        *,
        coordinator: str,
        enroll_token: str,
        profiles: Sequence[str],
        count: int,
        image: str = DEFAULT_AGENT_IMAGE,
        ca_cert: bytes | None = None,
        insecure: bool = False,
        name_prefix: str = "sim",
        extra_args: Sequence[str] = (),
        client: DockerClient | None = None,
        parallel: int = 8,
    ) -> DockerFleet:
        """Start ``count`` agents (profiles round-robin) against ``coordinator`` (HOST:PORT).

        ``ca_cert`` (PEM) is the coordinator's CA, which every agent verifies it with; plaintext
        only with ``insecure=True`` (for a coordinator started with ``--insecure``).
        Device names are ``{name_prefix}-{profile}-{i:03d}``, as in the process backend. If any
        container fails to start, the ones already started are removed before raising.
        """
        if count < 1:
            raise ValueError("--devices must be at least 1")
        if not profiles:
            raise ValueError("--profiles needs at least one profile name")
        if insecure == (ca_cert is not None):
            raise ValueError(
                "the agents need the coordinator's CA certificate (ca_cert; the CLI's --ca-cert), "
                "or insecure=True for a coordinator started with --insecure -- not both"
            )
        if ca_cert is not None and b"-----BEGIN CERTIFICATE-----" not in ca_cert:
            raise ValueError("ca_cert is not a PEM certificate")
        resolved = [get_profile(p) for p in profiles]  # fail before starting anything
        docker_client = _client(client)
        import docker.errors

        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            raise DockerFleetError(
                f"image {image} not found; build it with scripts/docker_build.py --images agent"
            ) from None
        host_cpus = int(docker_client.info().get("NCPU", 0)) or None
        fleet = cls(client=docker_client, fleet_id=secrets.token_hex(4))
        jobs = [(i, resolved[i % len(resolved)]) for i in range(count)]
        environment = {"EDGEFLEET_ENROLL_TOKEN": enroll_token}
        if insecure:  # explicit, and the agent logs an INSECURE warning
            environment["EDGEFLEET_INSECURE"] = "1"
            transport: list[str] = []
        else:
            transport = ["--ca-cert", CONTAINER_CA_PATH]
        ca_archive = None if ca_cert is None else _ca_archive(ca_cert)

        def run_one(job: tuple[int, DeviceProfile]) -> None:
            i, profile = job
            name = f"{name_prefix}-{profile.name}-{i:03d}"
            limits = container_limits(profile, host_cpus)
            container = docker_client.containers.create(
                image,
                command=[
                    "--coordinator",
                    coordinator,
                    "--profile",
                    profile.name,
                    "--name",
                    name,
                    "--label",
                    "simulated=true",
                    "--label",
                    "backend=docker",
                    *transport,
                    *extra_args,
                ],
                name=f"edgefleet-{fleet.fleet_id}-{name}",
                environment=environment,
                labels={
                    LABEL_MANAGED: MANAGED_BY,
                    LABEL_FLEET: fleet.fleet_id,
                    LABEL_PROFILE: profile.name,
                    LABEL_DEVICE: name,
                },
                network_mode="host",
                init=True,
                mem_limit=limits.memory_bytes,
                memswap_limit=limits.memory_bytes,
                nano_cpus=limits.nano_cpus,
                pids_limit=limits.pids,
            )
            with fleet._lock:  # listed at once, so a failure below still removes it
                fleet.agents.append(AgentContainer(name, profile.name, limits, container))
            if ca_archive is not None and not container.put_archive("/", ca_archive):
                raise DockerFleetError(f"could not copy the CA certificate into {container.name}")
            container.start()

        try:
            with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
                for _ in pool.map(run_one, jobs):
                    pass
        except Exception:
            fleet.stop(timeout=2.0)
            raise
        fleet.agents.sort(key=lambda a: a.name)
        return fleet

    def __iter__(self) -> Iterator[AgentContainer]:
        return iter(self.agents)

    def __enter__(self) -> DockerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exited(self) -> list[AgentContainer]:
        """Agents whose container is no longer running."""
        if self._stopped:
            return list(self.agents)
        out = []
        for agent in self.agents:
            agent.container.reload()
            if agent.container.status not in ("created", "running", "restarting"):
                out.append(agent)
        return out

    def logs(self, name: str, tail: int = 50) -> str:
        """The last lines an agent printed (the container keeps them until removed)."""
        for agent in self.agents:
            if agent.name == name:
                raw: bytes = agent.container.logs(tail=tail)
                return raw.decode(errors="replace")
        raise KeyError(name)

    def stop(self, timeout: float = 15.0) -> StopReport:
        """SIGTERM every agent (they say goodbye and exit 0), then remove the containers.

        An agent still running after ``timeout`` is killed by the engine and counted as killed.
        A second call does nothing; ``agents`` stays listed (as in the process backend), so
        callers can still say how many were stopped.
        """
        report = StopReport()
        if self._stopped or not self.agents:
            return report

        def stop_one(agent: AgentContainer) -> None:
            c = agent.container
            try:
                c.stop(timeout=max(1, round(timeout)))
                state: dict[str, Any] = self.client.api.inspect_container(c.name or "")["State"]
                code = int(state.get("ExitCode", -1))
                with self._lock:
                    if code == 0:
                        report.clean += 1
                    elif code == 137 and not state.get("OOMKilled"):
                        report.killed.append(agent.name)
                    else:
                        oom = ", out of memory" if state.get("OOMKilled") else ""
                        report.failed.append(f"{agent.name}: exit {code}{oom}")
            finally:
                c.remove(force=True, v=True)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop_one, self.agents))
        self._stopped = True
        return report


def remove_stale(client: DockerClient | None = None, fleet_id: str | None = None) -> int:
    """Remove agent containers left by a run that never reached :meth:`DockerFleet.stop`."""
    docker_client = _client(client)
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}"]
    if fleet_id:
        labels.append(f"{LABEL_FLEET}={fleet_id}")
    stale = docker_client.containers.list(all=True, filters={"label": labels})
    for c in stale:
        c.remove(force=True, v=True)
    return len(stale)

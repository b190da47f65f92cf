"""Several coordinator replicas on one fleet identity, agents homed on each, and what a kill -9
of one must not break (issue 18): shared by ``tests/test_replicas_kill.py`` (a rollout) and
``tests/test_replicas_fl_kill.py`` (a federated run).

Why a kit and not fixtures: the two tests start the same pieces with different extras (a
Redis Cluster URL, an external SuperLink, local data for SuperNodes) and check the same three
facts after the kill -- orphaned agents online on a survivor within a stated time, the fleet's
state written by survivors only, telemetry counted exactly once -- so each is one function.

Homes are arranged, not left to luck: an agent's instance key is chosen before it first
starts so that its rendezvous order ranks a given replica first (the hashing itself is tested
in tests/test_agent_failover.py).
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
import redis.cluster

from edgefleet.agent.identity import Identity, save_identity
from edgefleet.agent.telemetry import TelemetryBuffer
from edgefleet.agent.transport import rendezvous_order
from edgefleet.client.admin_client import AdminClient
from edgefleet.v1 import admin_pb2
from tests.conftest import ENROLL_TOKEN, AgentProc, CoordinatorProc, free_port, wait_for

HEARTBEAT_SECONDS = 0.5
FAST = (
    *("--offline-after", "3", "--heartbeat-interval", str(HEARTBEAT_SECONDS)),
    *("--rollout-interval", "0.3"),
)
# Stated bound: an agent notices at its next heartbeat (0.5 s), pauses at most 1 s
# (FAILOVER_PAUSE_SECONDS) and dials its next replica; 0.5-3 s is typical here. 15 s leaves
# room for a 2-core machine busy with other tests (the time measured is printed).
ONLINE_ELSEWHERE_WITHIN_SECONDS = 15.0
REPLICAS = 3


@dataclass
class Replica:
    proc: CoordinatorProc
    endpoint: str  # the device endpoint it advertises (a name: TLS verifies it)


@dataclass
class Homed:
    agent: AgentProc
    home: Replica


def sync_redis(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    """A plain client for the test's own reads: one server, or a ``redis+cluster://`` URL
    (any one node; redis-py discovers the rest)."""
    if url.startswith("redis+cluster://"):
        first = urlsplit(url).netloc.split(",")[0]
        host, port = first.rsplit(":", 1)
        return redis.cluster.RedisCluster(host=host, port=int(port), decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)


def duplicates(replica: Replica) -> float:
    """Telemetry records this replica received again and did not apply (from its /metrics)."""
    with urllib.request.urlopen(replica.proc.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(
        r'^edgefleet_telemetry_records_total\{outcome="duplicate"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def start_replicas(
    factory: Callable[..., CoordinatorProc],
    root: Path,
    fleet: Path,
    redis_url: str,
    *extra: str,
    each: Callable[[int], tuple[str, ...]] = lambda _: (),
) -> list[Replica]:
    """TLS replicas on one fleet identity and one Redis; the first holds the controller lease.
    ``extra``: more arguments for every replica; ``each(i)``: for the i-th only."""
    replicas = []
    for i in range(REPLICAS):
        data = root / f"replica-{i}"
        (data / "tls").mkdir(parents=True, exist_ok=True)
        shutil.copy(fleet / "ca.pem", data / "tls" / "ca.pem")  # the fixture's health check
        device_port = free_port()
        endpoint = f"localhost:{device_port}"
        replicas.append(
            Replica(
                factory(
                    *("--tls", *FAST, "--redis-url", redis_url, "--fleet-dir", str(fleet)),
                    *("--device-port", str(device_port), "--advertise-device", endpoint),
                    *extra,
                    *each(i),
                    data_dir=data,
                ),
                endpoint,
            )
        )
        if i == 0:  # it ticks every 0.3 s: holds the lease before the next one starts
            time.sleep(0.6)
    return replicas


def instance_key_homed_on(endpoint: str, endpoints: list[str]) -> str:
    """An instance key whose rendezvous order ranks ``endpoint`` first."""
    while True:
        key = secrets.token_hex(16)
        if rendezvous_order(key, endpoints)[0] == endpoint:
            return key


def start_homed_agents(
    agent_factory: Callable[..., AgentProc],
    replicas: list[Replica],
    root: Path,
    fleet: Path,
    per_replica: int,
    extra: Callable[[int], tuple[str, ...]] = lambda _: (),
) -> list[Homed]:
    """``per_replica`` agents homed on each replica, given every replica's address;
    ``extra(i)``: more arguments for the i-th agent started (counting from 0)."""
    endpoints = [r.endpoint for r in replicas]
    addresses = ",".join(r.proc.address for r in replicas)
    agents: list[Homed] = []
    for home in replicas:
        for n in range(per_replica):
            name = f"kill-{home.endpoint.split(':')[1]}-{n}"
            state_dir = root / "agents" / name
            key = instance_key_homed_on(home.endpoint, endpoints)
            save_identity(state_dir, Identity(instance_key=key, coordinator=addresses))
            agent = agent_factory(
                addresses, "rpi4", name, "--token", ENROLL_TOKEN,
                "--ca-cert", str(fleet / "ca.pem"), *extra(len(agents)), state_dir=state_dir,
            )  # fmt: skip
            agents.append(Homed(agent, home))
    return agents


def wait_enrolled(admin: AdminClient, agents: list[Homed], root: Path) -> dict[str, str]:
    """Wait until every agent is online; its device id by agent name (one device each)."""

    def online() -> int:
        devices = admin.list_devices()
        return sum(d.status == admin_pb2.DEVICE_STATUS_ONLINE for d in devices)

    # agents start (onnxruntime and all) and enrol: seconds each on a busy 2-core machine
    # (three took over 60 s at load average 40)
    wait_for(lambda: online() == len(agents), max(180.0, 20.0 * len(agents)), f"agents; {root}")
    names = {d.name: d.id for d in admin.list_devices()}
    assert len(names) == len(agents)  # one device per agent, none enrolled twice
    return names


class FailoverWatch:
    """Started at the moment of the kill: when each orphan (an agent homed on the victim) is
    online on a survivor.

    The victim is dead, so a heartbeat recorded after the kill was served by a survivor. An
    agent that was heartbeating to the victim logs the failure and then "reachable again at"
    a survivor; one that had already left it (its home did not answer in time on a loaded
    machine) logs neither, and its fresh heartbeat is the proof.
    """

    def __init__(
        self,
        admin: AdminClient,
        agents: list[Homed],
        names: dict[str, str],
        victim: Replica,
        endpoints: list[str],
    ) -> None:
        self.admin = admin
        self.victim = victim
        self.survivors = [e for e in endpoints if e != victim.endpoint]
        self.orphans = [
            (h.agent, names[h.agent.state_dir.name]) for h in agents if h.home is victim
        ]
        assert self.orphans
        self.log_at_kill = {a.state_dir.name: len(a.log.read_text()) for a, _ in self.orphans}
        self.moved_at: dict[str, float] = {}
        self.killed_wall = 0.0
        self.killed = 0.0

    def kill(self) -> None:
        self.victim.proc.stop(signal.SIGKILL)
        self.killed_wall, self.killed = time.time(), time.monotonic()

    def all_moved(self) -> bool:
        for agent, device_id in self.orphans:
            if device_id in self.moved_at:
                continue
            device = self.admin.get_device(device_id)
            fresh = device.last_seen.ToNanoseconds() / 1e9 > self.killed_wall + 0.1
            log = agent.log.read_text()[self.log_at_kill[agent.state_dir.name] :]
            left = f"coordinator {self.victim.endpoint} unreachable" in log
            again = re.findall(r"coordinator reachable again at (\S+)", log)
            if fresh and device.status == admin_pb2.DEVICE_STATUS_ONLINE and (again or not left):
                if left:
                    assert again[-1] in self.survivors, log  # a survivor's device endpoint
                self.moved_at[device_id] = time.monotonic() - self.killed
        return len(self.moved_at) == len(self.orphans)

    def wait(self) -> list[float]:
        """Wait (``ONLINE_ELSEWHERE_WITHIN_SECONDS``) and return the seconds each took."""
        wait_for(self.all_moved, ONLINE_ELSEWHERE_WITHIN_SECONDS, "orphans online on a survivor")
        took = sorted(self.moved_at.values())
        print(
            f"{len(took)} agent(s) of the killed replica online on a survivor after "
            + ", ".join(f"{t:.1f}s" for t in took)
        )
        return took


def assert_telemetry_once(
    admin: AdminClient, agents: list[Homed], names: dict[str, str], survivors: list[Replica]
) -> None:
    """Stop every agent cleanly (it flushes its buffer and says goodbye), then: the fleet's
    count of records accepted from each equals the highest sequence it assigned (sequences
    are 1..n with no gaps, so every record was applied once -- none lost, none twice), even
    though records the victim applied before its reply was lost were sent again to a
    survivor (counted there as duplicates, printed)."""
    for h in agents:
        assert h.agent.stop(signal.SIGTERM) == 0
    resent = sum(duplicates(r) for r in survivors)
    for h in agents:
        buffer = TelemetryBuffer(h.agent.state_dir)
        try:
            assert buffer.pending() == 0 and buffer.dropped() == 0
            sent = buffer.last_sequence()
        finally:
            buffer.close()
        device = admin.get_device(names[h.agent.state_dir.name])
        assert sent > 0
        assert (device.telemetry_sequence, device.telemetry_records) == (sent, sent), h.agent.log
    print(f"telemetry: every record counted once; {resent:.0f} resent record(s) deduplicated")

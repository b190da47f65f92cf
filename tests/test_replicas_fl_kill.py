"""Three coordinator replicas, agents' SuperNodes on the fleet's one SuperLink; kill -9 the
replica that started a federated run, mid-run (issue 18, "Must show").

What is real: three TLS replicas on one ``redis-server`` and one fleet identity, three real
agents with local digits data, one homed on each replica (``tests/replicakit.py``), each
starting its own ``flower-supernode`` against the SuperLink its heartbeat reply names. The run
is started with ``edgefleet train start`` over the API (TrainingService) through replica 0,
which also holds the rollout-controller lease; once round 1 of 3 is recorded, replica 0 is
killed -9 (the operator's ``train start`` loses its coordinator and says so in one line), and
``edgefleet train status --watch`` through a survivor follows the run. Two fleets:

- an **external SuperLink** (``--superlink HOST:PORT`` on every replica): a
  ``flower-superlink`` the test starts, TLS with a certificate from the fleet CA;
- ``--superlink local``: the victim is the lease holder and runs the fleet's SuperLink. Killed
  -9, its SuperLink lives on (own process group); the new holder finds it answering and keeps
  naming it (``fl.fleet_superlink``), so the run carries on. Then that SuperLink is killed too
  (what losing the victim's host or pod does): a survivor starts its own, names it, and every
  agent moves its SuperNode there (times printed).

Asserted as mechanisms, in both: the run finishes ``succeeded`` with rounds 1, 2, 3, each with
all three devices, and each round is in the fleet's round records exactly once (3 completed,
none failed) -- the ServerApp runs under the SuperLink and writes to Redis itself
(``flower/run_store.py``), so nothing of the run lived in the killed replica; the agent homed
on the victim is online on a survivor within ``ONLINE_ELSEWHERE_WITHIN_SECONDS`` (measured time
printed) and no agent's SuperNode was restarted by the failover (same pids: every replica
names the same SuperLink); telemetry is counted exactly once, as in the rollout kill test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.client.training_client import TrainingClient
from edgefleet.coordinator.fl.superlink import SuperLinkSupervisor, wait_listening
from edgefleet.coordinator.rollout_controller import LEASE_NAME
from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import FederatedRound
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.fl.process import FlowerTls, pid_alive
from edgefleet.fleet_dir import init_fleet
from edgefleet.pki import CertificateAuthority
from tests.conftest import (
    ADMIN_TOKEN,
    AgentProc,
    CoordinatorProc,
    cli_env,
    free_port,
    kill_flower_group,
    wait_for,
)
from tests.replicakit import (
    FailoverWatch,
    Homed,
    Replica,
    assert_telemetry_once,
    start_homed_agents,
    start_replicas,
    sync_redis,
    wait_enrolled,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 3
LEASE_KEY = Keys().lease(LEASE_NAME)
SUPERLINK_KEY = Keys().fl_superlink
RUN = "fl-kill"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet"
    init_fleet(path)
    return path


@pytest.fixture
def superlink(fleet: Path, tmp_path: Path) -> Iterator[str]:
    """The fleet's one SuperLink, outside every replica: TLS with a certificate from the fleet
    CA (agents verify it with the CA they enrolled with); yields its address."""
    state = tmp_path / "superlink"
    tls_dir = tmp_path / "superlink-tls"
    tls_dir.mkdir()
    CertificateAuthority.load(fleet).server_certificate(tls_dir, ["127.0.0.1", "localhost"])
    tls = FlowerTls(ca=fleet / "ca.pem", cert=tls_dir / "server.pem", key=tls_dir / "server.key")
    port = free_port()
    node = SuperLinkSupervisor(state, port=port, tls=tls, pidfile=state / "superlink.pid")
    node.start()
    try:
        assert wait_listening("127.0.0.1", port, 60), (state / "superlink.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        node.stop(timeout=10.0)


def supernodes(agents: list[Homed]) -> list[int | None]:
    """Each agent's live SuperNode pid (None: not running)."""
    pids: list[int | None] = []
    for h in agents:
        try:
            pid = int((h.agent.state_dir / "fl" / "supernode.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        pids.append(pid if pid is not None and pid_alive(pid) else None)
    return pids


def cli(address: str, ca: Path, *args: str, stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """``edgefleet ARGS`` against the replica at ``address``, over TLS with the fleet CA
    (stderr to a file when given: a test reads it while the command runs)."""
    env = {k: v for k, v in cli_env(address).items() if k != "EDGEFLEET_INSECURE"}
    env["EDGEFLEET_CA_CERT"] = str(ca)
    err = subprocess.PIPE if stderr is None else stderr.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    finally:
        if stderr is not None:
            err.close()  # type: ignore[union-attr]


def fl_rounds(redis_url: str) -> tuple[list[FederatedRound], dict[str, int]]:
    """The fleet's round records (what every replica exports as ``edgefleet_fl_*``)."""

    async def read() -> tuple[list[FederatedRound], dict[str, int]]:
        store = FleetStore(connect(redis_url))
        try:
            return await store.fl_snapshot()
        finally:
            await store.close()

    return asyncio.run(read())


@dataclass
class Killed:
    """What ``kill_mid_run`` leaves for a test's own checks."""

    replicas: list[Replica]
    agents: list[Homed]
    names: dict[str, str]
    admin: AdminClient
    superlink: str  # the fleet's SuperLink the run was submitted to


def kill_mid_run(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    fleet: Path,
    tmp_path: Path,
    superlink: tuple[str, ...],
    each: Callable[[int], tuple[str, ...]] = lambda _: (),
) -> Killed:
    """Replicas (``superlink``: their ``--superlink`` arguments), one agent homed on each, a
    run started through replica 0 and replica 0 killed -9 after round 1; returns once a
    survivor saw the run succeed, each round once, and the orphan online on a survivor."""
    replicas = start_replicas(
        coordinator_factory, tmp_path, fleet, redis_url, *superlink, each=each
    )
    agents = start_homed_agents(
        agent_factory, replicas, tmp_path, fleet, 1,
        lambda i: ("--local-data", "digits", "--partition", f"{i}/3"),
    )  # fmt: skip
    ca = fleet / "ca.pem"
    victim, survivor = replicas[0], replicas[1]
    admin = AdminClient(survivor.proc.address, ADMIN_TOKEN, ca_cert=ca.read_bytes())
    names = wait_enrolled(admin, agents, tmp_path)
    # each agent starts its SuperNode once a heartbeat reply names the SuperLink
    wait_for(lambda: all(supernodes(agents)), 120, "every agent's SuperNode")
    nodes_before = supernodes(agents)

    # the operator starts the run through replica 0 (the lease holder) and follows it there
    said = tmp_path / "train-start.err"
    start = cli(victim.proc.address, ca, "train", "start", "mlp", "--rounds", str(ROUNDS),
                "--min-devices", "3", "--name", RUN, "--round-timeout", "120",
                stderr=said)  # fmt: skip
    training = TrainingClient(survivor.proc.address, ADMIN_TOKEN, ca_cert=ca.read_bytes())

    def rounds_done() -> int:
        try:
            return len(training.get_run(RUN).rounds)
        except AdminClientError:  # not yet submitted: NOT_FOUND
            return 0

    wait_for(lambda: rounds_done() >= 1, 300, f"round 1 of {RUN}; logs in {tmp_path}")
    # the victim has recorded the Flower run id it submitted (the CLI prints it from the
    # reply): killed before that, the run still finishes but `train stop` cannot reach it
    wait_for(lambda: "(Flower run" in said.read_text(), 120, "StartRun's reply")
    run = training.get_run(RUN)
    training.close()
    assert run.state == "running" and len(run.rounds) < ROUNDS, run  # the kill is mid-run
    assert run.flwr_run_id
    lease = sync_redis(redis_url)
    holder = lease.get(LEASE_KEY)
    watch = FailoverWatch(admin, agents, names, victim, [r.endpoint for r in replicas])
    watch.kill()
    start.wait(60)
    lines = said.read_text().splitlines()  # what it said on starting, then one error line
    assert start.returncode == 1 and len(lines) == 2, lines
    assert RUN in lines[0] and lines[1].startswith("error: cannot reach the coordinator"), lines
    watch.wait()

    # any survivor follows the run to its end: its record is the ServerApp's, in Redis
    follow = cli(survivor.proc.address, ca, "train", "status", RUN, "--watch", "--json")
    out, err = follow.communicate(timeout=600)
    finished = time.monotonic() - watch.killed
    assert follow.returncode == 0, (out + err).decode()[-2000:]
    doc = json.loads(out)
    assert doc["state"] == "succeeded", doc
    device_ids = sorted(names.values())
    assert [r["round"] for r in doc["rounds"]] == list(range(1, ROUNDS + 1))
    assert all(sorted(r["participants"]) == device_ids for r in doc["rounds"]), doc["rounds"]
    latest, outcomes = fl_rounds(redis_url)
    assert outcomes == {"completed": ROUNDS}  # each round recorded once, none failed
    assert [(r.run_id, r.round) for r in latest] == [(RUN, ROUNDS)]
    moved = "moved" if lease.get(LEASE_KEY) != holder else "stayed"
    lease.close()
    print(
        f"run succeeded {finished:.1f}s after the kill of the replica that started it "
        f"(rounds {[round(r['seconds'], 1) for r in doc['rounds']]} s; controller lease {moved})"
    )
    # the failover did not touch the federation: same SuperNode processes throughout
    assert supernodes(agents) == nodes_before
    assert victim.proc.proc is not None and victim.proc.proc.returncode == -signal.SIGKILL
    return Killed(replicas, agents, names, admin, str(doc["superlink"]))


def test_kill_9_of_the_replica_that_started_a_run_on_an_external_superlink(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    fleet: Path,
    superlink: str,
    tmp_path: Path,
) -> None:
    k = kill_mid_run(
        coordinator_factory, agent_factory, redis_url, fleet, tmp_path, ("--superlink", superlink)
    )
    assert k.superlink == superlink
    assert_telemetry_once(k.admin, k.agents, k.names, k.replicas[1:])
    k.admin.close()


def test_kill_9_of_the_lease_holder_running_the_fleets_superlink(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    fleet: Path,
    tmp_path: Path,
) -> None:
    """``--superlink local``: the victim holds the lease and runs the fleet's SuperLink. Killed
    -9, its SuperLink lives on (its own process group); the new holder finds it answering and
    keeps naming it, so the run carries on. Then the SuperLink dies too (what losing the host
    or pod does): the holder starts its own and agents move their SuperNodes to it."""
    ports = [free_port() for _ in range(3)]
    k = kill_mid_run(
        coordinator_factory, agent_factory, redis_url, fleet, tmp_path,
        ("--superlink", "local"), lambda i: ("--superlink-port", str(ports[i])),
    )  # fmt: skip
    victim, survivors = k.replicas[0], k.replicas[1:]
    assert k.superlink.endswith(f":{ports[0]}")  # the victim's
    pidfile = victim.proc.data_dir / "superlink" / "superlink.pid"
    orphan = int(pidfile.read_text().split()[0])
    assert pid_alive(orphan)
    client = sync_redis(redis_url)
    owners = {r.proc.data_dir.joinpath("replica-id").read_text().strip() for r in survivors}
    assert client.get(LEASE_KEY) in owners  # a survivor holds the lease now ...
    assert json.loads(client.get(SUPERLINK_KEY) or "{}")["address"] == k.superlink  # ... and
    kept = [r for r in survivors if "keeping the fleet's SuperLink" in r.proc.log.read_text()]
    assert kept, "no survivor kept the SuperLink"  # ... kept naming the one that answered

    # the SuperLink dies as well: the holder starts its own, agents follow it
    nodes = supernodes(k.agents)
    kill_flower_group(pidfile)
    gone = time.monotonic()

    def moved() -> str:
        address = str(json.loads(client.get(SUPERLINK_KEY) or "{}").get("address", ""))
        return address if address != k.superlink else ""

    wait_for(lambda: bool(moved()), 60, "a survivor's SuperLink named")
    named = time.monotonic() - gone
    assert moved().endswith(tuple(f":{p}" for p in ports[1:])), moved()
    wait_for(
        lambda: all(p and p not in nodes for p in supernodes(k.agents)),
        60,
        "agents' SuperNodes restarted for the new SuperLink",
    )
    print(
        f"SuperLink lost: a survivor's named after {named:.1f}s, every SuperNode on it after "
        f"{time.monotonic() - gone:.1f}s"
    )
    client.close()
    assert_telemetry_once(k.admin, k.agents, k.names, survivors)
    k.admin.close()

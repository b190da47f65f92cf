"""Three coordinator replicas, one external SuperLink, agents' SuperNodes on it; kill -9 the
replica that started a federated run, mid-run (issue 18, "Must show").

What is real: a ``flower-superlink`` the test starts (TLS, a certificate from the fleet CA,
the way an operator runs the fleet's one SuperLink outside the replicas), three TLS replicas
on one ``redis-server`` each started with ``--superlink HOST:PORT`` naming it, and three real
agents with local digits data, one homed on each replica (``tests/replicakit.py``); each agent
starts its own ``flower-supernode`` against the SuperLink its heartbeat reply names. The run
is started with ``edgefleet train start`` over the API (TrainingService) through replica 0,
which also holds the rollout-controller lease; once round 1 of 3 is recorded, replica 0 is
killed -9 (the operator's ``train start`` loses its coordinator and says so in one line), and
``edgefleet train status --watch`` through a survivor follows the run. Asserted as mechanisms:

- the run finishes ``succeeded`` with rounds 1, 2, 3, each with all three devices, and each
  round is in the fleet's round records exactly once (``fl_snapshot``: 3 completed, none
  failed) -- the ServerApp runs on the SuperLink and writes to Redis itself
  (``flower/run_store.py``), so nothing of the run lived in the killed replica;
- the agent homed on the victim is online on a survivor within
  ``ONLINE_ELSEWHERE_WITHIN_SECONDS`` (measured time printed), and no agent's SuperNode was
  restarted by the failover (same pid before and after: every replica names the same
  SuperLink, so the agent's federation target never changed);
- telemetry counted exactly once, as in the rollout kill test.

Why an external SuperLink here: with ``--superlink local`` the lease holder runs the fleet's
SuperLink, and a run in flight does not survive the lease moving (README, "Several replicas").
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.client.admin_client import AdminClient
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
from tests.conftest import ADMIN_TOKEN, AgentProc, CoordinatorProc, cli_env, free_port, wait_for
from tests.replicakit import (
    FailoverWatch,
    Homed,
    assert_telemetry_once,
    start_homed_agents,
    start_replicas,
    sync_redis,
    wait_enrolled,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 3
LEASE_KEY = Keys().lease(LEASE_NAME)
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


def supernode_pid(agent: AgentProc) -> int | None:
    try:
        return int((agent.state_dir / "fl" / "supernode.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cli(address: str, ca: Path, *args: str) -> subprocess.Popen[bytes]:
    """``edgefleet ARGS`` against the replica at ``address``, over TLS with the fleet CA."""
    env = {k: v for k, v in cli_env(address).items() if k != "EDGEFLEET_INSECURE"}
    env["EDGEFLEET_CA_CERT"] = str(ca)
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def fl_rounds(redis_url: str) -> tuple[list[FederatedRound], dict[str, int]]:
    """The fleet's round records (what every replica exports as ``edgefleet_fl_*``)."""

    async def read() -> tuple[list[FederatedRound], dict[str, int]]:
        store = FleetStore(connect(redis_url))
        try:
            return await store.fl_snapshot()
        finally:
            await store.close()

    return asyncio.run(read())


def test_kill_9_of_the_replica_that_started_a_federated_run(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    fleet: Path,
    superlink: str,
    tmp_path: Path,
) -> None:
    replicas = start_replicas(
        coordinator_factory, tmp_path, fleet, redis_url, "--superlink", superlink
    )
    agents: list[Homed] = start_homed_agents(
        agent_factory, replicas, tmp_path, fleet, 1,
        lambda i: ("--local-data", "digits", "--partition", f"{i}/3"),
    )  # fmt: skip
    ca = fleet / "ca.pem"
    victim, survivor = replicas[0], replicas[1]
    admin = AdminClient(survivor.proc.address, ADMIN_TOKEN, ca_cert=ca.read_bytes())
    names = wait_enrolled(admin, agents, tmp_path)
    # each agent starts its SuperNode once a heartbeat reply names the SuperLink
    wait_for(
        lambda: (
            all(pid_alive(p) for p in map(supernode_pid, (h.agent for h in agents)) if p)
            and all(supernode_pid(h.agent) for h in agents)
        ),
        120,
        "every agent's SuperNode",
    )
    nodes_before = [supernode_pid(h.agent) for h in agents]

    # the operator starts the run through replica 0 (the lease holder) and follows it there
    start = cli(victim.proc.address, ca, "train", "start", "mlp", "--rounds", str(ROUNDS),
                "--min-devices", "3", "--name", RUN, "--round-timeout", "120")  # fmt: skip
    training = TrainingClient(survivor.proc.address, ADMIN_TOKEN, ca_cert=ca.read_bytes())

    def rounds_done() -> int:
        try:
            return len(training.get_run(RUN).rounds)
        except Exception:  # not yet submitted: NOT_FOUND
            return 0

    wait_for(lambda: rounds_done() >= 1, 300, f"round 1 of {RUN}; logs in {tmp_path}")
    run = training.get_run(RUN)
    assert run.state == "running" and len(run.rounds) < ROUNDS, run  # the kill is mid-run
    assert run.superlink == superlink
    lease = sync_redis(redis_url)
    holder = lease.get(LEASE_KEY)
    watch = FailoverWatch(admin, agents, names, victim, [r.endpoint for r in replicas])
    watch.kill()
    _, err = start.communicate(timeout=60)
    assert start.returncode == 1, err.decode()
    said = err.decode().splitlines()  # what it said on starting, then one error line
    assert said[-1].startswith("error: cannot reach the coordinator"), said
    assert RUN in said[0] and "Traceback" not in err.decode(), said
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
    assert [supernode_pid(h.agent) for h in agents] == nodes_before

    assert_telemetry_once(admin, agents, names, replicas[1:])
    training.close()
    admin.close()
    assert victim.proc.proc is not None and victim.proc.proc.returncode == -signal.SIGKILL

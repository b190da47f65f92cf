"""Federated runs over the API (issue 18): one SuperLink per fleet, runs recorded in Redis.

Two real coordinator replicas on one real Redis, each configured with ``--superlink local``:
only the rollout-lease holder runs a ``flower-superlink``, and both name it to agents. Two real
``flower-supernode`` processes (what agents start) join it. ``edgefleet train start`` runs
from a directory with no data dir, through replica A's TrainingService; the ServerApp records
each round in Redis itself, so ``train status``/``ls`` through replica B show the run. Bad
inputs are refused in one line, by the CLI and by the server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from edgefleet.agent.fl.supernode import SuperNodeSupervisor, node_config_for
from edgefleet.cli.train_cmds import train_app
from edgefleet.fl.contract import FAST_POLL_ENV
from edgefleet.fl.partition import make_shards, save_shard
from edgefleet.fleet_dir import init_fleet
from edgefleet.modelops.data import load_dataset
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, free_port, wait_for

pytestmark = pytest.mark.timeout(180)
runner = CliRunner()
SUPERLINK_KEY = "{edgefleet}:fl:superlink"


def _use(monkeypatch: pytest.MonkeyPatch, coordinator: CoordinatorProc) -> None:
    """Point the in-process CLI at ``coordinator`` (plaintext test replicas), as an operator's
    environment would."""
    monkeypatch.setenv("EDGEFLEET_COORDINATOR", coordinator.address)
    monkeypatch.setenv("EDGEFLEET_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("EDGEFLEET_INSECURE", "1")


#: the replicas log in as an ACL user with this password: it must never reach Flower's run config
FLEET_PASSWORD = "s3cret-fleet-pw"


def _with_password(redis_url: str) -> str:
    """``redis_url`` as an ACL user with a password (the default user keeps working for the
    other tests on the shared server)."""
    with redis.Redis.from_url(redis_url) as client:
        client.acl_setuser(
            "fleet", enabled=True, passwords=[f"+{FLEET_PASSWORD}"], keys=["*"],
            channels=["*"], commands=["+@all"],
        )  # fmt: skip
    return redis_url.replace("redis://", f"redis://fleet:{FLEET_PASSWORD}@", 1)


def _superlink_holds(db: Path, needle: str) -> list[str]:
    """Where in a SuperLink's database ``needle`` appears: every text and blob cell of every
    table, with stored FABs (zip archives: the app's pyproject.toml holds its run config)
    unpacked. Read-only, while the SuperLink runs."""
    import io
    import sqlite3
    import zipfile

    found: list[str] = []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):  # our own table names
                for cell in row:
                    texts: list[str] = []
                    if isinstance(cell, bytes) and cell[:2] == b"PK":
                        with zipfile.ZipFile(io.BytesIO(cell)) as fab:
                            texts += [fab.read(n).decode(errors="replace") for n in fab.namelist()]
                    elif isinstance(cell, bytes):
                        texts.append(cell.decode(errors="replace"))
                    elif isinstance(cell, str):
                        texts.append(cell)
                    found += [table for t in texts if needle in t]
    finally:
        con.close()
    return found


@pytest.fixture
def replicas(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> tuple[CoordinatorProc, CoordinatorProc]:
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    url = _with_password(redis_url)
    common = ("--redis-url", url, "--superlink", "local", "--rollout-interval", "1")
    a = coordinator_factory(*common, "--fleet-dir", str(fleet), data_dir=tmp_path / "a")
    b = coordinator_factory(*common, "--fleet-dir", str(fleet), data_dir=tmp_path / "b")
    return a, b


@pytest.fixture
def supernodes(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Start two SuperNodes with tiny digits shards against a SuperLink address."""
    started: list[SuperNodeSupervisor] = []

    def start(superlink: str) -> None:
        ds = load_dataset("digits")
        shards = make_shards(ds.x_train[:200], ds.y_train[:200], 2, 0.5, 0)
        for i, shard in enumerate(shards):
            path = save_shard(shard, tmp_path / "shards" / f"{i}.npz")
            config = node_config_for(f"dev-{i}", "rpi4", 4 << 30, str(path), battery=80)
            node = SuperNodeSupervisor(
                superlink, config, tmp_path / f"node-{i}", port=free_port(),
                env=dict(FAST_POLL_ENV),
            )  # fmt: skip
            node.start()
            started.append(node)

    yield start
    for node in started:
        node.stop(timeout=3.0)


def _superlink_processes(*coordinators: CoordinatorProc) -> list[str]:
    """Which replicas have a live supervised SuperLink (its pidfile names a live process)."""
    running = []
    for c in coordinators:
        pidfile = c.data_dir / "superlink" / "superlink.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            continue
        running.append(c.address)
    return running


@pytest.mark.slow  # real rounds and a registration: minutes on a loaded 2-core box
@pytest.mark.timeout(600)
def test_rounds_of_a_run_started_through_one_replica_are_seen_through_another(
    replicas: tuple[CoordinatorProc, CoordinatorProc],
    supernodes: Callable[[str], None],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = replicas
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.get(SUPERLINK_KEY) is not None, 60, "the fleet's SuperLink")
    published = json.loads(client.get(SUPERLINK_KEY) or "{}")

    def named(c: CoordinatorProc) -> bool:
        path = c.data_dir / "coordinator.json"
        return path.exists() and json.loads(path.read_text())["superlink"] == published["address"]

    # one SuperLink for the fleet: the lease holder's, and both replicas name it to agents
    wait_for(lambda: named(a) and named(b), 60, "both replicas to name the fleet's SuperLink")
    assert _superlink_processes(a, b) == [a.address], published
    supernodes(published["address"])

    nowhere = tmp_path / "elsewhere"  # no data dir, no run dir: everything over the API
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    monkeypatch.delenv("EDGEFLEET_DATA_DIR", raising=False)
    _use(monkeypatch, a)
    began = time.monotonic()
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--rounds", "1", "--min-devices", "2", "--name", "r1", "--register",
         "--json"],
    )  # fmt: skip
    took = time.monotonic() - began
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["state"] == "succeeded" and [r["round"] for r in doc["rounds"]] == [1]
    assert all(sorted(r["participants"]) == ["dev-0", "dev-1"] for r in doc["rounds"])
    assert list(nowhere.iterdir()) == []  # the CLI wrote nothing locally
    # the ServerApp registered the result through the variant store every replica shares
    assert doc["registered_model"] == "mlp-ft-r1", doc.get("register_error")
    assert client.hexists("{edgefleet}:store:models", "mlp-ft-r1")
    print(
        f"1 round and a registration through the API in {took:.1f}s, rounds {[r['seconds'] for r in doc['rounds']]}"
    )

    _use(monkeypatch, b)  # the other replica reads the ServerApp's own record from Redis
    res = runner.invoke(train_app, ["status", "r1"])
    assert res.exit_code == 0, res.output
    assert "round 1/1: 2 device(s)" in res.stdout and "r1: succeeded" in res.stdout
    res = runner.invoke(train_app, ["ls", "--json"])
    assert [(r["name"], r["state"]) for r in json.loads(res.stdout)] == [("r1", "succeeded")]


def test_one_superlink_per_fleet_and_runs_over_the_api_from_any_replica(
    replicas: tuple[CoordinatorProc, CoordinatorProc],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No SuperNodes needed: the run waits for devices, and that is enough to see it, from
    replica B, as the ServerApp records it in Redis, then stop it through B."""
    a, b = replicas
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.get(SUPERLINK_KEY) is not None, 60, "the fleet's SuperLink")
    published = json.loads(client.get(SUPERLINK_KEY) or "{}")
    assert _superlink_processes(a, b) == [a.address]  # only the lease holder runs one

    nowhere = tmp_path / "elsewhere"
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    monkeypatch.delenv("EDGEFLEET_DATA_DIR", raising=False)
    _use(monkeypatch, a)
    # bad inputs: one line each, from the CLI (exit 2) and from the server (exit 1)
    res = runner.invoke(train_app, ["start", "mlp", "--lr", "nan"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    res = runner.invoke(train_app, ["start", "my-model"])
    assert res.exit_code == 1 and "model: must be one of mlp" in res.stderr, res.output
    assert res.stderr.count("\n") == 1
    res = runner.invoke(train_app, ["start", "mlp", "--name", "bad name"])
    assert res.exit_code == 1 and "name: letters, digits" in res.stderr, res.output
    res = runner.invoke(train_app, ["start", "mlp", "--init", str(nowhere / "none.npz")])
    assert res.exit_code == 1 and "cannot read --init" in res.stderr
    res = runner.invoke(train_app, ["start", "mlp", "--rebuild"])
    assert res.exit_code == 2 and "over the API MODEL is an architecture" in res.stderr
    res = runner.invoke(train_app, ["start", "mlp", "--deploy", "ram >>> 1"])
    assert res.exit_code == 2 and "--deploy:" in res.stderr, res.output

    # a run that cannot get its devices yet: the CLI follows it until --timeout
    res = runner.invoke(
        train_app, ["start", "mlp", "--name", "r2", "--min-devices", "2", "--timeout", "1"]
    )
    assert res.exit_code == 1 and "run r2 still running after 1s" in res.stderr, res.output
    assert "run r2 (Flower run" in res.stderr and published["address"] in res.stderr
    res = runner.invoke(train_app, ["start", "mlp", "--name", "r2"])
    assert res.exit_code == 1 and "exists already" in res.stderr, res.output

    _use(monkeypatch, b)

    def state_via_b() -> str:
        out = runner.invoke(train_app, ["status", "r2", "--json"])
        return str(json.loads(out.stdout)["state"]) if out.exit_code == 0 else out.output

    # "running" is the ServerApp's own word, written to Redis from the SuperLink's host
    wait_for(lambda: state_via_b() == "running", 60, "the ServerApp's record via replica B")
    # the ServerApp logged in with the password from its environment: the SuperLink's
    # database (runs, their configs, the stored app) never saw it
    db = a.data_dir / "superlink" / "superlink.db"
    assert _superlink_holds(db, "redis-url"), "the run config is not where this test looks"
    assert _superlink_holds(db, FLEET_PASSWORD) == []
    res = runner.invoke(train_app, ["stop", "r2"])
    assert res.exit_code == 0 and "r2: stopped" in res.stdout, res.output
    res = runner.invoke(train_app, ["status", "nope"])
    assert res.exit_code == 1 and "no run 'nope'" in res.stderr
    _use(monkeypatch, a)
    res = runner.invoke(train_app, ["ls", "--json"])
    assert [(r["name"], r["state"]) for r in json.loads(res.stdout)] == [("r2", "stopped")]
    assert list(nowhere.iterdir()) == []  # the CLI wrote nothing locally

    # the lease moves (A stops cleanly): B starts the fleet's SuperLink and names it
    assert a.stop() == 0
    wait_for(lambda: _superlink_processes(b) == [b.address], 60, "B's SuperLink")
    wait_for(
        lambda: (
            json.loads(client.get(SUPERLINK_KEY) or "{}").get("address")
            not in (None, published["address"])
        ),
        60,  # a SuperLink takes ~1 s to listen on an idle box, 20 s on a loaded one
        "the fleet's SuperLink record to name B's",
    )


def test_the_servers_choices_match_the_cli_and_the_serverapp() -> None:
    from edgefleet.cli import train_validate
    from edgefleet.coordinator.fl import runs
    from edgefleet.flower.serverapp import STRATEGIES

    assert runs.STRATEGIES == STRATEGIES == train_validate.FL_STRATEGIES
    assert runs.DP_MODES == train_validate.DP_MODES and runs.MODELS == train_validate.MODELS


def test_a_running_record_whose_serverapp_stopped_renewing_reads_as_failed() -> None:
    from edgefleet.coordinator.fl.runs import view_of
    from edgefleet.coordinator.state.fl_runs import StoredRun

    meta = {"state": "submitted", "model": "mlp", "flwr_run_id": 7}
    running = {"state": "running", "rounds": [{"round": 1}]}
    assert view_of(StoredRun("r", meta, {}, False, False)).state == "submitted"
    assert view_of(StoredRun("r", meta, running, False, True)).state == "running"
    gone = view_of(StoredRun("r", meta, running, False, False))
    assert gone.state == "failed" and "stopped reporting" in gone.reason
    assert gone.record["flwr_run_id"] == 7 and len(gone.rounds) == 1
    assert view_of(StoredRun("r", meta, running, True, False)).state == "stopped"
    done = view_of(StoredRun("r", meta, {"state": "succeeded"}, False, False))
    assert done.state == "succeeded" and done.finished


def test_the_serverapps_record_reaches_redis_and_waits_while_it_is_away(
    redis_url: str, tmp_path: Path
) -> None:
    """What the ServerApp writes is read by any replica; Redis away never fails the run."""
    import asyncio
    import base64
    import io

    import numpy as np

    from edgefleet.coordinator.state.connect import connect
    from edgefleet.coordinator.state.store import FleetStore
    from edgefleet.flower.run_store import RunStore

    away = RunStore(f"unix://{tmp_path / 'nobody.sock'}", "r")
    away.write({"state": "running"})  # no exception: kept for later
    assert away._pending == {"state": "running"}
    away.close(timeout=0)

    buf = io.BytesIO()
    np.savez(buf, w=np.ones((2, 2), np.float32))

    async def upload() -> None:
        store = FleetStore(connect(redis_url))
        await store.create_run("r", {"state": "submitted"}, 1.0)
        await store.put_run_blob("r", "init", base64.b64encode(buf.getvalue()).decode())
        await store.close()

    asyncio.run(upload())
    rec = RunStore(redis_url, "r")
    init = rec.initial_weights()
    assert init is not None and init["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    one = {"round": 1, "participants": ["a", "b"], "train_loss": 0.5, "test_acc": 0.8}
    doc = {"state": "running", "settings": {"arch": "mlp"}, "rounds": [one]}
    rec.write(doc)
    rec.write(doc)  # rewritten whole after every round: each round is recorded once
    rec.write({**doc, "state": "failed", "reason": "x"})
    rec.close()

    async def read() -> tuple[dict[str, object], bool, Any]:
        store = FleetStore(connect(redis_url))
        run = await store.get_run("r")
        snapshot = await store.fl_snapshot()
        await store.close()
        assert run is not None
        return run.progress, run.alive, snapshot

    progress, alive, (latest, outcomes) = asyncio.run(read())
    assert progress["state"] == "failed" and alive
    # the round records every replica exports as edgefleet_fl_* metrics, written once each
    assert outcomes == {"completed": 1, "failed": 1}
    assert [(r.model, r.run_id, r.round, r.outcome) for r in latest] == [("mlp", "r", 2, "failed")]


def test_a_round_record_written_twice_is_counted_once(redis_url: str) -> None:
    """A write retried after its reply was lost (redis-py's own retry, or a reporter that saw
    a timeout under load) must not count a round twice."""
    import asyncio

    from edgefleet.coordinator.state.connect import connect
    from edgefleet.coordinator.state.model import FederatedRound
    from edgefleet.coordinator.state.store import FleetStore

    async def twice() -> dict[str, int]:
        store = FleetStore(connect(redis_url))
        r1 = FederatedRound("mlp", "run", 1, "completed", 0.5, 0.8, 2, 1.0)
        for r in (r1, r1, FederatedRound("mlp", "run", 2, "completed", 0.4, 0.9, 2, 2.0)):
            await store.record_fl_round(r)
        latest, outcomes = await store.fl_snapshot()
        await store.close()
        assert [(x.round, x.participants) for x in latest] == [(2, 2)]
        return outcomes

    assert asyncio.run(twice()) == {"completed": 2}

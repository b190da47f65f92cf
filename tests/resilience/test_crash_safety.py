"""Crash safety: kill -9 the coordinator at random points of rollouts, restart it on the same data
dir and Redis, and check the invariants after every kill, after every restart and at the end.

The fleet: scripted devices (``tests/fleetkit.py``) that heartbeat, obey their desired state and
report telemetry at least once (a report whose reply is lost is resent with the same sequence),
plus one real agent process that downloads, verifies and activates bundles and reports its own
telemetry. Rollouts of several models follow each other in waves; the kill times come from a
seeded RNG (``EDGEFLEET_CRASH_SEED`` overrides it), so a failure replays.

Invariants:
- every rollout document in Redis parses, its state is a known one, its version and current wave
  never go backwards and a finished rollout never changes again; no device is in two active
  rollouts;
- no device outside a rollout's applied waves (wave > current_wave) was ever told that rollout's
  variant: not in Redis, not in any heartbeat reply a scripted device saw;
- the real agent's cache holds only complete bundles that verify (signature, every file's hash),
  ``current`` and ``previous`` point at such bundles, partial downloads are only in downloads/;
- telemetry: each device's accepted record count equals its highest accepted sequence (each
  sequence counted once) at every check, and at the end equals every sequence it produced;
- at the end the last rollout succeeds and every device in it runs its planned variant.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from edgefleet.agent.artifacts import ArtifactCache, IntegrityError
from edgefleet.agent.telemetry import TelemetryBuffer
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.coordinator.rollouts.document import Rollout
from edgefleet.v1 import admin_pb2
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for
from tests.fleetkit import ScriptedDevice, add_servable_model

SEED = int(os.environ.get("EDGEFLEET_CRASH_SEED", "20251124"))
FAST = ("--offline-after", "60", "--heartbeat-interval", "0.2", "--rollout-interval", "0.2")
STATES = ("running", "paused", "succeeded", "rolled_back")
FINAL = ("succeeded", "rolled_back")
PREFIX = "{edgefleet}:"
MODELS = ("crash-a", "crash-b", "crash-c")
SCRIPTED_PROFILE = "rpi5"  # the real agent is an rpi4: selectors tell the two apart
PAYLOAD = 300_000  # ~5 chunks per bundle: downloads can be cut by a kill


@dataclass
class Fleet:
    """The scripted devices, driven from a background thread, with what each was told."""

    devices: list[ScriptedDevice]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[str, set[str]] = field(default_factory=dict)  # device id -> rollout ids desired
    acked_seq: dict[str, int] = field(default_factory=dict)  # device id -> last acked sequence
    errors: int = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for d in self.devices:
                try:
                    desired = d.heartbeat()
                    with self.lock:
                        if desired.rollout_id:
                            self.seen.setdefault(d.device_id, set()).add(desired.rollout_id)
                    d.obey()
                    nxt = self.acked_seq.get(d.device_id, 0) + 1
                    # at least once: the same sequence again until a reply says it arrived
                    d.report_metric("crash_probe", float(nxt), seq=nxt)
                    with self.lock:
                        self.acked_seq[d.device_id] = nxt
                except grpc.RpcError:
                    self.errors += 1
            time.sleep(0.05)

    def snapshot(self) -> dict[str, set[str]]:
        with self.lock:
            return {k: set(v) for k, v in self.seen.items()}


@dataclass
class Checker:
    """Invariants over Redis, the scripted devices' observations and the agent's cache."""

    client: redis.Redis
    fleet: Fleet
    agent_dir: Path
    versions: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    checks: int = 0
    rollout_docs_checked: int = 0
    bundles_verified: int = 0
    device_checks: int = 0

    def devices(self) -> dict[str, dict[str, str]]:
        ids = [k.removeprefix(PREFIX + "device:") for k in self.client.keys(PREFIX + "device:*")]
        out = {}
        for dev in ids:
            if ":" in dev:
                continue  # the metrics hash
            raw = self.client.hgetall(PREFIX + "device:" + dev)
            if raw:
                out[dev] = raw
        return out

    def rollouts(self) -> list[Rollout]:
        docs = []
        for rid in self.client.zrange(PREFIX + "rollouts", 0, -1):
            text = self.client.get(PREFIX + "rollout:" + rid)
            assert text is not None, f"rollout {rid} indexed but its document is missing"
            docs.append(Rollout.from_json(text))  # parses, or the test fails here
        return docs

    def check(self, when: str) -> None:
        self.checks += 1
        # Observations first, documents after: a wave is applied (document) before any device
        # is told about it, so a later read of the document covers every earlier observation.
        seen = self.fleet.snapshot()
        devices = self.devices()
        rollouts = self.rollouts()
        active: dict[str, str] = {}
        for r in rollouts:
            self.rollout_docs_checked += 1
            assert r.state in STATES, f"{when}: rollout {r.id} in unknown state {r.state!r}"
            last_wave = max(d.wave for d in r.devices)
            assert 0 <= r.current_wave <= last_wave, f"{when}: {r.id} wave {r.current_wave}"
            before = self.versions.get(r.id)
            if before is not None:
                version, wave, state = before
                assert r.version >= version, (
                    f"{when}: {r.id} version went back {version}->{r.version}"
                )
                assert r.current_wave >= wave, (
                    f"{when}: {r.id} wave went back {wave}->{r.current_wave}"
                )
                if state in FINAL:
                    assert (r.state, r.version) == (state, version), f"{when}: {r.id} left {state}"
            self.versions[r.id] = (r.version, r.current_wave, r.state)
            for d in r.devices:
                if r.state in ("running", "paused"):
                    assert d.device_id not in active, (
                        f"{when}: {d.device_id} in two active rollouts {active.get(d.device_id)}, {r.id}"
                    )
                    active[d.device_id] = r.id
                if d.wave <= r.current_wave:
                    continue
                told = seen.get(d.device_id, set())
                assert r.id not in told, (
                    f"{when}: {d.name} (wave {d.wave}) was told rollout {r.id}'s variant while "
                    f"the rollout is at wave {r.current_wave}"
                )
                raw = devices.get(d.device_id, {})
                assert raw.get("desired_rollout") != r.id, (
                    f"{when}: {d.name} (wave {d.wave}) desires rollout {r.id} at wave {r.current_wave}"
                )
        for raw in devices.values():
            self.device_checks += 1
            records = int(raw.get("telemetry_records") or 0)
            sequence = int(raw.get("telemetry_sequence") or 0)
            assert records == sequence, (
                f"{when}: {raw.get('name')} counted {records} records up to sequence {sequence}"
            )
        self.check_agent_cache(when)

    def check_agent_cache(self, when: str) -> None:
        ident_path = self.agent_dir / "identity.json"
        if not ident_path.exists():
            return
        keys = json.loads(ident_path.read_text()).get("bundle_public_keys") or []
        if not keys:
            return
        cache = ArtifactCache(self.agent_dir, keys)
        for entry in sorted(cache.variants_dir.iterdir()):
            if entry.name.startswith(".tmp-"):
                continue  # a bundle being unpacked and verified: never at a path anything reads
            assert len(entry.name) == 64, f"{when}: stray entry {entry.name} in the agent's cache"
            try:
                cache.load(entry.name)
            except (IntegrityError, FileNotFoundError, OSError) as exc:
                if not entry.exists():
                    continue  # garbage-collected while we looked
                raise AssertionError(
                    f"{when}: cached bundle {entry.name[:12]} is broken: {exc}"
                ) from exc
            self.bundles_verified += 1
        for link in ("current", "previous"):
            path = cache.root / link
            if not path.is_symlink():
                continue
            target = Path(os.readlink(path)).name
            assert (cache.variants_dir / target).is_dir() or not path.is_symlink(), (
                f"{when}: {link} points at a missing bundle {target[:12]}"
            )
        for entry in cache.downloads_dir.iterdir():
            assert entry.suffix in (".part", ".json", ".tmp"), f"{when}: stray {entry.name}"


def drive_until(
    admin: AdminClient, rollout_id: str, states: tuple[str, ...], timeout: float
) -> admin_pb2.Rollout:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = admin.get_rollout(rollout_id)
            if r.state in states:
                return r
        except AdminClientError:
            pass
        assert time.monotonic() < deadline, f"rollout {rollout_id} stuck"
        time.sleep(0.2)


def run_kill_loop(
    kills: int,
    up_seconds: tuple[float, float],
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    data = tmp_path / "coord"
    variants = {
        m: add_servable_model(data, m, PAYLOAD, seeds=(i,))[0] for i, m in enumerate(MODELS)
    }
    coord = coordinator_factory("--redis-url", redis_url, *FAST, data_dir=data)
    agent = agent_factory(coord.address, "rpi4", "crash-agent", "--token", ENROLL_TOKEN)
    scripted = [
        ScriptedDevice.register(coord.address, f"pi-{i}", SCRIPTED_PROFILE) for i in range(5)
    ]
    fleet = Fleet(scripted)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    checker = Checker(client, fleet, agent.state_dir)
    identity = agent.state_dir / "identity.json"
    wait_for(
        lambda: identity.exists() and bool(json.loads(identity.read_text()).get("device_id")),
        30,
        "the real agent to enrol",
    )
    agent_id = json.loads(identity.read_text())["device_id"]
    driver = threading.Thread(target=fleet.run, daemon=True)
    driver.start()
    # Two chains of rollouts on disjoint devices, each started again as soon as its last one
    # finished: waves over the scripted devices, and one-device rollouts to the real agent
    # (which spends much of a flapping coordinator's uptime in its reconnect backoff).
    chains: dict[str, list[str]] = {"scripted": [], "agent": []}
    selectors = {"scripted": f"profile:{SCRIPTED_PROFILE}", "agent": f"device:{agent_id}"}
    outcomes: dict[str, str] = {}
    kill_log: list[str] = []
    gate = admin_pb2.RolloutGate(soak_seconds=0.2, wave_timeout_seconds=600, min_inferences=0)

    def next_rollouts(admin: AdminClient) -> None:
        for chain, ids in chains.items():
            current = admin.get_rollout(ids[-1]) if ids else None
            if current is not None and current.state not in FINAL:
                continue
            if current is not None:
                outcomes[current.id] = current.state
            model = MODELS[len(ids) % len(MODELS)]
            strategy = "waves" if chain == "scripted" else "all"
            r = admin.create_rollout(
                admin_pb2.CreateRolloutRequest(
                    model=model,
                    selector=selectors[chain],
                    strategy=strategy,
                    waves=[0.34, 0.67, 1.0] if strategy == "waves" else [],
                    gate=gate,
                )
            )
            ids.append(r.id)

    def describe(rollout_id: str) -> str:
        doc = client.get(PREFIX + "rollout:" + rollout_id)
        at = Rollout.from_json(doc) if doc else None
        if at is None:
            return f"{rollout_id} ?"
        return f"{rollout_id} {at.state} wave {at.current_wave} v{at.version}"

    try:
        for kill in range(kills):
            with AdminClient(coord.address, ADMIN_TOKEN) as admin:
                next_rollouts(admin)
            up = rng.uniform(*up_seconds)
            time.sleep(up)
            coord.stop(signal.SIGKILL)
            kill_log.append(
                f"kill {kill + 1:2d} after {up:4.2f}s up: "
                + "; ".join(describe(ids[-1]) for ids in chains.values())
            )
            checker.check(f"after kill {kill + 1}")
            time.sleep(rng.uniform(0.0, 0.3))
            coord.start()
            checker.check(f"after restart {kill + 1}")
            assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
        # The agent dies too, once (its cache must hold), and comes back at once instead of
        # finishing a reconnect backoff grown over the flapping; then both chains' last rollouts
        # complete on a coordinator left alone.
        agent.stop(signal.SIGKILL)
        checker.check("after the agent's kill -9")
        agent = agent_factory(coord.address, "rpi4", "crash-agent", state_dir=agent.state_dir)
        restarted_at = time.time()
        planned: dict[str, str] = {}
        with AdminClient(coord.address, ADMIN_TOKEN) as admin:
            for ids in chains.values():
                last = drive_until(admin, ids[-1], FINAL, 60)
                outcomes[last.id] = last.state
                assert last.state == "succeeded", last.message
                assert {d.status for d in last.devices} == {"active"}
                planned.update({d.device_id: d.variant_id for d in last.devices})
            for d in scripted:
                assert d.active == planned[d.device_id]
            wait_for(
                lambda: admin.get_device(agent_id).active_variant == planned[agent_id],
                20,
                "the agent to report its active variant",
            )
            assert admin.get_device(agent_id).failed_variant == ""

            def restarted_agent_is_up() -> bool:
                # the new process heartbeats (its own uptime) before it is asked to stop: a
                # SIGTERM while it is still starting exits at once, leaving its buffer for later
                dev = admin.get_device(agent_id)
                seen = dev.last_seen.ToNanoseconds() / 1e9
                return seen > restarted_at and dev.uptime_seconds < time.time() - restarted_at + 1

            wait_for(restarted_agent_is_up, 60, "the restarted agent to heartbeat")
        checker.check("at the end")
    finally:
        fleet.stop.set()
        driver.join(10)
    cache = ArtifactCache(agent.state_dir, json.loads(identity.read_text())["bundle_public_keys"])
    assert cache.current() == planned[agent_id]
    assert cache.load(cache.current()).variant_id == planned[agent_id]
    # Telemetry: the agent stops cleanly (flushing), then every sequence is counted once.
    assert agent.stop(signal.SIGTERM) == 0
    buffer = TelemetryBuffer(agent.state_dir)
    produced, pending, dropped = buffer.last_sequence(), buffer.pending(), buffer.dropped()
    buffer.close()
    counts = []
    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        dev = admin.get_device(agent_id)
        counts.append(
            f"crash-agent: buffer last_sequence={produced} pending={pending} dropped={dropped}; "
            f"coordinator records={dev.telemetry_records} sequence={dev.telemetry_sequence}"
        )
        assert pending == 0 and dropped == 0 and produced > 0
        assert (dev.telemetry_records, dev.telemetry_sequence) == (produced, produced)
        for d in scripted:
            sent = fleet.acked_seq.get(d.device_id, 0)
            got = admin.get_device(d.device_id)
            counts.append(
                f"{d.name}: sent sequences 1..{sent}; coordinator records={got.telemetry_records} "
                f"sequence={got.telemetry_sequence}"
            )
            assert (got.telemetry_records, got.telemetry_sequence) == (sent, sent)
    client.close()
    print(f"\ncrash safety: seed {SEED}, {kills} kill -9s, {time.monotonic() - started:.1f}s")
    for line in kill_log:
        print(f"  {line}")
    print(
        f"  rollouts: {len(outcomes)} ({', '.join(f'{k}={v}' for k, v in outcomes.items())}); "
        f"variants {', '.join(v[:12] for v in variants.values())}"
    )
    print(
        f"  invariant checks: {checker.checks}; rollout documents {checker.rollout_docs_checked}; "
        f"device records {checker.device_checks}; agent bundles verified "
        f"{checker.bundles_verified}; scripted RPC errors while down {fleet.errors}"
    )
    for line in counts:
        print(f"  {line}")


def test_coordinator_kill9_during_rollouts_keeps_every_invariant(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    tmp_path: Path,
) -> None:
    """12 kills, each costing a coordinator restart (~2 s); the 60-kill run below is slow."""
    run_kill_loop(12, (0.1, 1.2), coordinator_factory, agent_factory, redis_url, tmp_path)


@pytest.mark.slow
def test_coordinator_kill9_many_times_with_longer_runs(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    redis_url: str,
    tmp_path: Path,
) -> None:
    run_kill_loop(60, (0.1, 3.0), coordinator_factory, agent_factory, redis_url, tmp_path)


def test_coordinator_kill9_during_a_federated_run_never_touches_the_round(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    """6 seeded kill -9s of the coordinator while a federated run is in flight on two real
    agents' SuperNodes: every restart adopts the same SuperLink process (its own process
    group, its pidfile), so the run never notices -- it finishes with every round complete.
    (Each kill costs a coordinator restart, ~3 s; the 20-kill run below is slow-marked.)"""
    run_federated_kill_loop(6, 6, coordinator_factory, agent_factory, tmp_path)


@pytest.mark.slow
def test_coordinator_kill9_20_times_during_a_federated_run(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    """The same with 20 kills: more random points of the run hit."""
    run_federated_kill_loop(20, 10, coordinator_factory, agent_factory, tmp_path)


def run_federated_kill_loop(
    kills: int,
    rounds: int,
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    from edgefleet.devtools.fl_local import pretrain_biased
    from tests.conftest import _env, free_port

    rng = random.Random(SEED + 1)
    data = tmp_path / "coord"
    coord = coordinator_factory(
        *FAST, "--superlink", "local", "--superlink-port", str(free_port()), data_dir=data
    )
    wait_for((data / "coordinator.json").exists, 60, "the coordinator's SuperLink")
    pidfile = data / "superlink" / "superlink.pid"
    superlink_pid = int(pidfile.read_text())
    for i in range(2):
        agent_factory(
            coord.address, "rpi4", f"fl-{i}", "--token", ENROLL_TOKEN, "--local-data", "digits",
            "--partition", f"{i}/2",
        )  # fmt: skip
    init = pretrain_biased("mlp", tmp_path / "init.npz")
    runs = tmp_path / "runs"
    # rounds must outlast the kills (checked below); seen: ~1 round per 3 kills (20 -> round 7)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "edgefleet.cli.main", "train", "start", "mlp",
            "--rounds", str(rounds), "--min-devices", "2", "--init", str(init),
            "--runs-dir", str(runs), "--data-dir", str(data), "--name", "crash", "--json",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    progress = runs / "crash" / "progress.json"

    def rounds_done() -> int:
        try:
            return len(json.loads(progress.read_text())["rounds"])
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: rounds_done() >= 1, 180, "round 1")
    kill_log = []
    for kill in range(kills):
        time.sleep(rng.uniform(0.1, 1.0))
        coord.stop(signal.SIGKILL)
        kill_log.append(rounds_done())
        (data / "coordinator.json").unlink()  # rewritten once the SuperLink is up again
        coord.start()
        wait_for((data / "coordinator.json").exists, 60, "the restarted coordinator")
        assert int(pidfile.read_text()) == superlink_pid, f"kill {kill + 1}: a new SuperLink"
    assert rounds_done() < rounds, "the run ended before the last kill: make it longer"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out + err).decode()[-2000:]
    doc = json.loads(progress.read_text())
    assert doc["state"] == "succeeded"
    assert [len(r["participants"]) for r in doc["rounds"]] == [2] * rounds
    assert coord.log.read_text().count("superlink adopted from a previous supervisor") == kills
    print(f"\nfederated crash loop: seed {SEED + 1}, {kills} kill -9s at rounds {kill_log}")

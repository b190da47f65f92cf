"""Network faults for real: agents in their own network namespaces, links cut, delayed and lossy.

Two real agent processes run in namespaces of their own (``ip netns exec``), each behind a veth
pair; the coordinator listens on a root-side veth address. ``cut`` pulls one agent's cable
(``ip link set ... down``) and ``lossy`` suffers delay and loss (``tc netem``; nftables random
drop where this kernel has no sch_netem) during registration, during the download of a rolled-out
bundle, and while telemetry is reported. Afterwards both devices run the desired variant from a
complete, verified bundle, and every telemetry record the agents ever buffered is counted by the
coordinator exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.artifacts import ArtifactCache
from edgefleet.agent.telemetry import TelemetryBuffer
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.v1 import admin_pb2
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, wait_for
from tests.fleetkit import add_servable_model
from tests.resilience.conftest import NetnsAgentProc, NetnsCoordinatorProc, NetnsLab
from tests.resilience.conftest import netem_available as _netem_available

BUNDLE_BYTES = 1_500_000  # ~23 chunks of 64 KiB: long enough to be cut in the middle
FAST = ("--offline-after", "30", "--heartbeat-interval", "0.5", "--rollout-interval", "0.2")


def make_single_variant_model(data_dir: Path, name: str = "netmodel") -> str:
    """One servable fp32 variant (every rpi4 takes it) with ~1.5 MB of weights."""
    (vid,) = add_servable_model(data_dir, name, BUNDLE_BYTES)
    return vid


def identity(agent: NetnsAgentProc) -> dict[str, Any]:
    path = agent.state_dir / "identity.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def device_id(agent: NetnsAgentProc) -> str:
    return str(identity(agent).get("device_id") or "")


def get_device(admin: AdminClient, dev: str) -> admin_pb2.Device | None:
    try:
        return admin.get_device(dev)
    except AdminClientError:
        return None


def assert_agent_alive(*agents: NetnsAgentProc) -> None:
    for a in agents:
        assert a.proc is not None and a.proc.poll() is None, (
            f"agent exited {a.proc.returncode if a.proc else '?'}:\n{a.log.read_text()[-3000:]}"
        )


def test_netem_is_available_for_delay() -> None:
    """Delay needs sch_netem; the main test substitutes nftables loss without it (and says so)."""
    ok, why = _netem_available()
    if not ok:
        pytest.skip(
            f"tc netem unavailable in this kernel ({why}): delay not emulated, loss via nft"
        )


def test_agents_in_namespaces_converge_and_count_telemetry_exactly_through_faults(
    netns_lab: NetnsLab,
    netns_processes: tuple[Callable[..., NetnsCoordinatorProc], Callable[..., NetnsAgentProc]],
    tmp_path: Path,
) -> None:
    start = time.monotonic()
    make_coordinator, make_agent = netns_processes
    cut, lossy = netns_lab.add(), netns_lab.add()
    data = tmp_path / "coord"
    target = make_single_variant_model(data)
    coord = make_coordinator(cut.root_ip, *FAST, data_dir=data)
    # The coordinator really is reachable only through the veth address.
    assert coord.address.startswith(cut.root_ip + ":")
    timeline: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - start:6.1f}s {what}")

    # --- registration: one agent's cable is out, the other's link is lossy (and slow) -----
    cut.cut()
    note(f"cut {cut.netns}")
    how = lossy.impair(delay_ms=200, loss_pct=30)
    note(f"impaired {lossy.netns}: {how}")
    a_cut = make_agent(cut, coord.address, "ns-cut", "--profile", "rpi4", "--token", ENROLL_TOKEN)
    a_lossy = make_agent(
        lossy, coord.address, "ns-lossy", "--profile", "rpi4", "--token", ENROLL_TOKEN
    )
    agents = (a_cut, a_lossy)
    # the process started is the agent itself (ip netns exec execs it): signals reach it
    for a in agents:
        assert a.proc is not None
        wait_for(
            lambda a=a: b"agent" in Path(f"/proc/{a.proc.pid}/cmdline").read_bytes(),  # type: ignore[union-attr]
            5,
            "ip netns exec to exec the agent",
        )
    time.sleep(2.0)  # the agent is up and trying; a shorter wait keeps its backoff short too
    assert_agent_alive(*agents)
    assert device_id(a_cut) == "", "registered through a cut link?"
    note("ns-cut not registered while its link is down")
    cut.restore()
    note(f"restored {cut.netns}")
    wait_for(lambda: bool(device_id(a_cut)), 40, "ns-cut to register once its link is back")
    note("ns-cut registered")
    wait_for(lambda: bool(device_id(a_lossy)), 40, "ns-lossy to register over the lossy link")
    note("ns-lossy registered (over the impaired link)")
    lossy.clear()
    ids = {a.state_dir.name: device_id(a) for a in agents}

    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        for dev in ids.values():
            wait_for(lambda dev=dev: get_device(admin, dev) is not None, 20, f"{dev} known")
        names = sorted(d.name for d in admin.list_devices())
        assert names == ["ns-cut", "ns-lossy"], names  # no twin from a lost Register reply

        # --- artifact download: cut mid-stream on one, lossy on the other --------------------
        lossy.impair(delay_ms=200, loss_pct=30)
        note(f"impaired {lossy.netns} again for the download")
        rollout = admin.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="netmodel",
                selector="all",
                strategy="all",
                gate=admin_pb2.RolloutGate(
                    soak_seconds=0.5, wave_timeout_seconds=120, min_inferences=0
                ),  # these agents serve no traffic: distribution is what is tested
            )
        )
        assert {d.variant_id for d in rollout.devices} == {target}
        cut_cache = ArtifactCache(a_cut.state_dir)
        wait_for(
            lambda: cut_cache.partial_bytes(target) > 0 or cut_cache.has(target),
            30,
            "ns-cut to start downloading",
        )
        partial_at_cut = cut_cache.partial_bytes(target)
        cut.cut()
        note(f"cut {cut.netns} mid-download at {partial_at_cut} bytes")
        time.sleep(1.5)
        if cut_cache.has(target):
            # the last chunks can land between reading the partial size and the cut taking
            # effect (a fast box); the convergence and exact-count checks below still hold
            note(f"{cut.netns}: download completed before the cut took effect")
        else:
            note(f"{cut.netns}: no completion while cut (partial {partial_at_cut} bytes)")
        cut.restore()
        note(f"restored {cut.netns}")
        lossy_cache = ArtifactCache(a_lossy.state_dir)
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline and not lossy_cache.has(target):
            time.sleep(0.2)
        lossy_partial = lossy_cache.partial_bytes(target)
        lossy.clear()
        note(
            f"cleared {lossy.netns} (bundle {'complete' if lossy_cache.has(target) else 'partial'}"
            f" {lossy_partial} bytes when the loss stopped)"
        )

        def converged() -> bool:
            devices = [get_device(admin, d) for d in ids.values()]
            return all(d is not None and d.active_variant == target for d in devices)

        wait_for(converged, 60, "both devices to activate the desired variant")
        note("both devices active on the desired variant")
        wait_for(lambda: admin.get_rollout(rollout.id).state == "succeeded", 20, "rollout success")
        for dev in ids.values():
            d = admin.get_device(dev)
            assert d.failed_variant == "" and d.desired.variant_id == target

        # --- telemetry: buffered behind a cut, sent through loss ------------------------------
        before = {n: admin.get_device(d).telemetry_sequence for n, d in ids.items()}
        cut.cut()
        lossy.impair(delay_ms=200, loss_pct=30)
        note("telemetry phase: ns-cut cut, ns-lossy impaired")
        time.sleep(2.0)  # 4 heartbeats: reports pile up behind the cut and through the loss
        # What the cut agent holds that the coordinator has not acknowledged. (The agent
        # samples only after a successful heartbeat, so a dead link stops new metrics; what
        # is buffered is what was produced but not yet acked when the cable went.)
        buf = TelemetryBuffer(a_cut.state_dir)
        unacked_at_restore = (
            buf.last_sequence() - admin.get_device(ids["ns-cut"]).telemetry_sequence
        )
        buf.close()
        cut.restore()
        lossy.clear()
        note(f"telemetry phase: links restored; ns-cut held {unacked_at_restore} unacked records")
        assert_agent_alive(*agents)

        def caught_up(name: str) -> bool:
            buf = TelemetryBuffer(agents[0 if name == "ns-cut" else 1].state_dir)
            try:
                produced = buf.last_sequence()
            finally:
                buf.close()
            seq = admin.get_device(ids[name]).telemetry_sequence
            return seq > before[name] and produced - seq < 10

        for name in ids:
            wait_for(lambda name=name: caught_up(name), 45, f"{name} to deliver its backlog")
        note("both agents caught up on telemetry")

    assert_agent_alive(*agents)
    for a in agents:  # a clean stop flushes what is left and says goodbye
        assert a.stop(signal.SIGTERM) == 0, a.log.read_text()[-3000:]
    note("agents stopped with SIGTERM")

    counts = []
    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        for a in agents:
            buf = TelemetryBuffer(a.state_dir)
            produced, pending, dropped = buf.last_sequence(), buf.pending(), buf.dropped()
            buf.close()
            d = admin.get_device(ids[a.state_dir.name])
            counts.append(
                f"{a.state_dir.name}: buffer last_sequence={produced} pending={pending} "
                f"dropped={dropped}; coordinator records={d.telemetry_records} "
                f"sequence={d.telemetry_sequence}; active={d.active_variant[:12]} "
                f"(desired {target[:12]})"
            )
            assert pending == 0 and dropped == 0
            assert produced > 10
            # exactly once: every sequence the agent ever assigned, counted once
            assert (d.telemetry_records, d.telemetry_sequence) == (produced, produced)
            assert d.active_variant == target
            cache = ArtifactCache(a.state_dir, identity(a)["bundle_public_keys"])
            assert cache.current() == target
            assert cache.load(target).variant_id == target  # complete and verified
            assert [p.name for p in cache.variants_dir.iterdir()] == [target]
            assert list(cache.downloads_dir.iterdir()) == []
    print("\nnetns fault test:")
    print(f"  impairment: {lossy.mechanism}")
    for line in timeline:
        print(f"  {line}")
    for line in counts:
        print(f"  {line}")

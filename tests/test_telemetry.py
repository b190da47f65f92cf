"""Loss-free telemetry: the agent's on-disk buffer, dedup on the coordinator, and
exact counts across coordinator kills and agent restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from edgefleet.agent.telemetry import TelemetryBuffer
from edgefleet.catalog import get_profile
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.registry import Registration, Registry, RegistrySettings
from edgefleet.coordinator.state.model import TelemetryIn
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for

TOKENS = Tokens(admin="a", enroll="e", admin_source="t", enroll_source="t")


def test_buffer_numbers_records_across_reopen_and_never_reuses(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path)
    assert [buf.metric("x", 1.0), buf.event("y", "hello")] == [1, 2]
    buf.ack(2)
    buf.close()
    again = TelemetryBuffer(tmp_path)
    assert again.metric("x", 2.0) == 3  # sequence survives a restart, even when all were acked
    assert again.pending() == 1 and again.last_sequence() == 3


def test_buffer_is_bounded_and_counts_what_it_dropped(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path, max_records=5)
    for i in range(12):
        buf.metric("m", float(i))
    kept = buf.peek(100)
    assert [r.sequence for r in kept] == [8, 9, 10, 11, 12]  # oldest dropped first
    assert buf.dropped() == 7
    assert buf.ack(10) == 3 and [r.sequence for r in buf.peek(100)] == [11, 12]


def _store_run(redis_url: str, body: Callable[[Registry, FleetStore], Any]) -> Any:
    async def main() -> Any:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        registry = Registry(store, TOKENS, RegistrySettings())
        try:
            return await body(registry, store)
        finally:
            await store.close()

    return asyncio.run(main())


def _records(start: int, stop: int) -> list[TelemetryIn]:
    return [
        TelemetryIn(sequence=s, time_unix=1.0, name="m", value=float(s)) for s in range(start, stop)
    ]


def test_coordinator_counts_each_sequence_once(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register("e", Registration("instance-key-t1", "t", get_profile("rpi4")))
        first, _, new = await r.report_telemetry(e.device_id, e.credential, _records(1, 11))
        assert (first.acked_sequence, first.accepted, first.duplicates) == (10, 10, 0)
        assert [x.sequence for x in new] == list(range(1, 11))
        # a resend that overlaps (the agent never saw the ack) plus new records
        second, _, new = await r.report_telemetry(e.device_id, e.credential, _records(6, 16))
        assert (second.acked_sequence, second.accepted, second.duplicates) == (15, 5, 5)
        assert [x.sequence for x in new] == [11, 12, 13, 14, 15]  # only new ones feed metrics
        view = await r.get_device(e.device_id)
        assert view.record.telemetry_records == 15 and view.record.telemetry_sequence == 15
        assert view.latest_metrics == {"m": 15.0}
        event = TelemetryIn(sequence=16, time_unix=2.0, name="registered", message="hi")
        await r.report_telemetry(e.device_id, e.credential, [event])
        # re-registering (same instance key) keeps the high-water mark: no double counting
        await r.register("e", Registration("instance-key-t1", "t", get_profile("rpi4")))
        assert (await r.get_device(e.device_id)).record.telemetry_sequence == 16
        await r.remove_device(e.device_id)

    _store_run(redis_url, body)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert not [k for k in client.keys("*") if "device:" in k]  # metrics hash went too
    [(_, fields)] = client.xrange("{edgefleet}:events")
    assert fields["kind"] == "registered" and fields["sequence"] == "16"


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([TelemetryIn(2, 1.0, "m", 1.0), TelemetryIn(2, 1.0, "m", 1.0)], "records[1].sequence"),
        ([TelemetryIn(0, 1.0, "m", 1.0)], "records[0].sequence"),
        ([TelemetryIn(1, 1.0, "Bad-Name", 1.0)], "records[0].name"),
        ([TelemetryIn(1, 1.0, "m", float("nan"))], "records[0].value"),
        (_records(1, 502), "records"),
    ],
)
def test_malformed_telemetry_is_refused_whole(
    redis_url: str, records: list[TelemetryIn], field: str
) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register("e", Registration("instance-key-t2", "t", get_profile("rpi4")))
        with pytest.raises(InvalidArgument) as info:
            await r.report_telemetry(e.device_id, e.credential, records)
        assert info.value.field == field
        assert (await r.get_device(e.device_id)).record.telemetry_records == 0

    _store_run(redis_url, body)


def _device(address: str, name: str) -> dict[str, Any] | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        EDGEFLEET_COORDINATOR=address, EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN, EDGEFLEET_INSECURE="1"
    )
    listed = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", "devices", "ls", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    for d in json.loads(listed.stdout):
        if d["name"] == name:
            return dict(d)
    return None


def test_every_record_counts_exactly_once_through_coordinator_kills_and_agent_restarts(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    coord = coordinator_factory("--offline-after", "2", "--heartbeat-interval", "0.2")
    state = tmp_path / "agents" / "tele"
    agent = agent_factory(coord.address, "rpi4", "tele", "--token", ENROLL_TOKEN, state_dir=state)
    wait_for(lambda: (_device(coord.address, "tele") or {}).get("status") == "online", 15, "online")
    for _ in range(3):  # kill the coordinator hard while the agent reports
        time.sleep(0.8)
        coord.stop(signal.SIGKILL)
        time.sleep(0.6)  # the agent buffers on disk meanwhile
        coord.start()
    agent.stop(signal.SIGKILL)  # and the agent dies without a goodbye once
    second = agent_factory(coord.address, "rpi4", "tele", state_dir=state)
    time.sleep(1.0)
    assert second.stop(signal.SIGTERM) == 0  # a clean stop flushes the buffer first

    buffer = TelemetryBuffer(state)
    produced = buffer.last_sequence()
    assert buffer.pending() == 0 and buffer.dropped() == 0
    device = _device(coord.address, "tele")
    assert device is not None
    assert produced > 20  # the run really produced a stream of records
    # exactly once: every sequence the agent ever assigned, counted once
    assert device["telemetry"] == {"records": produced, "sequence": produced}
    assert device["status"] == "offline"

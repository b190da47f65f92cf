"""Replica hygiene (issue 18 item 6), with real redis-server and coordinator processes:
health follows Redis, a clean stop releases the rollout-controller lease, every replica exports
fleet and rollout gauges read from Redis, a Redis that persists nothing is reported, and a
replica never removes another's coordinator.json.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.catalog import get_profile
from edgefleet.coordinator.registry import Registration, Registry, RegistrySettings
from edgefleet.coordinator.rollout_controller import LEASE_NAME
from edgefleet.coordinator.rollouts.document import Gate, Rollout
from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from edgefleet.v1 import device_pb2
from tests.conftest import CoordinatorProc, cli_env, health_status, wait_for
from tests.redis_procs import RedisProc

T = TypeVar("T")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEVICE_SERVICE = device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name
LEASE_KEY = Keys().lease(LEASE_NAME)
TOKENS = Tokens(admin="a", enroll="enroll-secret", admin_source="test", enroll_source="test")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProc]:
    """A redis-server this test may freeze, kill and restart (not the session's shared one)."""
    server = RedisProc(tmp_path / "redis").start()
    yield server
    server.kill()


def test_health_is_not_serving_while_redis_is_away_and_serving_when_it_returns(
    own_redis: RedisProc, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory("--redis-url", own_redis.url)

    def health(service: str = "") -> int | None:
        return health_status(coord.address, service)

    assert health() == SERVING and health(DEVICE_SERVICE) == SERVING
    own_redis.signal(signal.SIGSTOP)  # frozen: connections open, no answers
    try:
        wait_for(lambda: health() == NOT_SERVING, 10, "NOT_SERVING with Redis frozen")
        assert health(DEVICE_SERVICE) == NOT_SERVING
    finally:
        own_redis.signal(signal.SIGCONT)
    wait_for(lambda: health() == SERVING, 10, "SERVING with Redis back")
    assert health(DEVICE_SERVICE) == SERVING

    own_redis.kill()  # gone: connections refused
    wait_for(lambda: health() == NOT_SERVING, 10, "NOT_SERVING with Redis dead")
    own_redis.start()  # same port, empty (no persistence): the probe only asks for PING
    wait_for(lambda: health() == SERVING, 10, "SERVING with Redis restarted")
    assert "Redis does not answer" in coord.log.read_text()


CLI = (sys.executable, "-m", "edgefleet.cli.main")


def fleet(tmp_path: Path) -> str:
    """One fleet identity (CA, signing key) for the replicas of a test, as an operator makes it."""
    out = tmp_path / "fleet"
    done = subprocess.run(
        [*CLI, "certs", "init", "--out", str(out)],
        capture_output=True,
        text=True,
        env=cli_env("127.0.0.1:1"),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return str(out)


def test_sigterm_releases_the_lease_and_another_replica_takes_over_at_once(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    # TTL = 5 x interval = 5 s: a takeover well under that is the release, not the expiry
    fast = ("--redis-url", redis_url, "--rollout-interval", "1", "--fleet-dir", fleet(tmp_path))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    first = coordinator_factory(*fast, data_dir=tmp_path / "a")
    wait_for(lambda: client.get(LEASE_KEY) is not None, 10, "the first replica's lease")
    holder = client.get(LEASE_KEY)
    second = coordinator_factory(*fast, data_dir=tmp_path / "b")
    time.sleep(1.5)  # the second replica ticks and finds the lease taken
    assert client.get(LEASE_KEY) == holder

    assert first.stop(signal.SIGTERM) == 0
    assert client.get(LEASE_KEY) != holder  # released on the way out, not left to expire
    assert client.pttl(LEASE_KEY) != -1  # and nobody holds a lease without a TTL
    stopped = time.monotonic()
    wait_for(lambda: client.get(LEASE_KEY) not in (None, holder), 2.0, "the second replica")
    assert time.monotonic() - stopped < 2.0
    assert "lease released" in first.log.read_text()
    assert second.proc is not None and second.proc.poll() is None


def store_run(redis_url: str, body: Callable[[FleetStore, Registry], Awaitable[T]]) -> T:
    """Write to the fleet's Redis as another replica would (no server of its own)."""

    async def main() -> T:
        store = FleetStore(connect(redis_url))
        await store.check()
        try:
            return await body(store, Registry(store, TOKENS, RegistrySettings()))
        finally:
            await store.close()

    return asyncio.run(main())


def scrape(coord: CoordinatorProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(coord.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rollout(rollout_id: str, state: str, version: int = 1) -> Rollout:
    return Rollout(rollout_id, "m", "", "all", (1.0,), Gate(), (), (), state=state, version=version)


def test_a_replica_without_the_lease_exports_rollout_and_fleet_gauges_from_redis(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set(LEASE_KEY, "another-replica", px=120_000)  # this replica never leads
    coord = coordinator_factory(
        "--redis-url", redis_url, "--rollout-interval", "0.2", "--metrics-refresh", "0.2"
    )

    async def elsewhere(store: FleetStore, registry: Registry) -> None:
        for rid, state in (("r0", "succeeded"), ("r1", "running")):
            assert await store.create_rollout(rid, rollout(rid, state).to_json(), 1.0, []) is None
        await registry.register(
            TOKENS.enroll,
            Registration(instance_key="instance-g-0001", name="g", profile=get_profile("rpi4")),
        )

    store_run(redis_url, elsewhere)

    def gauge(name: str, **labels: str) -> float | None:
        return scrape(coord).get((name, tuple(sorted(labels.items()))))

    # the metrics refresh (every 0.2 s here) reads Redis: no tick of this replica's controller
    wait_for(lambda: gauge("edgefleet_rollouts", state="running") == 1, 15, "running rollout")
    assert gauge("edgefleet_rollouts", state="succeeded") == 1
    assert gauge("edgefleet_devices", status="online", profile="all") == 1

    async def ended(store: FleetStore, registry: Registry) -> None:
        # another replica's controller ends the rollout
        assert await store.update_rollout("r1", 1, rollout("r1", "succeeded", 2).to_json())

    store_run(redis_url, ended)
    wait_for(lambda: gauge("edgefleet_rollouts", state="running") == 0, 15, "no phantom rollout")
    assert gauge("edgefleet_rollouts", state="succeeded") == 2
    assert client.get(LEASE_KEY) == "another-replica"


def test_a_metrics_refresh_under_a_tenth_of_a_second_is_refused(tmp_path: Path) -> None:
    """Each refresh reads Redis: a zero interval would spin on it."""
    from typer.testing import CliRunner

    from edgefleet.cli.app import app

    args = ["coordinator", "start", "--metrics-refresh", "0", "--data-dir", str(tmp_path / "d")]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "--metrics-refresh" in done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_a_redis_without_persistence_is_reported_loudly(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    coord = coordinator_factory("--redis-url", redis_url)
    assert scrape(coord)[("edgefleet_state_store_persistent", ())] == 0
    assert json.loads((coord.data_dir / "coordinator.json").read_text())["redis_persistence"] == ""
    assert sum("DATA LOSS RISK" in line for line in coord.log.read_text().splitlines()) == 1


def test_a_redis_with_an_append_only_file_is_not_reported(
    coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    server = RedisProc(tmp_path / "aof", extra=("--appendonly", "yes")).start()
    try:
        coord = coordinator_factory("--redis-url", server.url)
        assert scrape(coord)[("edgefleet_state_store_persistent", ())] == 1
        assert "DATA LOSS RISK" not in coord.log.read_text()
    finally:
        server.kill()


def test_a_replica_removes_only_its_own_coordinator_json(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    info = data / "coordinator.json"
    first = coordinator_factory("--redis-url", redis_url, data_dir=data)
    assert len(json.loads(info.read_text())["instance"]) == 32
    info.write_text(json.dumps({"instance": "another-replica", "pid": 1}))
    assert first.stop() == 0
    assert json.loads(info.read_text())["instance"] == "another-replica"  # left alone

    second = coordinator_factory("--redis-url", redis_url, data_dir=data)
    assert json.loads(info.read_text())["instance"] != "another-replica"
    assert second.stop() == 0
    assert not info.exists()  # its own file goes with it


def test_a_second_replica_on_the_same_data_dir_is_refused_and_touches_nothing(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    first = coordinator_factory("--redis-url", redis_url, data_dir=tmp_path / "shared")
    before = (tmp_path / "shared" / "coordinator.json").read_text()
    done = subprocess.run(
        [
            *(*CLI, "coordinator", "start", "--insecure", "--data-dir", str(tmp_path / "shared")),
            *(
                "--redis-url",
                redis_url,
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--superlink",
                "off",
            ),
        ],
        capture_output=True,
        text=True,
        env=cli_env(first.address),
        timeout=60,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"another coordinator (pid {first.proc.pid if first.proc else 0})" in done.stderr
    assert (tmp_path / "shared" / "coordinator.json").read_text() == before
    assert health_status(first.address) == SERVING

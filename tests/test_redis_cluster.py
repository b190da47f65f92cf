"""Redis as a distributed engine (issue 18 item 7): the same store operations, with the same
assertions, on the embedded Redis and on a real 3-node Redis Cluster the test starts; Sentinel
URLs; the rename of a store from before hash tags; every script's keys declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from grpc_health.v1 import health_pb2

from edgefleet.catalog import get_profile
from edgefleet.coordinator.embedded_redis import EmbeddedRedis
from edgefleet.coordinator.errors import NotFound, PermissionDenied
from edgefleet.coordinator.registry import HeartbeatReport, Registration, Registry, RegistrySettings
from edgefleet.coordinator.rollouts.document import Gate, PlannedDevice, Rollout
from edgefleet.coordinator.state import devices, leases, liveness, revocation, rollouts, telemetry
from edgefleet.coordinator.state.connect import RedisUrlError, connect
from edgefleet.coordinator.state.keys import SCHEMA_VERSION, Keys
from edgefleet.coordinator.state.model import Desired, RolloutClash, TelemetryIn
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from tests.conftest import CoordinatorProc, cli_env, health_status, wait_for
from tests.redis_procs import RedisCluster, redis_cluster, redis_sentinel

T = TypeVar("T")
SERVING = health_pb2.HealthCheckResponse.SERVING
TOKENS = Tokens(admin="a", enroll="enroll-secret", admin_source="test", enroll_source="test")
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def run(url: str, body: Callable[[Registry, FleetStore, Clock], Awaitable[T]]) -> T:
    async def main() -> T:
        store = FleetStore(connect(url))
        await store.check()
        clock = Clock()
        registry = Registry(
            store, TOKENS, RegistrySettings(offline_after=10, heartbeat_interval=2), clock
        )
        try:
            return await body(registry, store, clock)
        finally:
            await store.close()

    return asyncio.run(main())


def reg(key: str, profile: str = "rpi4") -> Registration:
    return Registration(instance_key=key, name=key, profile=get_profile(profile), labels={})


def rollout_doc(rollout_id: str, device_ids: list[str], state: str = "running") -> Rollout:
    planned = tuple(
        PlannedDevice(d, d, "rpi4", 0, "v" * 64, "int8", "onnxruntime", 1, 1.0, Desired())
        for d in device_ids
    )
    return Rollout(rollout_id, "m", "", "all", (1.0,), Gate(), planned, (), state=state, version=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(params=["embedded", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh store: the embedded Redis of a new data dir, or the flushed cluster."""
    if request.param == "cluster":
        c: RedisCluster = request.getfixturevalue("cluster")
        c.flush()
        yield c.url
        return
    embedded = EmbeddedRedis.start(tmp_path / "data")
    try:
        yield embedded.url
    finally:
        embedded.stop()


def test_store_operations_agree_on_embedded_redis_and_a_cluster(backend: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        a = await r.register("enroll-secret", reg("instance-a-0001"))
        b = await r.register("enroll-secret", reg("instance-b-0001", "cortex-m4"))
        again = await r.register("enroll-secret", reg("instance-a-0001", "rpi5"))
        assert again.device_id == a.device_id and not again.created  # moved profile
        summary = await r.fleet_summary()
        assert {(p.profile, p.online) for p in summary.by_profile} == {
            ("cortex-m4", 1),
            ("rpi5", 1),
        }
        clock.now += 5
        await r.heartbeat(again.device_id, again.credential, HeartbeatReport("ready", 1))
        clock.now += 7  # b is stale now, a is fresh
        summary = await r.fleet_summary()
        assert (summary.online, summary.offline) == (1, 1)
        await r.heartbeat(b.device_id, b.credential, HeartbeatReport("stopping", 1))
        assert (await r.fleet_summary()).online == 1  # stopping leaves the live index

        # telemetry: a resend is counted once, atomically with applying it
        records = [TelemetryIn(i, NOW, "inference_count", float(i)) for i in (1, 2, 3)]
        first = await store.record_telemetry(a.device_id, records)
        resent = await store.record_telemetry(a.device_id, records[1:])
        assert first is not None and (first.accepted, first.duplicates) == (3, 0)
        assert resent is not None and (resent.accepted, resent.duplicates) == (0, 2)
        assert await store.latest_metrics(a.device_id) == {"inference_count": 3.0}

        # a rollout's transitions: claim, clash, compare-and-set, claims released at the end
        doc = rollout_doc("r1", [a.device_id, b.device_id])
        created = await store.create_rollout("r1", doc.to_json(), NOW, [a.device_id, b.device_id])
        assert created is None
        assert await store.create_rollout(
            "r2", rollout_doc("r2", [b.device_id]).to_json(), NOW, [b.device_id]
        ) == RolloutClash(b.device_id, "r1")
        assert await store.set_desired(a.device_id, Desired(0, "v" * 64, "m")) == 1
        done = Rollout.from_json(doc.to_json())
        done = Rollout(**{**done.__dict__, "state": "succeeded", "version": 2})
        assert not await store.update_rollout("r1", 7, done.to_json())  # stale version
        assert await store.update_rollout("r1", 1, done.to_json())
        r2 = rollout_doc("r2", [b.device_id])
        assert await store.create_rollout("r2", r2.to_json(), NOW + 1, [b.device_id]) is None
        assert await store.list_rollout_ids() == ["r2", "r1"]

        # leases: one holder, released only by it
        assert await store.hold_lease("ctl", "one", 5.0)
        assert not await store.hold_lease("ctl", "two", 5.0)
        assert not await store.release_lease("ctl", "two")
        assert await store.release_lease("ctl", "one")
        assert await store.hold_lease("ctl", "two", 5.0)

        # revocation and removal keep the identity refused and leave no index behind
        assert await store.revoke(b.device_id)
        with pytest.raises(PermissionDenied):
            await r.register("enroll-secret", reg("instance-b-0001", "cortex-m4"))
        await r.remove_device(b.device_id)
        await r.remove_device(a.device_id)
        with pytest.raises(NotFound):
            await r.get_device(a.device_id)
        assert (await r.fleet_summary()).by_profile == []

    run(backend, body)


def test_every_key_of_the_fleet_is_in_one_cluster_slot(cluster: RedisCluster) -> None:
    cluster.flush()

    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        for i in range(20):
            e = await r.register("enroll-secret", reg(f"instance-{i:04d}", "rpi4"))
            await store.record_telemetry(e.device_id, [TelemetryIn(1, NOW, "boot", None, "up")])

    run(cluster.url, body)
    found: list[str] = []
    owners = set()
    for node in cluster.nodes:
        with redis.Redis(port=node.port, decode_responses=True) as client:
            names = list(client.scan_iter(count=1000))
            found += names
            if names:
                owners.add(node.port)
    assert len(found) >= 44 and len(owners) == 1  # 20 devices and enrolments, indexes: one node
    assert all(name.startswith("{edgefleet}:") for name in found)


def test_a_prefix_without_a_hash_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a hash tag"):
        Keys("edgefleet:")
    assert Keys("{fleet-b}:").device("x") == "{fleet-b}:device:x"


KEY_COMMANDS = {
    "GET", "SET", "DEL", "EXISTS", "HGET", "HSET", "HMGET", "HDEL", "HINCRBY", "SADD", "SREM",
    "SCARD", "SISMEMBER", "SMEMBERS", "ZADD", "ZREM", "ZCOUNT", "XADD", "PEXPIRE",
}  # fmt: skip


def test_every_script_gets_its_keys_through_KEYS() -> None:
    """The first argument of every key command in every Lua script is a name taken from KEYS,
    never a string built in the script (``ARGV[2] .. id``): Redis Cluster routes a script by
    its declared keys, and only declared keys are guaranteed to be on the node it runs on."""
    scripts = [
        (module.__name__, name, text)
        for module in (devices, leases, liveness, revocation, rollouts, telemetry)
        for name, text in vars(module).items()
        if name.startswith("_") and isinstance(text, str) and "redis.call" in text
    ]
    assert len(scripts) >= 10
    for module_name, name, text in scripts:
        for command, first in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", text):
            if command.upper() in KEY_COMMANDS:
                assert ".." not in first and "ARGV" not in first, (module_name, name, first)


def test_an_untagged_store_is_renamed_once_at_start(redis_url: str) -> None:
    """A store written before hash tags (``edgefleet:*``, schema 2) is renamed key by key and
    reads back the same; nothing is left under the old prefix."""

    async def populate(r: Registry, store: FleetStore, clock: Clock) -> tuple[int, str]:
        e = await r.register("enroll-secret", reg("instance-old-0001"))
        await r.register("enroll-secret", reg("instance-old-0002", "cortex-m4"))
        await store.record_telemetry(e.device_id, [TelemetryIn(1, NOW, "inference_count", 4.0)])
        return (await r.fleet_summary()).total, e.device_id

    total, device_id = run(redis_url, populate)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    tagged = [str(name) for name in client.keys("{edgefleet}:*")]
    for name in tagged:  # what a coordinator before hash tags wrote
        client.rename(name, "edgefleet:" + name.removeprefix("{edgefleet}:"))
    client.set("edgefleet:schema", "2")

    async def after(r: Registry, store: FleetStore, clock: Clock) -> tuple[int, dict[str, float]]:
        return (await r.fleet_summary()).total, await store.latest_metrics(device_id)

    assert run(redis_url, after) == (total, {"inference_count": 4.0})
    assert client.keys("edgefleet:*") == []
    assert sorted(client.keys("*")) == sorted(tagged)
    assert client.get("{edgefleet}:schema") == SCHEMA_VERSION


def test_a_sentinel_url_finds_the_master(tmp_path: Path) -> None:
    with redis_sentinel(tmp_path) as (master, url):

        async def body(r: Registry, store: FleetStore, clock: Clock) -> str:
            return (await r.register("enroll-secret", reg("instance-s-0001"))).device_id

        device_id = run(url, body)
        with redis.Redis(port=master.port, decode_responses=True) as client:
            assert client.exists(f"{{edgefleet}}:device:{device_id}") == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://nohost", "needs host:port"),
        ("redis+cluster://127.0.0.1:1/3", "only database 0"),
        ("redis+sentinel://127.0.0.1:1", "needs the service name"),
        ("redis+sentinel://127.0.0.1:1/svc/x", "must be a number"),
        ("redis://127.0.0.1:notaport", "bad Redis URL"),
    ],
)
def test_bad_redis_urls_are_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        connect(url)


COORDINATOR_START = (
    *(sys.executable, "-m", "edgefleet.cli.main", "coordinator", "start"),
    *("--insecure", "--metrics-port", "-1", "--superlink", "off"),
)


def test_cli_refuses_bad_cluster_options_in_one_line(tmp_path: Path) -> None:
    for args, message in [
        (["--redis-cluster", "--redis-url", "unix:///tmp/x.sock"], "--redis-cluster needs"),
        (["--redis-url", "redis+sentinel://127.0.0.1:1"], "needs the service name"),
    ]:
        done = subprocess.run(
            [*COORDINATOR_START, "--data-dir", str(tmp_path / "d"), *args],
            capture_output=True,
            text=True,
            env=cli_env("127.0.0.1:1"),
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines and message in lines[-1] and "Traceback" not in done.stderr


def test_an_unreachable_cluster_is_one_store_error() -> None:
    async def main() -> None:
        store = FleetStore(connect("redis+cluster://127.0.0.1:1"))
        try:
            await store.check()
        finally:
            await store.close()

    with pytest.raises(Exception, match="cannot reach Redis"):
        asyncio.run(main())


def test_persistence_is_reported(backend: str, redis_url: str) -> None:
    """The embedded Redis keeps an AOF; the test servers (and the cluster) keep nothing."""

    async def persistence(url: str) -> str | None:
        store = FleetStore(connect(url))
        try:
            return await store.persistence()
        finally:
            await store.close()

    expected = "aof+rdb" if backend.startswith("unix://") else ""
    assert asyncio.run(persistence(backend)) == expected
    assert asyncio.run(persistence(redis_url)) == ""


def test_a_coordinator_serves_from_the_cluster(
    cluster: RedisCluster, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    """The real server on the cluster (``--redis-cluster`` with one seed node): it starts, is
    SERVING, its controller takes the lease on the cluster, and it warns that no node persists."""
    cluster.flush()
    seed = f"redis://127.0.0.1:{cluster.nodes[1].port}"
    coord = coordinator_factory("--redis-cluster", "--redis-url", seed, "--rollout-interval", "0.2")
    assert health_status(coord.address) == SERVING
    lease = Keys().lease("rollout-controller")

    def leased() -> bool:
        for node in cluster.nodes:
            with (
                redis.Redis(port=node.port, decode_responses=True) as client,
                contextlib.suppress(redis.ResponseError),  # MOVED: another node's slot
            ):
                if client.get(lease):
                    return True
        return False

    wait_for(leased, 10, "the lease on the cluster")
    assert "DATA LOSS RISK" in coord.log.read_text()

"""The Redis store and the registry logic, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from edgefleet.catalog import get_profile
from edgefleet.coordinator.embedded_redis import EmbeddedRedis
from edgefleet.coordinator.errors import InvalidArgument, NotFound, Unauthenticated
from edgefleet.coordinator.registry import (
    DeviceStatus,
    HeartbeatReport,
    Registration,
    Registry,
    RegistrySettings,
)
from edgefleet.coordinator.state.model import StoreError
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens

T = TypeVar("T")
TOKENS = Tokens(admin="a", enroll="enroll-secret", admin_source="test", enroll_source="test")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def run(redis_url: str, body: Callable[[Registry, FleetStore, Clock], Awaitable[T]]) -> T:
    async def main() -> T:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
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


def reg(key: str = "instance-key-0001", name: str = "pi", profile: str = "rpi4") -> Registration:
    return Registration(
        instance_key=key, name=name, profile=get_profile(profile), labels={"site": "a"}
    )


def test_register_then_heartbeat_keeps_device_online(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        e = await r.register("enroll-secret", reg())
        assert e.created and e.device_id.startswith("dev-")
        clock.now += 9
        desired = await r.heartbeat(e.device_id, e.credential, HeartbeatReport("ready", 1, 9.0))
        assert desired.generation == 0
        clock.now += 9
        view = await r.get_device(e.device_id)
        assert view.status is DeviceStatus.ONLINE
        assert view.record.reported_state == "ready" and view.record.last_sequence == 1

    run(redis_url, body)


def test_device_goes_offline_after_timeout_and_back(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        e = await r.register("enroll-secret", reg())
        clock.now += 10.5
        assert (await r.get_device(e.device_id)).status is DeviceStatus.OFFLINE
        summary = await r.fleet_summary()
        assert (summary.online, summary.offline) == (0, 1)
        await r.heartbeat(e.device_id, e.credential, HeartbeatReport("ready", 2))
        assert (await r.get_device(e.device_id)).status is DeviceStatus.ONLINE

    run(redis_url, body)


def test_clean_shutdown_is_offline_at_once(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        e = await r.register("enroll-secret", reg())
        await r.heartbeat(e.device_id, e.credential, HeartbeatReport("stopping", 3))
        assert (await r.get_device(e.device_id)).status is DeviceStatus.OFFLINE

    run(redis_url, body)


def test_reregistration_with_same_instance_key_is_the_same_device(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        first = await r.register("enroll-secret", reg())
        registered_at = (await r.get_device(first.device_id)).record.registered_at
        clock.now += 100
        again = await r.register("enroll-secret", reg(name="pi-renamed", profile="rpi5"))
        assert again.device_id == first.device_id and not again.created
        assert again.credential != first.credential
        record = (await r.get_device(first.device_id)).record
        assert record.registered_at == registered_at
        assert (record.name, record.profile.name) == ("pi-renamed", "rpi5")
        # the old credential no longer works; the profile index moved with the device
        with pytest.raises(Unauthenticated):
            await r.heartbeat(first.device_id, first.credential, HeartbeatReport("ready", 1))
        assert [v.record.id for v in await r.list_devices(profile="rpi5")] == [first.device_id]
        assert await r.list_devices(profile="rpi4") == []
        assert len(await r.list_devices()) == 1

    run(redis_url, body)


def test_remove_leaves_no_key_behind(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        e = await r.register("enroll-secret", reg())
        await r.remove_device(e.device_id)
        with pytest.raises(NotFound):
            await r.get_device(e.device_id)
        with pytest.raises(NotFound):
            await r.heartbeat(e.device_id, e.credential, HeartbeatReport("ready", 1))
        with pytest.raises(NotFound):
            await r.remove_device(e.device_id)

    run(redis_url, body)
    keys = redis.Redis.from_url(redis_url, decode_responses=True).keys("*")
    assert keys == ["{edgefleet}:schema"]


def test_wrong_tokens_and_credentials_are_refused(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        with pytest.raises(Unauthenticated):
            await r.register("wrong", reg())
        with pytest.raises(Unauthenticated):
            await r.register("", reg())
        e = await r.register("enroll-secret", reg())
        with pytest.raises(Unauthenticated):
            await r.heartbeat(e.device_id, "not-the-credential", HeartbeatReport("ready", 1))
        with pytest.raises(NotFound):
            await r.heartbeat("dev-000000000000", e.credential, HeartbeatReport("ready", 1))

    run(redis_url, body)


@pytest.mark.parametrize(
    ("registration", "field"),
    [
        (Registration("short", "pi", get_profile("rpi4")), "instance_key"),
        (Registration("instance-key-1", "", get_profile("rpi4")), "name"),
        (Registration("instance-key-1", "x" * 65, get_profile("rpi4")), "name"),
        (
            Registration("instance-key-1", "pi", get_profile("rpi4"), labels={"Bad Key": "v"}),
            "labels",
        ),
        (Registration("instance-key-1", "pi", get_profile("rpi4"), "v" * 65), "agent_version"),
    ],
)
def test_malformed_registrations_name_the_field(
    redis_url: str, registration: Registration, field: str
) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        with pytest.raises(InvalidArgument) as info:
            await r.register("enroll-secret", registration)
        assert info.value.field.startswith(field)
        assert await r.list_devices() == []  # nothing half-written

    run(redis_url, body)


def test_malformed_device_ids_are_invalid_not_missing(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        for bad in ("", "dev-XYZ", "../etc", "dev-" + "a" * 40):
            with pytest.raises(InvalidArgument):
                await r.get_device(bad)

    run(redis_url, body)


def test_settings_refuse_an_offline_timeout_shorter_than_the_heartbeat() -> None:
    with pytest.raises(ValueError, match="offline-after"):
        RegistrySettings(offline_after=5, heartbeat_interval=5)


def test_unreachable_redis_is_a_store_error() -> None:
    async def main() -> None:
        store = FleetStore(aioredis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True))
        with pytest.raises(StoreError):
            await store.check()
        with pytest.raises(StoreError):
            await store.get("dev-000000000000")
        await store.close()

    asyncio.run(main())


def test_embedded_redis_keeps_data_across_restarts_and_adopts_a_running_server(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis.start(tmp_path)
    assert server.process is not None
    client = redis.Redis.from_url(server.url)
    client.set("k", "v")
    # a second start on the same dir adopts the running server instead of racing it
    adopted = EmbeddedRedis.start(tmp_path)
    assert adopted.process is None and adopted.url == server.url
    server.stop()
    assert server.process.poll() is not None
    restarted = EmbeddedRedis.start(tmp_path)
    try:
        assert redis.Redis.from_url(restarted.url).get("k") == b"v"
        assert (tmp_path / "redis" / "appendonly.aof").exists()
    finally:
        restarted.stop()


def test_embedded_redis_handles_a_data_dir_too_deep_for_a_unix_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis.start(deep)
    try:
        assert len(str(server.socket)) <= 100
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()

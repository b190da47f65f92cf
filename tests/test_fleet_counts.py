"""Fleet counts kept on write (per-profile liveness indexes) against a full scan.

``Registry.fleet_summary`` answers from the store's per-profile liveness sorted
sets in O(profiles x log N); ``Registry.scan_fleet_summary`` reads every record
and applies ``status_of``, the definition of liveness. Every test drives a real
redis-server through register, heartbeat, going stale, goodbye (``stopping``),
removal, re-registration and the upgrade of a store written before the indexes
existed, and checks the two agree after every step.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.catalog import get_profile
from edgefleet.coordinator.registry import (
    Enrollment,
    FleetSummary,
    HeartbeatReport,
    ProfileCount,
    Registration,
    Registry,
    RegistrySettings,
)
from edgefleet.coordinator.state.keys import SCHEMA_VERSION
from edgefleet.coordinator.state.model import StoreError
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from edgefleet.v1 import device_pb2, device_pb2_grpc
from edgefleet.wire import profile_to_proto
from tests.conftest import ENROLL_TOKEN, CoordinatorProc, wait_for

T = TypeVar("T")
TOKENS = Tokens(admin="a", enroll="enroll-secret", admin_source="test", enroll_source="test")
OFFLINE_AFTER = 10.0
PROFILES = ("rpi4", "rpi5", "cortex-m4")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Body = Callable[[Registry, FleetStore, Clock], Awaitable[T]]


def run(redis_url: str, body: Body[T]) -> T:
    async def main() -> T:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        await store.check()
        clock = Clock()
        registry = Registry(
            store,
            TOKENS,
            RegistrySettings(offline_after=OFFLINE_AFTER, heartbeat_interval=2),
            clock,
        )
        try:
            return await body(registry, store, clock)
        finally:
            await store.close()

    return asyncio.run(main())


def reg(key: str, profile: str = "rpi4", name: str = "dev") -> Registration:
    return Registration(instance_key=key, name=name, profile=get_profile(profile))


def table(s: FleetSummary) -> dict[str, tuple[int, int]]:
    return {p.profile: (p.online, p.offline) for p in s.by_profile}


async def agree(r: Registry) -> FleetSummary:
    """The indexed summary equals the full scan, field by field; returns it."""
    indexed, scanned = await r.fleet_summary(), await r.scan_fleet_summary()
    assert indexed == scanned, f"indexed {indexed}\n!= scanned {scanned}"
    assert indexed.total == indexed.online + indexed.offline
    return indexed


def test_counts_follow_every_lifecycle_step(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        assert (await agree(r)).by_profile == []
        a = await r.register("enroll-secret", reg("instance-a-0001", "rpi4"))
        b = await r.register("enroll-secret", reg("instance-b-0001", "rpi4"))
        c = await r.register("enroll-secret", reg("instance-c-0001", "cortex-m4"))
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (2, 0)}

        # a and c keep beating; b goes quiet and, exactly offline_after later, stale
        clock.now += 6
        await r.heartbeat(a.device_id, a.credential, HeartbeatReport("ready", 1))
        await r.heartbeat(c.device_id, c.credential, HeartbeatReport("degraded", 1))
        clock.now += 4  # b's last heartbeat is now exactly offline_after old: offline
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (1, 1)}
        clock.now -= 0.001  # a hair younger: online again (the bound is strict on both sides)
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (2, 0)}
        clock.now += 0.001

        # goodbye: offline at once, though its heartbeat is fresh
        await r.heartbeat(a.device_id, a.credential, HeartbeatReport("stopping", 2))
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (0, 2)}
        # a stale device that comes back is online again
        await r.heartbeat(b.device_id, b.credential, HeartbeatReport("ready", 2))
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (1, 1)}
        # so is one that said goodbye and then beats again (restarted agent)
        await r.heartbeat(a.device_id, a.credential, HeartbeatReport("starting", 1))
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (2, 0)}

        # re-registration after a goodbye: same device, live again, in its new profile
        await r.heartbeat(a.device_id, a.credential, HeartbeatReport("stopping", 3))
        again = await r.register("enroll-secret", reg("instance-a-0001", "rpi5"))
        assert again.device_id == a.device_id and not again.created
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (1, 0), "rpi5": (1, 0)}

        # revocation changes nothing until the device stops beating (it cannot any more)
        await r.revoke_device(c.device_id)
        assert table(await agree(r)) == {"cortex-m4": (1, 0), "rpi4": (1, 0), "rpi5": (1, 0)}
        clock.now += OFFLINE_AFTER
        assert table(await agree(r)) == {"cortex-m4": (0, 1), "rpi4": (0, 1), "rpi5": (0, 1)}

        # removal: a profile with no devices left disappears from the summary
        await r.remove_device(c.device_id)
        assert table(await agree(r)) == {"rpi4": (0, 1), "rpi5": (0, 1)}
        await r.remove_device(b.device_id)
        await r.remove_device(a.device_id)
        assert (await agree(r)).by_profile == []

    run(redis_url, body)
    # every index entry went with its device: nothing but the schema key is left (and
    # the revoked ids and identities, which outlive removal by design of the revoke path)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert sorted(client.keys("*")) == [
        "{edgefleet}:devices:revoked",
        "{edgefleet}:revoked:identities",
        "{edgefleet}:schema",
    ]
    assert client.get("{edgefleet}:schema") == SCHEMA_VERSION


def test_moving_the_last_device_of_a_profile_drops_the_profile(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        a = await r.register("enroll-secret", reg("instance-a-0001", "rpi4"))
        await r.register("enroll-secret", reg("instance-a-0001", "rpi4", name="renamed"))
        assert table(await agree(r)) == {"rpi4": (1, 0)}  # same profile: still counted once
        await r.register("enroll-secret", reg("instance-a-0001", "cortex-m4"))
        assert table(await agree(r)) == {"cortex-m4": (1, 0)}
        await r.remove_device(a.device_id)

    run(redis_url, body)
    assert redis.Redis.from_url(redis_url).keys("*") == [b"{edgefleet}:schema"]


def test_random_fleet_histories_agree_with_the_scan(redis_url: str) -> None:
    """Many devices, random operations and clock steps (fractional), checked after each."""

    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        rng = random.Random(9)
        devices: dict[str, tuple[Enrollment, str]] = {}  # instance key -> (enrollment, profile)
        for step in range(400):
            op = rng.random()
            if op < 0.25 or not devices:
                key = f"instance-{rng.randrange(60):04d}"  # collisions re-register
                profile = rng.choice(PROFILES)
                devices[key] = (await r.register("enroll-secret", reg(key, profile)), profile)
            elif op < 0.75:
                e, _ = devices[rng.choice(sorted(devices))]
                state = rng.choice(("starting", "ready", "ready", "degraded", "stopping"))
                await r.heartbeat(e.device_id, e.credential, HeartbeatReport(state, step))
            elif op < 0.82:
                key = rng.choice(sorted(devices))
                await r.remove_device(devices.pop(key)[0].device_id)
            else:
                clock.now += rng.choice((0.5, 1.25, 3.0, 7.5, OFFLINE_AFTER))
            await agree(r)
        summary = await agree(r)
        assert summary.total == len(devices) and summary.online and summary.offline

    run(redis_url, body)


def make_old_format(redis_url: str, schema: str | None) -> None:
    """Turn the store into what a coordinator from before the liveness indexes wrote:
    the same records and indexes, minus the per-profile live sets and the profiles set."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    new_keys = [*client.keys("{edgefleet}:profile:*:live"), "{edgefleet}:profiles"]
    assert len(new_keys) > 1
    client.delete(*new_keys)
    if schema is None:
        client.delete("{edgefleet}:schema")
    else:
        client.set("{edgefleet}:schema", schema)


@pytest.mark.parametrize("old_schema", ["1", None])
def test_an_old_store_is_indexed_once_at_start(redis_url: str, old_schema: str | None) -> None:
    async def populate(r: Registry, store: FleetStore, clock: Clock) -> FleetSummary:
        enrolled = [
            await r.register("enroll-secret", reg(f"instance-{i:04d}", PROFILES[i % 3]))
            for i in range(30)
        ]
        clock.now += 6
        for i, e in enumerate(enrolled):
            if i % 3:  # a third goes stale
                state = "stopping" if i % 5 == 0 else "ready"  # some said goodbye
                await r.heartbeat(e.device_id, e.credential, HeartbeatReport(state, 1))
        await r.remove_device(enrolled[0].device_id)
        clock.now += 5
        return await agree(r)

    before = run(redis_url, populate)
    assert before.online and before.offline
    make_old_format(redis_url, old_schema)

    async def after_upgrade(r: Registry, store: FleetStore, clock: Clock) -> FleetSummary:
        # ``run`` opened the store with check(): the indexes were rebuilt from the records
        clock.now += 11  # same moment as populate's end
        return await agree(r)

    assert run(redis_url, after_upgrade) == before
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get("{edgefleet}:schema") == SCHEMA_VERSION
    assert client.scard("{edgefleet}:profiles") == 3


def test_a_store_from_an_unknown_schema_is_refused(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).set("{edgefleet}:schema", "99")

    async def main() -> None:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        try:
            with pytest.raises(StoreError, match="schema 99"):
                await store.check()
        finally:
            await store.close()

    asyncio.run(main())


def test_profile_counts_are_ordered_and_complete(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore, clock: Clock) -> None:
        for i, p in enumerate(("rpi5", "cortex-m4", "rpi4", "rpi5")):
            await r.register("enroll-secret", reg(f"instance-{i:04d}", p))
        s = await agree(r)
        assert s.by_profile == [
            ProfileCount("cortex-m4", 1, 0),
            ProfileCount("rpi4", 1, 0),
            ProfileCount("rpi5", 2, 0),
        ]
        assert (s.total, s.online, s.offline, s.offline_after) == (4, 4, 0, OFFLINE_AFTER)

    run(redis_url, body)


# --- the gauges of a real coordinator process --------------------------------------------------


def gauges(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.labels["status"], s.labels["profile"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "edgefleet_devices"
        for s in family.samples
    }


def test_gauges_of_an_upgraded_store_and_a_goodbye(
    redis_url: str, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    """A coordinator started on an old-format store serves the right gauges, and they
    follow a registration and a goodbye."""

    async def populate(r: Registry, store: FleetStore, clock: Clock) -> None:
        clock.now = time.time()
        await r.register("enroll-secret", reg("instance-old-0001", "rpi4"))
        e = await r.register("enroll-secret", reg("instance-old-0002", "cortex-m4"))
        await r.heartbeat(e.device_id, e.credential, HeartbeatReport("stopping", 1))

    run(redis_url, populate)
    make_old_format(redis_url, "1")
    coord = coordinator_factory(
        "--redis-url", redis_url, "--offline-after", "120", "--heartbeat-interval", "5",
        "--metrics-refresh", "0.2",
    )  # fmt: skip
    assert redis.Redis.from_url(redis_url).get("{edgefleet}:schema") == SCHEMA_VERSION.encode()

    with grpc.insecure_channel(coord.address) as ch:
        stub = device_pb2_grpc.DeviceServiceStub(ch)
        reply = stub.Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="fresh",
                profile=profile_to_proto(get_profile("rpi5")),
            ),
            metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
            timeout=5,
        )

        def seen(expected: dict[tuple[str, str], float]) -> Callable[[], bool]:
            return lambda: all(gauges(coord.metrics_url).get(k) == v for k, v in expected.items())

        # the old rpi4 device (registered moments ago) is online, the old goodbye offline
        wait_for(
            seen(
                {
                    ("online", "rpi4"): 1,
                    ("offline", "cortex-m4"): 1,
                    ("online", "rpi5"): 1,
                    ("online", "all"): 2,
                    ("offline", "all"): 1,
                }
            ),
            15,
            "gauges of the upgraded store",
        )
        stub.Heartbeat(
            device_pb2.HeartbeatRequest(
                device_id=reply.device_id, state=device_pb2.AGENT_STATE_STOPPING, sequence=1
            ),
            metadata=(("authorization", f"Bearer {reply.credential}"),),
            timeout=5,
        )
        wait_for(
            seen(
                {
                    ("online", "rpi4"): 1,
                    ("offline", "rpi5"): 1,
                    ("online", "rpi5"): 0,
                    ("online", "all"): 1,
                    ("offline", "all"): 2,
                }
            ),
            15,
            "the goodbye in the gauges",
        )

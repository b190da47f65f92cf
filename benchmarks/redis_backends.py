"""What each Redis deployment costs the store: registrations/s and heartbeats/s through
``FleetStore`` on the embedded Redis, one ``redis-server`` and a 3-node Redis Cluster (issue 18).

Why the store and not the gRPC API: ``benchmarks/fleet_load.py`` measures the whole coordinator,
where Python gRPC dominates on 2 cores; this isolates what the Redis side adds: the cluster
client's routing, the embedded server's append-only file, and the read-then-verify round trip
that registration gained so every script gets its keys through ``KEYS`` (heartbeats stay one
round trip: each replica caches the device's profile). Every backend runs the same N devices
with the same concurrency, one after the other, on this machine.

    python -m benchmarks.redis_backends --devices 2000 --beats 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import redis

from edgefleet.catalog import get_profile
from edgefleet.coordinator.embedded_redis import EmbeddedRedis
from edgefleet.coordinator.registry import (
    Enrollment,
    HeartbeatReport,
    Registration,
    Registry,
    RegistrySettings,
)
from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens

TOKENS = Tokens(admin="a", enroll="enroll-secret", admin_source="b", enroll_source="b")
PROFILES = ("rpi4", "rpi5", "esp32-s3")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and below 65536."""
    while True:
        port = random.randrange(20000, 45000)
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 10000))
            return port


def _server(workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _cluster_port() if "--cluster-enabled" in extra else _port()
    workdir.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--appendonly", "no", *extra),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
            if client.ping():
                return proc, port
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not start")


@contextlib.contextmanager
def backend(name: str, workdir: Path) -> Iterator[str]:
    """The URL of a fresh store of kind ``name``: embedded, single, cluster."""
    if name == "embedded":
        embedded = EmbeddedRedis.start(workdir / "data")
        try:
            yield embedded.url
        finally:
            embedded.stop()
        return
    if name == "single":
        proc, port = _server(workdir / "single")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
        return
    nodes = [
        _server(workdir / f"n{i}", "--cluster-enabled", "yes", "--cluster-config-file", "n.conf")
        for i in range(3)
    ]
    try:
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for _, p in nodes)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
        )
        time.sleep(1.0)  # gossip settles
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for _, p in nodes)
    finally:
        for proc, _ in nodes:
            proc.kill()


async def _bounded(n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Seconds to run ``call(0..n-1)`` with at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def measure(url: str, devices: int, beats: int, concurrency: int) -> dict[str, float]:
    store = FleetStore(connect(url))
    await store.check()
    registry = Registry(store, TOKENS, RegistrySettings(offline_after=60, heartbeat_interval=5))
    enrolled: list[Enrollment] = []

    async def register(i: int) -> None:
        reg = Registration(f"instance-{i:06d}", f"d{i}", get_profile(PROFILES[i % len(PROFILES)]))
        enrolled.append(await registry.register("enroll-secret", reg))

    async def heartbeat(i: int) -> None:
        e = enrolled[i % len(enrolled)]
        await registry.heartbeat(e.device_id, e.credential, HeartbeatReport("ready", i))

    try:
        reg_s = await _bounded(devices, concurrency, register)
        beat_s = await _bounded(devices * beats, concurrency, heartbeat)
        assert (await registry.fleet_summary()).online == devices
    finally:
        await store.close()
    return {
        "registrations_per_second": round(devices / reg_s, 1),
        "heartbeats_per_second": round(devices * beats / beat_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--beats", type=int, default=5, help="heartbeats per device")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="embedded,single,cluster")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("error: redis-server not installed: bash scripts/install_prereqs.sh")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            with backend(name, Path(tmp) / name) as url:
                results[name] = asyncio.run(
                    measure(url, args.devices, args.beats, args.concurrency)
                )
            print(name, results[name], flush=True)
    print(json.dumps({"devices": args.devices, "concurrency": args.concurrency, **results}))


if __name__ == "__main__":
    main()

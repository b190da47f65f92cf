"""Hostile clients: what a well-behaved device sees while others hold streams and connections.

Issue 14's audit found that 1,000 DownloadArtifact streams nobody reads held 1,081 of the
coordinator's descriptors and 424 MB and slowed its health checks from 1.4 to 364 ms (p50),
and that 1,000 idle raw TCP connections made every new connection time out. This script
runs those attacks against a real coordinator (separate process, embedded Redis, default
limits unless overridden) and measures a well-behaved device in the same run:

1. **no attack**: the probe alone;
2. **under attack**: ``--attackers`` registered devices each try ``--streams`` downloads
   of a large variant on connections of their own and never read past the first chunk,
   and ``--idle`` raw TCP connections are opened that never send a byte;
3. **after the deadlines** (``--stream-write-timeout`` and the handshake timeout have
   passed, attack connections still open): what the coordinator still holds.

The probe is a separate process (its latency is not this script's event loop) doing
``--checks`` sequential gRPC health checks on one connection (p50/p99), ``--connects``
fresh connections each with one health check (p50 and how many failed within 5 s), and
one whole download of the variant as another device. Beside it: the coordinator's open
descriptors and resident memory (from /proc), and how many attack streams were held or
refused (RESOURCE_EXHAUSTED).

    python -m benchmarks.hostile_clients                       # table
    python -m benchmarks.hostile_clients --attackers 50 --streams 20 --idle 1000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.desired import assign_variant
from edgefleet.catalog import get_profile
from edgefleet.coordinator.limits import raise_fd_limit
from edgefleet.coordinator.tokens import ENROLL_TOKEN_FILE
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.variant_store import VariantStore
from edgefleet.wire import profile_to_proto

# A never-reading client does not grow its flow-control windows.
_NO_BDP = [("grpc.http2.bdp_probe", 0)]

PROBE = r"""
import json, statistics, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc

address, checks, connects, device_id, credential, variant = sys.argv[1:7]
req = health_pb2.HealthCheckRequest()
out = {}
with grpc.insecure_channel(address) as ch:
    stub = health_pb2_grpc.HealthStub(ch)
    stub.Check(req, timeout=10)
    times = []
    for _ in range(int(checks)):
        t = time.perf_counter()
        stub.Check(req, timeout=10)
        times.append(time.perf_counter() - t)
    times.sort()
    out["health_p50_ms"] = 1000 * statistics.median(times)
    out["health_p99_ms"] = 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]
    t = time.perf_counter()
    try:
        got = sum(len(c.data) for c in artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
            artifact_pb2.DownloadArtifactRequest(device_id=device_id, variant_id=variant),
            metadata=(("authorization", "Bearer " + credential),), timeout=60))
        out["download"] = f"{got / 2**20:.0f} MiB in {time.perf_counter() - t:.2f} s"
    except grpc.RpcError as err:
        out["download"] = err.code().name
fresh, failed = [], 0
for _ in range(int(connects)):
    t = time.perf_counter()
    try:
        with grpc.insecure_channel(address) as ch:
            health_pb2_grpc.HealthStub(ch).Check(req, timeout=5, wait_for_ready=True)
        fresh.append(time.perf_counter() - t)
    except grpc.RpcError:
        failed += 1
out["connect_p50_ms"] = 1000 * statistics.median(fresh) if fresh else None
out["connect_failed"] = failed
print(json.dumps(out))
"""


@dataclass
class Phase:
    phase: str
    health_p50_ms: float
    health_p99_ms: float
    connect_p50_ms: float | None
    connect_failed: int
    download: str
    coordinator_fds: int
    coordinator_rss_mb: float
    streams_held: int
    streams_refused: int
    idle_connections: int


@dataclass
class Device:
    device_id: str
    credential: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credential}"),)


def _register(address: str, token: str, n: int) -> list[Device]:
    out = []
    with grpc.insecure_channel(address) as ch:
        stub = device_pb2_grpc.DeviceServiceStub(ch)
        for i in range(n):
            reply = stub.Register(
                device_pb2.RegisterRequest(
                    instance_key=uuid.uuid4().hex,
                    name=f"hostile-{i}",
                    profile=profile_to_proto(get_profile("rpi4")),
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            out.append(Device(reply.device_id, reply.credential))
    return out


def _proc_usage(pid: int) -> tuple[int, float]:
    """(open descriptors, resident MiB) of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return fds, rss_kb / 1024


async def _probe(address: str, args: argparse.Namespace, polite: Device, variant: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE,
        address,
        str(args.checks),
        str(args.connects),
        polite.device_id,
        polite.credential,
        variant,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the probe failed ({proc.returncode})")
    return json.loads(out)


class Attack:
    """Never-read download streams (a connection each) and idle raw TCP connections."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []
        self.sockets: list[socket.socket] = []
        self.refused = 0

    async def _stream(self, device: Device, variant: str) -> None:
        ch = grpc.aio.insecure_channel(self.address, options=_NO_BDP)
        call = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
            artifact_pb2.DownloadArtifactRequest(device_id=device.device_id, variant_id=variant),
            metadata=device.metadata,
        )
        try:
            await call.read()  # the first chunk: the server now holds the stream
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            self.refused += 1
            await ch.close()
            return
        self.channels.append(ch)
        self.calls.append(call)

    async def start(self, devices: list[Device], streams: int, idle: int, variant: str) -> None:
        host, port = self.address.rsplit(":", 1)
        for _ in range(idle):
            self.sockets.append(socket.create_connection((host, int(port))))
        for _ in range(streams):
            await asyncio.gather(*(self._stream(d, variant) for d in devices))

    async def stop(self) -> None:
        for call in self.calls:
            call.cancel()
        for ch in self.channels:
            await ch.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


async def _run(args: argparse.Namespace, tmp: Path) -> list[Phase]:
    data_dir = tmp / "coord"
    weights = os.urandom(int(args.mb * 2**20))
    variant = VariantStore(data_dir).put({"name": "hostile", "recipe": "none"}, {"w.bin": weights})
    extra = ["--stream-write-timeout", str(args.stream_write_timeout)]
    proc, address = start_coordinator_process(data_dir, extra)
    try:
        token = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
        devices = await asyncio.to_thread(_register, address, token, args.attackers + 1)
        ids = [d.device_id for d in devices]
        await asyncio.to_thread(assign_variant, data_dir, ids, variant)
        polite, attackers = devices[0], devices[1:]
        rows = []

        async def measure(name: str, attack: Attack | None) -> None:
            probe = await _probe(address, args, polite, variant)
            fds, rss = _proc_usage(proc.pid)
            held = 0 if attack is None else len(attack.calls)
            rows.append(
                Phase(
                    phase=name,
                    coordinator_fds=fds,
                    coordinator_rss_mb=rss,
                    streams_held=held,
                    streams_refused=0 if attack is None else attack.refused,
                    idle_connections=0 if attack is None else len(attack.sockets),
                    **probe,
                )
            )

        warm_up = argparse.Namespace(**{**vars(args), "checks": 1, "connects": 0})
        await _probe(address, warm_up, polite, variant)  # the coordinator builds its archive
        await measure("no attack", None)
        attack = Attack(address)
        try:
            await attack.start(attackers, args.streams, args.idle, variant)
            await measure("under attack", attack)
            await asyncio.sleep(max(args.stream_write_timeout, 10.0) + 2)  # 10 s: handshake
            await measure("after the deadlines", attack)
        finally:
            await attack.stop()
        return rows
    finally:
        stop_process(proc)


def _table(rows: list[Phase], args: argparse.Namespace) -> str:
    lines = [
        f"{args.attackers} attacker devices x {args.streams} never-read downloads of a "
        f"{args.mb:g} MiB variant (a connection each) + {args.idle} idle raw TCP connections; "
        f"probe: {args.checks} health checks, {args.connects} fresh connections, one download",
        "",
        "| phase | health p50 ms | health p99 ms | new connection p50 ms (failed) "
        "| polite download | coordinator fds | coordinator RSS MiB | attack streams accepted / refused "
        "| idle TCP |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        connect = "-" if r.connect_p50_ms is None else f"{r.connect_p50_ms:.1f}"
        lines.append(
            f"| {r.phase} | {r.health_p50_ms:.2f} | {r.health_p99_ms:.2f} "
            f"| {connect} ({r.connect_failed}) | {r.download} | {r.coordinator_fds} "
            f"| {r.coordinator_rss_mb:.0f} | {r.streams_held} / {r.streams_refused} "
            f"| {r.idle_connections} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--attackers", type=int, default=20, help="attacking devices")
    parser.add_argument("--streams", type=int, default=50, help="download attempts per attacker")
    parser.add_argument("--idle", type=int, default=1000, help="idle raw TCP connections")
    parser.add_argument("--mb", type=float, default=16.0, help="variant size in MiB")
    parser.add_argument("--checks", type=int, default=500, help="health checks per probe")
    parser.add_argument("--connects", type=int, default=20, help="fresh connections per probe")
    parser.add_argument("--stream-write-timeout", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()  # this process holds a descriptor per attack connection
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        started = time.monotonic()
        rows = asyncio.run(_run(args, Path(tmp)))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(_table(rows, args))
        print(f"\n(run took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

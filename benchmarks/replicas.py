"""Replicas: registrations and heartbeats per second with 1, 2 and 3 coordinator replicas.

Issue 18 asks what several replicas of one fleet buy on this machine, side by side in one run.
For each replica count k the script starts one fresh ``redis-server`` and k real coordinator
processes sharing it and one fleet identity (``certs init --out``; plaintext, as
``benchmarks/fleet_load.py`` measures), then, from one load process:

1. **register** N simulated devices, spread round-robin over the replicas (each device calls
   its own replica), with ``--concurrency`` calls in flight: registrations/s;
2. **saturate heartbeats** for ``--seconds``: ``--concurrency`` calls in flight, back to back,
   each device heartbeating on its own replica: the heartbeats/s the replicas sustain (closed
   loop, so the rate is what the box delivers, not an offered load);
3. **check** through the *last* replica's admin API that all N devices are online: each
   replica reads liveness written by the others (one Redis), so the fleet is one fleet.

The CPU of every coordinator, of Redis and of the load generator is measured over each phase
(% of one core), because on 2 cores the point is not a linear speed-up -- every replica, Redis
and the load generator share the same two cores -- but that it works and how the cost splits:
the per-call cost moves between processes, and the sum is what bounds the rate. The load side
reuses fleet_load's devices, calls and recorder (grpc.aio, a few TCP connections per replica).

    python -m benchmarks.replicas                       # 1, 2, 3 replicas; table + JSON file
    python -m benchmarks.replicas --devices 2000 --seconds 15 --replicas 1,2,3,4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psutil
import redis

from benchmarks.fleet_load import (
    Call,
    Clients,
    PhaseStats,
    Recorder,
    SimDevice,
    heartbeat_call,
    make_devices,
    register_call,
    source_revision,
)
from edgefleet.client.admin_client import AdminClientError
from edgefleet.coordinator.embedded_redis import redis_server_binary
from edgefleet.coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE, new_secret
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.fleet_dir import init_fleet
from edgefleet.v1 import admin_pb2
from edgefleet.version import __version__

RESULTS = Path(__file__).resolve().parent / "results" / "replicas.json"


@dataclass
class Cpu:
    """% of one core over a phase, per process."""

    coordinators: list[float]
    redis: float
    loadgen: float

    @property
    def total(self) -> float:
        return sum(self.coordinators) + self.redis + self.loadgen


def cpu_ms_per_call(cpu: Cpu, rate: float) -> dict[str, float]:
    """CPU milliseconds one call costs each side: the load-independent view of the split (the
    rates move with whatever else the shared box runs; the cost per call much less)."""

    def ms(pct: float) -> float:
        return round(10.0 * pct / rate, 3) if rate > 0 else math.nan

    return {
        "coordinators": ms(sum(cpu.coordinators)),
        "redis": ms(cpu.redis),
        "loadgen": ms(cpu.loadgen),
        "total": ms(cpu.total),
    }


@dataclass
class ConfigResult:
    replicas: int
    devices: int
    register: PhaseStats
    heartbeat: PhaseStats
    register_cpu: Cpu
    heartbeat_cpu: Cpu
    online_seen_by_last_replica: int
    devices_per_replica: list[int]
    loadavg_1m_before: float
    loadavg_1m_after: float = 0.0
    cpu_ms_per_call: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Meter:
    """CPU seconds of the coordinators, Redis and this process between start() and stop()."""

    def __init__(self, coordinators: list[int], redis_pid: int) -> None:
        self._procs = [psutil.Process(p) for p in coordinators]
        self._redis = psutil.Process(redis_pid)
        self._t0 = self._l0 = 0.0
        self._c0: list[float] = []
        self._r0 = 0.0

    @staticmethod
    def _used(p: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            return float(t.user + t.system)
        return 0.0

    def start(self) -> None:
        self._t0, self._l0 = time.perf_counter(), time.process_time()
        self._c0 = [self._used(p) for p in self._procs]
        self._r0 = self._used(self._redis)

    def stop(self) -> Cpu:
        wall = max(time.perf_counter() - self._t0, 1e-9)

        def pct(seconds: float) -> float:
            return round(100.0 * seconds / wall, 1)

        return Cpu(
            coordinators=[
                pct(self._used(p) - c0) for p, c0 in zip(self._procs, self._c0, strict=True)
            ],
            redis=pct(self._used(self._redis) - self._r0),
            loadgen=pct(time.process_time() - self._l0),
        )


async def register_all(devices: list[SimDevice], call: Call, concurrency: int) -> PhaseStats:
    rec = Recorder()
    queue = iter(devices)

    async def worker() -> None:
        for dev in queue:
            await rec.timed(call, dev)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(devices)))))
    wall = time.perf_counter() - t0
    return rec.stats(wall, len(rec.latencies))


async def saturate(
    devices: list[SimDevice], call: Call, seconds: float, concurrency: int
) -> PhaseStats:
    """``concurrency`` callers, each going round its share of the devices, back to back."""
    rec = Recorder()
    end = time.perf_counter() + seconds

    async def worker(mine: list[SimDevice]) -> None:
        i = 0
        while time.perf_counter() < end:
            await rec.timed(call, mine[i % len(mine)])
            i += 1

    shares = [devices[i::concurrency] for i in range(min(concurrency, len(devices)))]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in shares))
    in_window = sum(1 for t in rec.done_at if t <= end)
    return rec.stats(end - t0, in_window)


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A fresh redis-server on a free loopback port (no persistence: nothing to keep)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    workdir.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or redis_server_binary()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    return proc, url


def seed_tokens(data_dir: Path, admin: str, enroll: str) -> None:
    """The same tokens on every replica (as an operator sets them through the environment)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, value in ((ADMIN_TOKEN_FILE, admin), (ENROLL_TOKEN_FILE, enroll)):
        fd = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")


async def open_clients(addresses: list[str], channels: int, enroll: str, admin: str) -> Clients:
    """One Clients over every replica: channel j*channels .. (j+1)*channels-1 go to replica j."""
    parts = [await Clients.open(a, channels, enroll, admin) for a in addresses]
    return Clients(
        channels=[c for p in parts for c in p.channels],
        devices=[s for p in parts for s in p.devices],
        health=[h for p in parts for h in p.health],
        admin=parts[-1].admin,  # the check reads through the last replica
        enroll_md=parts[0].enroll_md,
        admin_md=parts[0].admin_md,
    )


async def count_online(clients: Clients, ours: set[str]) -> int:
    """How many of ``ours`` the admin API (of the last replica) lists as online."""
    online, token = 0, ""
    while True:
        reply = await clients.admin.ListDevices(
            admin_pb2.ListDevicesRequest(page_size=200, page_token=token),
            metadata=clients.admin_md,
            timeout=60,
        )
        online += sum(
            1 for d in reply.devices if d.id in ours and d.status == admin_pb2.DEVICE_STATUS_ONLINE
        )
        token = reply.next_page_token
        if not token:
            return online


_live: list[subprocess.Popen[bytes]] = []


async def run_config(k: int, base: Path, args: argparse.Namespace) -> ConfigResult:
    root = base / f"replicas-{k}"
    shutil.rmtree(root, ignore_errors=True)
    loadavg = os.getloadavg()[0]
    redis_proc, url = start_redis(root / "redis")
    _live.append(redis_proc)
    fleet = root / "fleet"
    init_fleet(fleet)
    admin, enroll = new_secret(), new_secret()
    procs: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []
    try:
        for j in range(k):
            data = root / f"replica-{j}"
            seed_tokens(data, admin, enroll)
            extra = [
                *("--redis-url", url, "--fleet-dir", str(fleet)),
                *("--heartbeat-interval", "5", "--offline-after", "60"),
            ]
            proc, address = await asyncio.to_thread(start_coordinator_process, data, extra)
            procs.append(proc)
            _live.append(proc)
            addresses.append(address)
        clients = await open_clients(addresses, args.channels, enroll, admin)
        meter = Meter([p.pid for p in procs], redis_proc.pid)
        try:
            devices = make_devices(args.devices, args.channels * k)
            # device i -> replica i % k (its channel within that replica's set round-robin)
            for d in devices:
                d.channel = (d.index % k) * args.channels + (d.index // k) % args.channels
            warm = make_devices(min(64, args.devices), args.channels * k)
            await register_all(warm, register_call(clients), args.concurrency)
            log(args, f"[{k} replica(s)] registering {args.devices} devices")
            meter.start()
            reg = await register_all(devices, register_call(clients), args.concurrency)
            reg_cpu = meter.stop()
            registered = [d for d in devices if d.device_id]
            log(
                args,
                f"[{k} replica(s)] heartbeats, {args.concurrency} in flight, {args.seconds:g}s",
            )
            meter.start()
            hb = await saturate(
                registered,
                heartbeat_call(clients, time.monotonic()),
                args.seconds,
                args.concurrency,
            )
            hb_cpu = meter.stop()
            online = await count_online(clients, {d.device_id for d in registered})
        finally:
            await clients.close()
        per_replica = [sum(1 for d in registered if d.index % k == j) for j in range(k)]
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_process, proc)
            _live.remove(proc)
        redis_proc.terminate()
        redis_proc.wait(10)
        _live.remove(redis_proc)
    warnings = [
        line.strip()
        for j in range(k)
        for line in (root / f"replica-{j}" / "coordinator.log")
        .read_text(errors="replace")
        .splitlines()
        if " ERROR " in line or "Traceback" in line
    ][:5]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return ConfigResult(
        replicas=k,
        devices=args.devices,
        register=reg,
        heartbeat=hb,
        register_cpu=reg_cpu,
        heartbeat_cpu=hb_cpu,
        online_seen_by_last_replica=online,
        devices_per_replica=per_replica,
        loadavg_1m_before=loadavg,
        loadavg_1m_after=os.getloadavg()[0],
        cpu_ms_per_call={
            "register": cpu_ms_per_call(reg_cpu, reg.rate),
            "heartbeat": cpu_ms_per_call(hb_cpu, hb.rate),
        },
        warnings=warnings,
    )


def log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def _errors(s: PhaseStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"


def render(results: list[ConfigResult], args: argparse.Namespace) -> str:
    lines = [
        f"edgefleet {__version__} ({source_revision()}) replicas - Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs; "
        f"one redis-server; {args.devices} devices round-robin over the replicas; "
        f"{args.concurrency} calls in flight from 1 load process ({args.channels} connections "
        f"per replica); heartbeats back to back for {args.seconds:g} s",
        "",
        "| replicas | registrations/s | heartbeats/s | heartbeat p50 / p99 ms | errors "
        "| online (seen by the last replica) | CPU during heartbeats: coordinators | Redis "
        "| load gen | sum | host load avg |",
        "|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r.heartbeat_cpu
        lines.append(
            f"| {r.replicas} | {r.register.rate:,.0f} | {r.heartbeat.rate:,.0f} "
            f"| {_ms(r.heartbeat.p50_ms)} / {_ms(r.heartbeat.p99_ms)} "
            f"| {_errors(r.register)} / {_errors(r.heartbeat)} "
            f"| {r.online_seen_by_last_replica:,} / {r.devices:,} "
            f"| {' + '.join(f'{x:.0f}%' for x in c.coordinators)} | {c.redis:.0f}% "
            f"| {c.loadgen:.0f}% | {c.total:.0f}% "
            f"| {r.loadavg_1m_before:.1f} -> {r.loadavg_1m_after:.1f} |"
        )
    lines.append(
        "(CPU: % of one core over the heartbeat phase; the machine has "
        f"{os.cpu_count()} cores, so ~{100 * (os.cpu_count() or 1)}% is everything.)"
    )
    lines += [
        "",
        "| replicas | CPU ms per registration: coordinators / Redis / load gen / total "
        "| CPU ms per heartbeat: coordinators / Redis / load gen / total |",
        "|---:|---|---|",
    ]
    for r in results:
        cells = [
            " / ".join(
                f"{r.cpu_ms_per_call[phase][k]:.2f}"
                for k in ("coordinators", "redis", "loadgen", "total")
            )
            for phase in ("register", "heartbeat")
        ]
        lines.append(f"| {r.replicas} | {cells[0]} | {cells[1]} |")
    for r in results:
        for w in r.warnings:
            lines.append(f"{r.replicas} replica(s) logged: {w}")
    return "\n".join(lines)


def to_json(results: list[ConfigResult], args: argparse.Namespace, wall: float) -> dict[str, Any]:
    def clean(obj: Any) -> Any:
        if isinstance(obj, float):
            return None if math.isnan(obj) else round(obj, 3)
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return clean(  # type: ignore[no-any-return]
        {
            "benchmark": "replicas",
            "edgefleet": __version__,
            "revision": source_revision(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "cpus": os.cpu_count(),
            "devices": args.devices,
            "concurrency": args.concurrency,
            "channels_per_replica": args.channels,
            "heartbeat_seconds": args.seconds,
            "wall_seconds": wall,
            "configs": [asdict(r) for r in results],
        }
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Registrations and heartbeats per second with 1, 2 and 3 coordinator "
        "replicas on one Redis, side by side."
    )
    p.add_argument("--replicas", default="1,2,3", help="comma-separated replica counts")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices")
    p.add_argument("--seconds", type=float, default=10.0, help="heartbeat phase length")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    p.add_argument("--channels", type=int, default=2, help="connections per replica")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results file ('-': none)")
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        args.counts = [int(s) for s in str(args.replicas).split(",") if s.strip()]
    except ValueError:
        p.error("--replicas takes comma-separated integers, e.g. 1,2,3")
    if not args.counts or min(args.counts) < 1:
        p.error("--replicas needs counts >= 1")
    if args.devices < 1 or args.seconds <= 0 or args.concurrency < 1 or args.channels < 1:
        p.error("--devices, --seconds, --concurrency and --channels must be positive")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    base = Path(tempfile.mkdtemp(prefix="ef-replicas-"))
    results: list[ConfigResult] = []
    t0 = time.perf_counter()

    async def run_all() -> None:
        for k in args.counts:
            results.append(await run_config(k, base, args))

    try:
        asyncio.run(run_all())
    except KeyboardInterrupt:
        print("interrupted; stopping the replicas and Redis", file=sys.stderr)
        return 130
    except (AdminClientError, RuntimeError, OSError) as exc:  # a replica or Redis did not start
        args.keep = True  # its log is the evidence
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in list(_live):
            stop_process(proc)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"data kept in {base}", file=sys.stderr)
    wall = time.perf_counter() - t0
    print(render(results, args))
    print(f"wall time: {wall:.1f} s")
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(to_json(results, args, wall), indent=2) + "\n")
        print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fleet load: how many devices can one coordinator enrol and keep alive, and at what latency?

The control plane's steady-state job is simple and relentless: every device
heartbeats every few seconds, forever, and each heartbeat is an authenticated
read-modify-write of that device's record in Redis. So the numbers that size a
coordinator are heartbeats/s it sustains at a given fleet size and the latency
tail (p99) that devices see, plus how fast a fleet can (re-)enrol after an
outage, when every device calls Register at once. This script measures exactly
those, against a real coordinator, for each fleet size N:

1. **register** N simulated devices (catalog profiles mixed round-robin) with
   bounded concurrency, as real ``Register`` RPCs with the enrollment token;
2. **hold** heartbeats for ``--seconds``: every device sends a ``Heartbeat``
   with its own credential every ``--interval`` seconds (first beats spread
   evenly over one interval, at most one call in flight per device, no
   catch-up bursts), so the offered load is N / interval heartbeats/s. The
   achieved rate and latency are reported as measured: when the box saturates
   the rate falls below the target, which is the finding, not a failure;
3. **check** through the admin API (``ListDevices`` with the admin token) that
   all N devices are ``online`` - load that leaves devices looking dead would be
   worse than slow.

Why a baseline, and why gRPC health: a number such as "2,000 heartbeats/s" says
little on its own; on a 2-core box Python gRPC itself costs most of it. So every
phase is repeated, with the same devices, channels, concurrency, schedule and
metadata, against ``grpc.health.v1.Health/Check`` served by the same coordinator
process. That is the floor of a unary call through this stack with no
authentication, validation or Redis work; the gap between the two columns is
what the registry adds per call.

Why the coordinator runs as a separate process: the load generator is itself
Python, and sharing one GIL and event loop with the server would measure their
contention rather than the server. The load side is one process of grpc.aio
clients over a handful of channels (each its own TCP connection), the way an
edge gateway multiplexes devices; latencies are client-observed, so they include
the load generator's own scheduling delay - its CPU use is printed next to the
coordinator's so a saturated client is visible rather than blamed on the server.

Each fleet size gets a fresh coordinator on a wiped data dir (embedded Redis by
default, ``--redis-url`` for a real server). The coordinator is stopped with
SIGTERM on exit, including Ctrl-C.

    python -m benchmarks.fleet_load                      # N = 100 and 1000, table
    python -m benchmarks.fleet_load --devices 100,1000,2000 --seconds 20 --json
    python -m benchmarks.fleet_load --redis-url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2

from edgefleet.catalog import CATALOG
from edgefleet.coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.limits import MAX_PAGE_SIZE
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.version import __version__
from edgefleet.wire import profile_to_proto

RPC_TIMEOUT_SECONDS = 10.0  # what the real agent uses
# Without a channel-local subchannel pool, gRPC core shares one TCP connection
# between channels with the same target and arguments, and "4 channels" would
# silently be one connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
LABELS = {"bench": "fleet-load"}
# Called through a plain multicallable (what HealthStub does inside; its type stubs lack methods).
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HealthCheck = grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]


# --- simulated devices and the calls they make -----------------------------------------------


@dataclass
class SimDevice:
    index: int
    name: str
    instance_key: str
    profile: str
    channel: int
    device_id: str = ""
    credential: str = ""
    sequence: int = 0


@dataclass
class Clients:
    """A few channels shared by all simulated devices, with a stub of each service per channel."""

    channels: list[grpc.aio.Channel]
    devices: list[Any]
    health: list[HealthCheck]
    admin: Any
    enroll_md: tuple[tuple[str, str], ...]
    admin_md: tuple[tuple[str, str], ...]

    @classmethod
    async def open(cls, address: str, count: int, enroll: str, admin: str) -> Clients:
        channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(count)
        ]
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout=30)
        return cls(
            channels=channels,
            devices=[device_pb2_grpc.DeviceServiceStub(ch) for ch in channels],
            health=[
                ch.unary_unary(
                    HEALTH_CHECK_METHOD,
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                for ch in channels
            ],
            admin=admin_pb2_grpc.AdminServiceStub(channels[0]),
            enroll_md=(("authorization", f"Bearer {enroll}"),),
            admin_md=(("authorization", f"Bearer {admin}"),),
        )

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


Call = Callable[[SimDevice], Awaitable[None]]
_HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="")
_PROFILES = {name: profile_to_proto(p) for name, p in CATALOG.items()}


def make_devices(n: int, channels: int) -> list[SimDevice]:
    names = sorted(CATALOG)
    return [
        SimDevice(
            index=i,
            name=f"bench-{i:05d}",
            instance_key=secrets.token_urlsafe(16),
            profile=names[i % len(names)],
            channel=i % channels,
        )
        for i in range(n)
    ]


def register_call(clients: Clients) -> Call:
    async def call(dev: SimDevice) -> None:
        reply = await clients.devices[dev.channel].Register(
            device_pb2.RegisterRequest(
                instance_key=dev.instance_key,
                name=dev.name,
                profile=_PROFILES[dev.profile],
                agent_version=__version__,
                labels=LABELS,
            ),
            metadata=clients.enroll_md,
            timeout=RPC_TIMEOUT_SECONDS,
        )
        dev.device_id = reply.device_id
        dev.credential = reply.credential

    return call


def heartbeat_call(clients: Clients, started: float) -> Call:
    async def call(dev: SimDevice) -> None:
        dev.sequence += 1
        await clients.devices[dev.channel].Heartbeat(
            device_pb2.HeartbeatRequest(
                device_id=dev.device_id,
                state=device_pb2.AGENT_STATE_READY,
                sequence=dev.sequence,
                uptime_seconds=time.monotonic() - started,
            ),
            metadata=(("authorization", f"Bearer {dev.credential}"),),
            timeout=RPC_TIMEOUT_SECONDS,
        )

    return call


def baseline_call(
    clients: Clients, metadata: Callable[[SimDevice], Sequence[tuple[str, str]]]
) -> Call:
    """Health/Check on the device's channel, carrying the same authorization header size."""

    async def call(dev: SimDevice) -> None:
        await clients.health[dev.channel](
            _HEALTH_REQUEST, metadata=tuple(metadata(dev)), timeout=RPC_TIMEOUT_SECONDS
        )

    return call


# --- measuring -------------------------------------------------------------------------------


@dataclass
class PhaseStats:
    calls: int
    ok: int
    errors: dict[str, int]
    seconds: float
    rate: float  # successful calls per second of the phase window
    p50_ms: float
    p99_ms: float
    max_ms: float
    target_rate: float | None = None
    error_samples: dict[str, str] = field(default_factory=dict)  # first message per status code
    loadgen_cpu_pct: float = 0.0  # of one core
    coordinator_cpu_pct: float = 0.0  # of one core, the coordinator process
    redis_cpu_pct: float = 0.0  # of one core, the embedded Redis (0 with --redis-url)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of already sorted values; nan if empty."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class CpuMeter:
    """CPU seconds used by this process and by the coordinator's process tree over an interval."""

    def __init__(self, coordinator_pid: int) -> None:
        self._coord = psutil.Process(coordinator_pid)
        self._t0 = self._l0 = self._c0 = self._r0 = 0.0

    def _coordinator_cpu(self) -> tuple[float, float]:
        """(coordinator process, its children - the embedded Redis) CPU seconds so far."""

        def used(p: psutil.Process) -> float:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                return float(t.user + t.system)
            return 0.0

        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            children = self._coord.children(recursive=True)
        return used(self._coord), sum(used(c) for c in children)

    def start(self) -> None:
        self._t0, self._l0 = time.perf_counter(), time.process_time()
        self._c0, self._r0 = self._coordinator_cpu()

    def stop(self, stats: PhaseStats) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        coord, redis = self._coordinator_cpu()
        stats.loadgen_cpu_pct = 100.0 * (time.process_time() - self._l0) / wall
        stats.coordinator_cpu_pct = 100.0 * (coord - self._c0) / wall
        stats.redis_cpu_pct = 100.0 * (redis - self._r0) / wall


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.done_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.calls = 0

    async def timed(self, call: Call, dev: SimDevice) -> None:
        self.calls += 1
        t0 = time.perf_counter()
        try:
            await call(dev)
        except grpc.aio.AioRpcError as err:
            self.errors[err.code().name] += 1
            self.error_samples.setdefault(err.code().name, str(err.details())[:200])
            return
        t1 = time.perf_counter()
        self.latencies.append(t1 - t0)
        self.done_at.append(t1)

    def stats(self, seconds: float, ok_in_window: int, target: float | None = None) -> PhaseStats:
        lat = sorted(self.latencies)
        return PhaseStats(
            calls=self.calls,
            ok=len(lat),
            errors=dict(self.errors),
            error_samples=dict(self.error_samples),
            seconds=round(seconds, 3),
            rate=ok_in_window / seconds if seconds > 0 else 0.0,
            p50_ms=percentile(lat, 50) * 1e3,
            p99_ms=percentile(lat, 99) * 1e3,
            max_ms=(lat[-1] * 1e3) if lat else math.nan,
            target_rate=target,
        )


async def burst(
    devices: list[SimDevice], call: Call, concurrency: int, cpu: CpuMeter
) -> PhaseStats:
    """Every device makes one call, at most ``concurrency`` in flight; rate = calls / wall time."""
    rec = Recorder()
    queue = iter(devices)

    async def worker() -> None:
        for dev in queue:
            await rec.timed(call, dev)

    cpu.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(devices)))))
    wall = time.perf_counter() - t0
    stats = rec.stats(wall, len(rec.latencies))
    cpu.stop(stats)
    return stats


async def hold(
    devices: list[SimDevice], call: Call, seconds: float, interval: float, cpu: CpuMeter
) -> PhaseStats:
    """Each device calls every ``interval`` s for ``seconds``; rate counts calls done in the window.

    First calls are spread evenly over one interval. A device whose previous
    call took longer than its interval sends the next one at once but never
    more than one at a time, so an overloaded server sees the load a real fleet
    would put on it (devices retry on their own schedule), not an unbounded queue.
    """
    rec = Recorder()
    start = time.perf_counter() + 0.05
    end = start + seconds
    n = len(devices)

    async def device_loop(dev: SimDevice) -> None:
        due = start + interval * dev.index / n
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await rec.timed(call, dev)
            due = max(due + interval, time.perf_counter())

    cpu.start()
    await asyncio.gather(*(device_loop(d) for d in devices))
    in_window = sum(1 for t in rec.done_at if t <= end)
    stats = rec.stats(seconds, in_window, target=n / interval)
    cpu.stop(stats)
    return stats


# --- one fleet size --------------------------------------------------------------------------


@dataclass
class RunResult:
    devices: int
    channels: int
    register: dict[str, PhaseStats]
    heartbeat: dict[str, PhaseStats]
    online: int
    registered: int
    other_devices_in_store: int
    list_devices_ms: float
    coordinator_log_warnings: list[str] = field(default_factory=list)


async def count_online(clients: Clients, ours: set[str]) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    devices: list[admin_pb2.Device] = []
    token = ""
    while True:  # ListDevices is paged (issue 14): follow the pages
        reply = await clients.admin.ListDevices(
            admin_pb2.ListDevicesRequest(page_size=MAX_PAGE_SIZE, page_token=token),
            metadata=clients.admin_md,
            timeout=60,
        )
        devices.extend(reply.devices)
        token = reply.next_page_token
        if not token:
            break
    ms = (time.perf_counter() - t0) * 1e3
    online = sum(1 for d in devices if d.id in ours and d.status == admin_pb2.DEVICE_STATUS_ONLINE)
    others = sum(1 for d in devices if d.id not in ours)
    return online, others, ms


async def measure(
    address: str, data_dir: Path, coordinator_pid: int, n: int, args: argparse.Namespace
) -> RunResult:
    enroll = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
    admin = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    clients = await Clients.open(address, args.channels, enroll, admin)
    cpu = CpuMeter(coordinator_pid)
    try:
        devices = make_devices(n, args.channels)
        health_as_register = baseline_call(clients, lambda d: clients.enroll_md)
        # Warm the connections and both code paths so the first phase is not a cold start,
        # then remove the warm-up devices so the store holds exactly the N measured ones.
        warm = make_devices(min(n, 8 * args.channels), args.channels)
        await burst(warm, health_as_register, args.concurrency, cpu)
        await burst(warm, register_call(clients), args.concurrency, cpu)
        for d in warm:
            if d.device_id:
                await clients.admin.RemoveDevice(
                    admin_pb2.RemoveDeviceRequest(device_id=d.device_id),
                    metadata=clients.admin_md,
                    timeout=RPC_TIMEOUT_SECONDS,
                )

        def log(msg: str) -> None:
            if not args.quiet:
                print(f"[N={n}] {msg}", file=sys.stderr, flush=True)

        log(f"registering {n} devices (concurrency {args.concurrency}, {args.channels} channels)")
        reg_ours = await burst(devices, register_call(clients), args.concurrency, cpu)
        reg_base = await burst(devices, health_as_register, args.concurrency, cpu)
        registered = [d for d in devices if d.device_id]
        ours_ids = {d.device_id for d in registered}
        log(f"registered {len(registered)}; holding heartbeats for {args.seconds:g}s")

        started = time.monotonic()
        hb_ours = await hold(
            registered, heartbeat_call(clients, started), args.seconds, args.interval, cpu
        )
        online, others, list_ms = await count_online(clients, ours_ids)
        log(f"{online}/{n} online; baseline heartbeat pattern for {args.seconds:g}s")
        hb_base = await hold(
            registered,
            baseline_call(clients, lambda d: (("authorization", f"Bearer {d.credential}"),)),
            args.seconds,
            args.interval,
            cpu,
        )
    finally:
        await clients.close()
    return RunResult(
        devices=n,
        channels=args.channels,
        register={"ours": reg_ours, "baseline": reg_base},
        heartbeat={"ours": hb_ours, "baseline": hb_base},
        online=online,
        registered=len(registered),
        other_devices_in_store=others,
        list_devices_ms=list_ms,
    )


def log_warnings(log_path: Path, limit: int = 5) -> list[str]:
    """WARNING/ERROR lines and tracebacks the coordinator logged (first few, for the report)."""
    if not log_path.exists():
        return []
    hits = [
        line.strip()
        for line in log_path.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]
    if len(hits) > limit:
        return [*hits[:limit], f"... and {len(hits) - limit} more"]
    return hits


_live: list[subprocess.Popen[bytes]] = []


async def run_size(n: int, base: Path, args: argparse.Namespace) -> RunResult:
    data_dir = base / f"n{n}"
    shutil.rmtree(data_dir, ignore_errors=True)
    extra = [
        "--heartbeat-interval",
        str(args.interval),
        "--offline-after",
        str(max(15.0, 3 * args.interval)),
    ]
    if args.redis_url:
        extra += ["--redis-url", args.redis_url]
    proc, address = await asyncio.to_thread(start_coordinator_process, data_dir, extra)
    _live.append(proc)
    try:
        result = await measure(address, data_dir, proc.pid, n, args)
    finally:
        await asyncio.to_thread(stop_process, proc)
        _live.remove(proc)
    result.coordinator_log_warnings = log_warnings(data_dir / "coordinator.log")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


# --- output ----------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _errs(s: PhaseStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"


def source_revision() -> str:
    """The commit measured (``+dirty`` when the work tree has changes), or "unknown"."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def redact(url: str) -> str:
    """Hide a password in a redis URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def render_table(results: list[RunResult], args: argparse.Namespace) -> str:
    lines = [
        f"edgefleet {__version__} ({source_revision()}) fleet load - "
        f"{platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs, "
        f"{'redis at ' + redact(args.redis_url) if args.redis_url else 'embedded redis'}",
        f"load side: 1 process, {args.channels} grpc.aio channels (TCP connections) shared by "
        f"all devices; register concurrency {args.concurrency}; heartbeat every "
        f"{args.interval:g} s per device for {args.seconds:g} s",
        "baseline: the same calls as grpc.health.v1.Health/Check on the same coordinator "
        "(bare gRPC, no auth/validation/Redis)",
        f"host load average (1 min) before / after: {args.load_before:.2f} / "
        f"{os.getloadavg()[0]:.2f} (other work on the box skews every column)",
        "",
        "| N | RPC | ours calls/s | baseline calls/s | ours p50 ms | baseline p50 ms "
        "| ours p99 ms | baseline p99 ms | errors ours / baseline |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for label, pair in (("Register", r.register), ("Heartbeat", r.heartbeat)):
            o, b = pair["ours"], pair["baseline"]
            rpc = label
            if o.target_rate is not None:
                rpc = f"Heartbeat (target {o.target_rate:,.0f}/s)"
            lines.append(
                f"| {r.devices:,} | {rpc} | {o.rate:,.0f} | {b.rate:,.0f} | {_ms(o.p50_ms)} "
                f"| {_ms(b.p50_ms)} | {_ms(o.p99_ms)} | {_ms(b.p99_ms)} "
                f"| {_errs(o)} / {_errs(b)} |"
            )
    lines += [
        "",
        "| N | online after hold (admin ListDevices) | ListDevices ms | heartbeat max ms ours "
        "/ baseline | coordinator CPU ours / baseline | embedded Redis CPU ours / baseline "
        "| load-gen CPU ours / baseline |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        o, b = r.heartbeat["ours"], r.heartbeat["baseline"]
        lines.append(
            f"| {r.devices:,} | {r.online:,} / {r.devices:,} | {r.list_devices_ms:.0f} "
            f"| {_ms(o.max_ms)} / {_ms(b.max_ms)} "
            f"| {o.coordinator_cpu_pct:.0f}% / {b.coordinator_cpu_pct:.0f}% "
            f"| {o.redis_cpu_pct:.0f}% / {b.redis_cpu_pct:.0f}% "
            f"| {o.loadgen_cpu_pct:.0f}% / {b.loadgen_cpu_pct:.0f}% |"
        )
    lines.append("(CPU is % of one core over the heartbeat hold.)")
    for r in results:
        for phase, pair in (("Register", r.register), ("Heartbeat", r.heartbeat)):
            for side, st in pair.items():
                for code, msg in st.error_samples.items():
                    lines.append(f"N={r.devices} {phase} {side}: first {code}: {msg}")
        if r.other_devices_in_store:
            lines.append(
                f"N={r.devices}: the store also held {r.other_devices_in_store:,} devices from "
                "earlier runs (a --redis-url store is not wiped)"
            )
        if r.coordinator_log_warnings:
            lines.append(f"coordinator log warnings at N={r.devices}:")
            lines += [f"  {w}" for w in r.coordinator_log_warnings]
    return "\n".join(lines)


def to_json(results: list[RunResult], args: argparse.Namespace, wall: float) -> str:
    def clean(obj: Any) -> Any:
        if isinstance(obj, float):
            return None if math.isnan(obj) else round(obj, 3)
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return json.dumps(
        clean(
            {
                "benchmark": "fleet_load",
                "edgefleet": __version__,
                "revision": source_revision(),
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "cpus": os.cpu_count(),
                "loadavg_1m_before_after": [args.load_before, os.getloadavg()[0]],
                "redis": "url" if args.redis_url else "embedded",
                "channels": args.channels,
                "concurrency": args.concurrency,
                "interval_seconds": args.interval,
                "hold_seconds": args.seconds,
                "baseline": "grpc.health.v1.Health/Check",
                "wall_seconds": wall,
                "runs": [asdict(r) for r in results],
            }
        ),
        indent=2,
    )


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Register N simulated devices and hold heartbeats against a real "
        "coordinator, next to a bare gRPC health-check baseline."
    )
    p.add_argument("--devices", default="100,1000", help="comma-separated fleet sizes")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to hold heartbeats")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--channels", type=int, default=4, help="gRPC channels shared by devices")
    p.add_argument("--concurrency", type=int, default=64, help="registrations in flight")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    p.add_argument("--data-dir", type=Path, default=None, help="base dir (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep data dirs (coordinator logs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in str(args.devices).split(",") if s.strip()]
    except ValueError:
        p.error("--devices takes comma-separated integers, e.g. 100,1000")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--devices needs at least one size >= 1")
    if args.seconds <= 0 or args.interval <= 0 or args.channels < 1 or args.concurrency < 1:
        p.error("--seconds, --interval, --channels and --concurrency must be positive")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through the same cleanup path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]
    signal.signal(signal.SIGTERM, _terminate)
    own_base = args.data_dir is None
    base: Path = Path(tempfile.mkdtemp(prefix="ef-bench-")) if own_base else args.data_dir
    base.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    t0 = time.perf_counter()

    async def run_all() -> None:
        for n in args.sizes:
            results.append(await run_size(n, base, args))

    try:
        asyncio.run(run_all())
    except KeyboardInterrupt:
        print("interrupted; stopping the coordinator", file=sys.stderr)
        return 130
    finally:
        for proc in list(_live):  # only if the async cleanup did not get to run
            stop_process(proc)
        if own_base and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - t0
    if args.json:
        print(to_json(results, args, wall))
    else:
        print(render_table(results, args))
        print(f"wall time: {wall:.1f} s")
    if args.keep:
        print(f"data kept in {base}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

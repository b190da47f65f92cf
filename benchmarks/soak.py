"""Soak at scale: hold 10,000 simulated devices against one coordinator and watch it not grow.

``benchmarks/fleet_load.py`` asks how fast one coordinator answers; this asks
whether it *stays* healthy at fleet scale for a bounded time. One real
coordinator process (embedded Redis by default, ``--redis-url`` for a real
server) and ``--workers`` load processes (multiprocessing, spawn), each an
asyncio loop of grpc.aio clients over a few channels, the way an edge gateway
multiplexes devices. The calls, channels and metadata are fleet_load's (its
helpers are imported, not copied): real ``Register`` with the enrollment token,
real ``Heartbeat`` with each device's own credential as ``authorization:
Bearer`` metadata.

Phases:

1. **register** ``--devices`` devices (catalog profiles round-robin), split
   across the workers, with ``--concurrency`` registrations in flight in all;
2. **idle** for ``--idle-seconds``: every device registered, nobody beating.
   The coordinator's CPU here is what it costs to *have* N devices: the
   metrics refresh every 5 s, which reads per-profile counts kept on write
   (O(profiles x log N), no per-device reads) to set the fleet gauges (its last
   duration is scraped from ``edgefleet_fleet_refresh_duration_seconds`` on the
   coordinator's /metrics), and the rollout controller's pass;
3. **hold** for ``--duration``: each device heartbeats at the interval the
   coordinator tells it (``--interval`` is passed to the coordinator as
   ``--heartbeat-interval``; devices follow the value in every reply), first
   beats spread evenly over one interval, at most one call in flight per device,
   no catch-up bursts; so the offered load is N / interval heartbeats/s;
4. **check** through the admin API that the devices are ``online``.

Every ``--sample-every`` seconds the parent records the coordinator's RSS and
CPU (psutil on its pid), the embedded Redis's CPU, Redis ``INFO memory``
``used_memory``, the last fleet-refresh duration and the host load average.
The table shows RSS start/peak/end and a least-squares slope in MiB/min over
the steady part of the hold (after the first interval, when every device is
beating): a leak shows as a slope well above zero. Redis bytes per device is
(used_memory at the end - used_memory before registration) / N.

Latencies are client-observed (they include the load processes' own
scheduling on a shared box); the load processes' CPU is printed so a saturated
client is visible. Every process (workers, coordinator, its Redis) is stopped
on exit, Ctrl-C or SIGTERM.

    python -m benchmarks.soak                                  # 10,000 devices, 120 s, table
    python -m benchmarks.soak --devices 2000 --duration 30 --json
    python -m benchmarks.soak --redis-url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psutil
import redis

from benchmarks.fleet_load import (
    RPC_TIMEOUT_SECONDS,
    Clients,
    Recorder,
    SimDevice,
    log_warnings,
    make_devices,
    percentile,
    redact,
    register_call,
    source_revision,
)
from edgefleet.catalog import CATALOG
from edgefleet.coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.limits import MAX_PAGE_SIZE
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2
from edgefleet.version import __version__

REFRESH_METRIC = "edgefleet_fleet_refresh_duration_seconds"
HEARTBEATS_METRIC = "edgefleet_heartbeats_total"
# ListDevices of a 10k fleet is several MiB; let the client take what the server will send.
ADMIN_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
MiB = 1024.0 * 1024.0


# --- the load processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    worker: int
    workers: int
    devices: int  # the whole fleet; this worker takes every ``workers``-th device
    channels: int
    concurrency: int
    address: str
    enroll_token: str
    admin_token: str
    interval: float  # used until the coordinator tells a device otherwise


@dataclass
class Registered:
    worker: int
    device_ids: list[str]
    latencies: list[float]
    errors: dict[str, int]
    error_samples: dict[str, str]
    started: float  # perf_counter (CLOCK_MONOTONIC on Linux: comparable across processes)
    finished: float


@dataclass
class Held:
    worker: int
    calls: int
    latencies: list[float]
    done_at: list[float]
    errors: dict[str, int]
    error_samples: dict[str, str]
    cpu_seconds: float  # this process, whole life
    told_intervals: list[float]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the parent dies, even by kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of one load process: register its share, wait for the start time, beat."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        asyncio.run(_worker(spec, conn))
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(("error", spec.worker, traceback.format_exc()))
    finally:
        conn.close()


async def _worker(spec: WorkerSpec, conn: Connection) -> None:
    clients = await Clients.open(spec.address, spec.channels, spec.enroll_token, spec.admin_token)
    try:
        devices = make_devices(spec.devices, spec.channels)[spec.worker :: spec.workers]
        # What the coordinator told each device to use (device index -> seconds).
        told: dict[int, float] = {}

        reg = Recorder()
        call = register_call(clients)
        queue = iter(devices)

        async def register_worker() -> None:
            for dev in queue:
                await reg.timed(call, dev)

        t0 = time.perf_counter()
        lanes = max(1, min(spec.concurrency, len(devices)))
        await asyncio.gather(*(register_worker() for _ in range(lanes)))
        t1 = time.perf_counter()
        registered = [d for d in devices if d.device_id]
        conn.send(
            (
                "registered",
                Registered(
                    worker=spec.worker,
                    device_ids=[d.device_id for d in registered],
                    latencies=reg.latencies,
                    errors=dict(reg.errors),
                    error_samples=dict(reg.error_samples),
                    started=t0,
                    finished=t1,
                ),
            )
        )
        # The parent answers with (hold start, hold end) on the shared monotonic clock.
        start, end = await asyncio.to_thread(conn.recv)
        rec = Recorder()
        began = time.monotonic()

        async def heartbeat(dev: SimDevice) -> None:
            dev.sequence += 1
            reply = await clients.devices[dev.channel].Heartbeat(
                device_pb2.HeartbeatRequest(
                    device_id=dev.device_id,
                    state=device_pb2.AGENT_STATE_READY,
                    sequence=dev.sequence,
                    uptime_seconds=time.monotonic() - began,
                ),
                metadata=(("authorization", f"Bearer {dev.credential}"),),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            if reply.heartbeat_interval_seconds > 0:
                told[dev.index] = reply.heartbeat_interval_seconds

        n = spec.devices

        async def device_loop(dev: SimDevice) -> None:
            due = start + spec.interval * dev.index / n  # spread over the whole fleet
            while due < end:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await rec.timed(heartbeat, dev)
                due = max(due + told.get(dev.index, spec.interval), time.perf_counter())

        await asyncio.gather(*(device_loop(d) for d in registered))
        conn.send(
            (
                "held",
                Held(
                    worker=spec.worker,
                    calls=rec.calls,
                    latencies=rec.latencies,
                    done_at=rec.done_at,
                    errors=dict(rec.errors),
                    error_samples=dict(rec.error_samples),
                    cpu_seconds=time.process_time(),
                    told_intervals=sorted(set(told.values())),
                ),
            )
        )
    finally:
        await clients.close()


# --- sampling the coordinator and Redis ------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the coordinator was up
    phase: str
    coordinator_rss_mib: float
    coordinator_cpu_pct: float  # of one core since the previous sample
    redis_cpu_pct: float  # embedded Redis (0 with --redis-url)
    loadgen_cpu_pct: float  # all load processes together
    redis_used_mib: float
    redis_dataset_mib: float  # used_memory_dataset: the keys, without buffers and overhead
    refresh_seconds: float  # the last fleet refresh, from /metrics (nan if unreadable)
    loadavg_1m: float
    heartbeats_per_s: float = 0.0  # completed since the previous sample (filled in at the end)
    heartbeat_p99_ms: float = math.nan  # of those


def _cpu_seconds(p: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        return float(t.user + t.system)
    return 0.0


class Sampler:
    def __init__(
        self, coordinator_pid: int, redis_client: redis.Redis, metrics_address: str | None
    ) -> None:
        self.coord = psutil.Process(coordinator_pid)
        self.redis = redis_client
        self.metrics_url = f"http://{metrics_address}/metrics" if metrics_address else None
        self.workers: list[psutil.Process] = []
        self.samples: list[Sample] = []
        self.t0 = time.perf_counter()
        self._last = self._cpu_now()

    def _children(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return self.coord.children(recursive=True)
        return []

    def _cpu_now(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            _cpu_seconds(self.coord),
            sum(_cpu_seconds(c) for c in self._children()),
            sum(_cpu_seconds(w) for w in self.workers),
        )

    def redis_memory(self) -> tuple[int, int]:
        """(used_memory, used_memory_dataset) from INFO memory."""
        info: dict[str, Any] = self.redis.info("memory")
        return int(info["used_memory"]), int(info["used_memory_dataset"])

    def _metrics_text(self) -> str:
        if self.metrics_url is None:
            return ""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    def refresh_seconds(self) -> float:
        for line in self._metrics_text().splitlines():
            if line.startswith(REFRESH_METRIC + " "):
                return float(line.split()[1])
        return math.nan

    def heartbeat_outcomes(self) -> dict[str, int]:
        """Heartbeats as the coordinator counted them, by outcome (ok or a status code):
        tells errors the coordinator answered from ones the client or transport made."""
        out: dict[str, int] = {}
        for line in self._metrics_text().splitlines():
            if line.startswith(HEARTBEATS_METRIC + "{"):
                labels, value = line.rsplit(" ", 1)
                outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = int(float(value))
        return out

    def sample(self, phase: str) -> Sample:
        now = self._cpu_now()
        wall = max(now[0] - self._last[0], 1e-9)
        rss = 0.0
        with contextlib.suppress(psutil.Error):
            rss = self.coord.memory_info().rss / MiB
        used, dataset = self.redis_memory()
        s = Sample(
            t=round(now[0] - self.t0, 2),
            phase=phase,
            coordinator_rss_mib=rss,
            coordinator_cpu_pct=100.0 * (now[1] - self._last[1]) / wall,
            redis_cpu_pct=100.0 * (now[2] - self._last[2]) / wall,
            loadgen_cpu_pct=100.0 * max(now[3] - self._last[3], 0.0) / wall,
            redis_used_mib=used / MiB,
            redis_dataset_mib=dataset / MiB,
            refresh_seconds=self.refresh_seconds(),
            loadavg_1m=os.getloadavg()[0],
        )
        self._last = now
        self.samples.append(s)
        return s


def redis_client_for(data_dir: Path, redis_url: str | None) -> redis.Redis:
    """A client for the coordinator's Redis: --redis-url, or the embedded one's unix socket."""
    if redis_url:
        return redis.Redis.from_url(redis_url, socket_timeout=10)
    conf = data_dir / "redis" / "redis.conf"
    for line in conf.read_text().splitlines():
        if line.startswith("unixsocket "):
            return redis.Redis(unix_socket_path=line.split(" ", 1)[1].strip(), socket_timeout=10)
    raise RuntimeError(f"no unixsocket line in {conf}")


# --- the online check ------------------------------------------------------------------------


@dataclass
class OnlineCheck:
    online: int
    by_status: dict[str, int]
    list_devices_ms: float  # every page of ListDevices (the whole fleet), or nan if it failed
    full_list_error: str  # why the whole-fleet ListDevices failed, "" if it did not
    method: str


async def check_online(address: str, admin_token: str, ours: set[str]) -> OnlineCheck:
    """Count our devices by status via ListDevices: the whole fleet, else profile by profile."""
    md = (("authorization", f"Bearer {admin_token}"),)
    async with grpc.aio.insecure_channel(address, options=ADMIN_CHANNEL_OPTIONS) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        replies: list[Any] = []
        error = ""
        ms = math.nan
        t0 = time.perf_counter()
        try:
            token = ""
            while True:  # ListDevices is paged (issue 14): follow the pages
                reply = await admin.ListDevices(
                    admin_pb2.ListDevicesRequest(page_size=MAX_PAGE_SIZE, page_token=token),
                    metadata=md,
                    timeout=120,
                )
                replies.append(reply)
                token = reply.next_page_token
                if not token:
                    break
            ms = (time.perf_counter() - t0) * 1e3
            method = "paged ListDevices"
        except grpc.aio.AioRpcError as err:
            error = f"{err.code().name}: {str(err.details())[:160]}"
            replies.clear()
            for profile in sorted(CATALOG):
                replies.append(
                    await admin.ListDevices(
                        admin_pb2.ListDevicesRequest(profile=profile), metadata=md, timeout=120
                    )
                )
            method = "ListDevices per profile"
    status: Counter[str] = Counter()
    for reply in replies:
        for d in reply.devices:
            if d.id in ours:
                status[admin_pb2.DeviceStatus.Name(d.status)] += 1
    return OnlineCheck(
        online=status["DEVICE_STATUS_ONLINE"],
        by_status=dict(status),
        list_devices_ms=ms,
        full_list_error=error,
        method=method,
    )


# --- one soak --------------------------------------------------------------------------------


@dataclass
class SoakResult:
    devices: int
    workers: int
    channels_per_worker: int
    interval_seconds: float
    told_intervals: list[float]
    duration_seconds: float
    registered: int
    register_seconds: float
    register_rate: float
    register_p50_ms: float
    register_p99_ms: float
    heartbeat_calls: int
    heartbeat_ok_in_window: int
    heartbeat_rate: float
    heartbeat_target_rate: float
    heartbeat_p50_ms: float
    heartbeat_p99_ms: float
    heartbeat_max_ms: float
    errors: dict[str, int]
    error_samples: dict[str, str]
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    rss_slope_mib_per_min: float
    rss_slope_window_seconds: float
    redis_used_before_mib: float
    redis_used_registered_mib: float
    redis_used_end_mib: float
    redis_bytes_per_device: float
    redis_dataset_bytes_per_device: float
    idle_coordinator_cpu_pct: float
    hold_coordinator_cpu_pct: float
    hold_redis_cpu_pct: float
    hold_loadgen_cpu_pct: float
    refresh_seconds_median: float
    refresh_seconds_max: float
    online: OnlineCheck
    samples: list[Sample]
    loadavg_before: float
    loadavg_after: float
    coordinator_log_warnings: list[str] = field(default_factory=list)
    coordinator_heartbeat_outcomes: dict[str, int] = field(default_factory=dict)


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs; nan with fewer than two points."""
    if len(xs) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


class Soak:
    """Runs the phases; holds every process it starts so ``close`` can stop them all."""

    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.procs: list[Any] = []  # multiprocessing Process objects
        self.conns: list[Connection] = []
        self.coordinator: subprocess.Popen[bytes] | None = None

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.procs.clear()
        for c in self.conns:
            c.close()
        self.conns.clear()
        if self.coordinator is not None:
            stop_process(self.coordinator)
            self.coordinator = None

    def _receive(self, kind: str, sampler: Sampler, phase: str) -> dict[int, Any]:
        """Collect one ``kind`` message from every worker, sampling while waiting."""
        got: dict[int, Any] = {}
        pending = {c: i for i, c in enumerate(self.conns)}
        next_sample = time.perf_counter() + self.args.sample_every
        while pending:
            ready = wait(list(pending), timeout=max(0.0, next_sample - time.perf_counter()))
            for c in ready:
                assert isinstance(c, Connection)
                try:
                    msg = c.recv()
                except EOFError:
                    raise RuntimeError(f"load worker {pending[c]} died") from None
                if msg[0] == "error":
                    raise RuntimeError(f"load worker {msg[1]} failed:\n{msg[2]}")
                if msg[0] != kind:
                    raise RuntimeError(f"unexpected message {msg[0]!r} from worker {pending[c]}")
                got[pending.pop(c)] = msg[1]
            if time.perf_counter() >= next_sample:
                s = sampler.sample(phase)
                self.log(
                    f"{phase}: coordinator RSS {s.coordinator_rss_mib:.0f} MiB, CPU "
                    f"{s.coordinator_cpu_pct:.0f}%, redis {s.redis_used_mib:.1f} MiB, "
                    f"refresh {s.refresh_seconds:.2f}s, load {s.loadavg_1m:.1f}"
                )
                next_sample += self.args.sample_every
        return got

    def run(self) -> SoakResult:
        a = self.args
        load_before = os.getloadavg()[0]
        data_dir = self.base / "coordinator"
        shutil.rmtree(data_dir, ignore_errors=True)
        extra = [
            "--heartbeat-interval",
            str(a.interval),
            "--offline-after",
            str(max(15.0, 3 * a.interval)),
        ]
        if a.redis_url:
            extra += ["--redis-url", a.redis_url]
        self.coordinator, address = start_coordinator_process(data_dir, extra)
        info = json.loads((data_dir / "coordinator.json").read_text())
        enroll = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
        admin = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        sampler = Sampler(
            self.coordinator.pid, redis_client_for(data_dir, a.redis_url), info["metrics_address"]
        )
        self.log(
            f"coordinator pid {self.coordinator.pid} at {address}; starting {a.workers} workers"
        )

        ctx = mp.get_context("spawn")
        per_worker = max(1, a.concurrency // a.workers)
        for w in range(a.workers):
            parent_end, child_end = ctx.Pipe()
            spec = WorkerSpec(
                w, a.workers, a.devices, a.channels, per_worker, address, enroll, admin, a.interval
            )
            p = ctx.Process(target=worker_main, args=(spec, child_end), name=f"soak-load-{w}")
            p.daemon = True
            p.start()
            child_end.close()
            self.procs.append(p)
            self.conns.append(parent_end)
        sampler.workers = [psutil.Process(p.pid) for p in self.procs]
        # Before registration: the coordinator's empty-fleet baseline (its keys, Lua scripts).
        time.sleep(1.0)
        before = sampler.sample("start")
        self.log(f"registering {a.devices:,} devices ({a.concurrency} in flight)")
        reg = self._receive("registered", sampler, "register")
        regs: list[Registered] = [reg[i] for i in sorted(reg)]
        ours = {d for r in regs for d in r.device_ids}
        reg_secs = max(r.finished for r in regs) - min(r.started for r in regs)
        registered_mem = sampler.redis_memory()[0] / MiB
        self.log(
            f"registered {len(ours):,} in {reg_secs:.1f}s; idle {a.idle_seconds:g}s "
            "(no heartbeats: the cost of holding N records)"
        )
        idle_end = time.perf_counter() + a.idle_seconds
        while (left := idle_end - time.perf_counter()) > 0:
            time.sleep(min(a.sample_every, left))
            sampler.sample("idle")
        idle_samples = [s for s in sampler.samples if s.phase == "idle"]

        start = time.perf_counter() + 0.5
        end = start + a.duration
        for c in self.conns:
            c.send((start, end))
        self.log(f"holding heartbeats for {a.duration:g}s (target {len(ours) / a.interval:,.0f}/s)")
        held_by = self._receive("held", sampler, "hold")
        held: list[Held] = [held_by[i] for i in sorted(held_by)]
        end_sample = sampler.sample("end")
        outcomes = sampler.heartbeat_outcomes()
        online = asyncio.run(check_online(address, admin, ours))
        self.log(f"online {online.online:,}/{len(ours):,} ({online.method})")
        for p in self.procs:
            p.join(10)

        result = self._result(
            regs, held, ours, reg_secs, sampler, before, end_sample, registered_mem,
            idle_samples, online, start, end, load_before, data_dir,
        )  # fmt: skip
        result.coordinator_heartbeat_outcomes = outcomes
        return result

    def _result(
        self,
        regs: list[Registered],
        held: list[Held],
        ours: set[str],
        reg_secs: float,
        sampler: Sampler,
        before: Sample,
        end_sample: Sample,
        registered_mem: float,
        idle_samples: list[Sample],
        online: OnlineCheck,
        start: float,
        end: float,
        load_before: float,
        data_dir: Path,
    ) -> SoakResult:
        a = self.args
        reg_lat = sorted(x for r in regs for x in r.latencies)
        hb_lat = sorted(x for h in held for x in h.latencies)
        in_window = sum(1 for h in held for t in h.done_at if t <= end)
        errors: Counter[str] = Counter()
        samples_msg: dict[str, str] = {}
        parts: list[tuple[str, dict[str, int], dict[str, str]]] = [
            *(("Register", r.errors, r.error_samples) for r in regs),
            *(("Heartbeat", h.errors, h.error_samples) for h in held),
        ]
        for phase, errs, msgs in parts:
            for k, v in errs.items():
                errors[f"{phase} {k}"] += v
                samples_msg.setdefault(f"{phase} {k}", msgs.get(k, ""))
        fill_heartbeat_windows(sampler, held)
        hold = [s for s in sampler.samples if s.phase == "hold"]
        steady_from = start + a.interval - sampler.t0  # after every device has beaten once
        steady = [s for s in hold if s.t >= steady_from] or hold
        rss = [s.coordinator_rss_mib for s in sampler.samples]
        slope = linear_slope([s.t / 60.0 for s in steady], [s.coordinator_rss_mib for s in steady])
        refresh = sorted(
            s.refresh_seconds
            for s in sampler.samples
            if s.phase in ("idle", "hold") and not math.isnan(s.refresh_seconds)
        )
        told = sorted({t for h in held for t in h.told_intervals})
        n = len(ours)
        return SoakResult(
            devices=a.devices,
            workers=a.workers,
            channels_per_worker=a.channels,
            interval_seconds=a.interval,
            told_intervals=told,
            duration_seconds=a.duration,
            registered=n,
            register_seconds=reg_secs,
            register_rate=n / reg_secs if reg_secs > 0 else math.nan,
            register_p50_ms=percentile(reg_lat, 50) * 1e3,
            register_p99_ms=percentile(reg_lat, 99) * 1e3,
            heartbeat_calls=sum(h.calls for h in held),
            heartbeat_ok_in_window=in_window,
            heartbeat_rate=in_window / a.duration,
            heartbeat_target_rate=n / a.interval,
            heartbeat_p50_ms=percentile(hb_lat, 50) * 1e3,
            heartbeat_p99_ms=percentile(hb_lat, 99) * 1e3,
            heartbeat_max_ms=hb_lat[-1] * 1e3 if hb_lat else math.nan,
            errors=dict(errors),
            error_samples=samples_msg,
            rss_start_mib=before.coordinator_rss_mib,
            rss_peak_mib=max(rss),
            rss_end_mib=end_sample.coordinator_rss_mib,
            rss_slope_mib_per_min=slope,
            rss_slope_window_seconds=(steady[-1].t - steady[0].t) if steady else 0.0,
            redis_used_before_mib=before.redis_used_mib,
            redis_used_registered_mib=registered_mem,
            redis_used_end_mib=end_sample.redis_used_mib,
            redis_bytes_per_device=(
                (end_sample.redis_used_mib - before.redis_used_mib) * MiB / n if n else math.nan
            ),
            redis_dataset_bytes_per_device=(
                (end_sample.redis_dataset_mib - before.redis_dataset_mib) * MiB / n
                if n
                else math.nan
            ),
            idle_coordinator_cpu_pct=_mean([s.coordinator_cpu_pct for s in idle_samples]),
            hold_coordinator_cpu_pct=_mean([s.coordinator_cpu_pct for s in steady]),
            hold_redis_cpu_pct=_mean([s.redis_cpu_pct for s in steady]),
            hold_loadgen_cpu_pct=_mean([s.loadgen_cpu_pct for s in steady]),
            refresh_seconds_median=percentile(refresh, 50),
            refresh_seconds_max=refresh[-1] if refresh else math.nan,
            online=online,
            samples=sampler.samples,
            loadavg_before=load_before,
            loadavg_after=os.getloadavg()[0],
            coordinator_log_warnings=log_warnings(data_dir / "coordinator.log"),
        )


def fill_heartbeat_windows(sampler: Sampler, held: list[Held]) -> None:
    """Per sample: heartbeats completed since the previous one, per second, and their p99."""
    done = sorted(
        (t - sampler.t0, lat) for h in held for t, lat in zip(h.done_at, h.latencies, strict=True)
    )
    i = 0
    prev = 0.0
    for s in sampler.samples:
        window: list[float] = []
        while i < len(done) and done[i][0] <= s.t:
            window.append(done[i][1])
            i += 1
        s.heartbeats_per_s = len(window) / max(s.t - prev, 1e-9)
        s.heartbeat_p99_ms = percentile(sorted(window), 99) * 1e3
        prev = s.t


# --- output ----------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else (f"{v:.2f}" if v < 100 else f"{v:,.0f}")


def _f(v: float, fmt: str = ".1f") -> str:
    return "-" if math.isnan(v) else format(v, fmt)


def render_table(r: SoakResult, args: argparse.Namespace) -> str:
    o = r.online
    errs = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
    told = ", ".join(f"{t:g}" for t in r.told_intervals) or "-"
    hb_outcomes = (
        ", ".join(f"{k} {v:,}" for k, v in sorted(r.coordinator_heartbeat_outcomes.items())) or "-"
    )
    lines = [
        f"edgefleet {__version__} ({source_revision()}) soak - "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"grpcio {grpc.__version__}, {os.cpu_count()} CPUs, "
        f"{'redis at ' + redact(args.redis_url) if args.redis_url else 'embedded redis'}",
        f"load side: {r.workers} processes x {r.channels_per_worker} grpc.aio channels, "
        f"{args.concurrency} registrations in flight; heartbeat interval {r.interval_seconds:g} s "
        f"(told by the coordinator: {told}) for {r.duration_seconds:g} s",
        f"host load average (1 min) before / after: {r.loadavg_before:.2f} / "
        f"{r.loadavg_after:.2f} (other work on the box shares the 2 cores)",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| devices registered | {r.registered:,} / {r.devices:,} |",
        f"| registration | {r.register_rate:,.0f}/s ({r.register_seconds:.1f} s; "
        f"p50 {_ms(r.register_p50_ms)} ms, p99 {_ms(r.register_p99_ms)} ms) |",
        f"| hold | {r.duration_seconds:g} s |",
        f"| heartbeats/s achieved / target | {r.heartbeat_rate:,.0f} / "
        f"{r.heartbeat_target_rate:,.0f} ({r.heartbeat_ok_in_window:,} ok in window) |",
        f"| heartbeat latency p50 / p99 / max | {_ms(r.heartbeat_p50_ms)} / "
        f"{_ms(r.heartbeat_p99_ms)} / {_ms(r.heartbeat_max_ms)} ms |",
        f"| errors by code | {errs} |",
        f"| heartbeats counted by the coordinator | {hb_outcomes} |",
        f"| coordinator RSS start / peak / end | {r.rss_start_mib:.0f} / {r.rss_peak_mib:.0f} / "
        f"{r.rss_end_mib:.0f} MiB |",
        f"| coordinator RSS slope (steady hold, {r.rss_slope_window_seconds:.0f} s) | "
        f"{_f(r.rss_slope_mib_per_min, '+.2f')} MiB/min |",
        f"| Redis used_memory before / registered / end | {r.redis_used_before_mib:.1f} / "
        f"{r.redis_used_registered_mib:.1f} / {r.redis_used_end_mib:.1f} MiB |",
        f"| Redis memory per device: used_memory / dataset only | "
        f"{r.redis_bytes_per_device:,.0f} / {r.redis_dataset_bytes_per_device:,.0f} B |",
        f"| coordinator CPU idle (N records, no beats) / hold | "
        f"{_f(r.idle_coordinator_cpu_pct, '.0f')}% / {_f(r.hold_coordinator_cpu_pct, '.0f')}% |",
        f"| embedded Redis CPU / load processes CPU (hold) | {_f(r.hold_redis_cpu_pct, '.0f')}% / "
        f"{_f(r.hold_loadgen_cpu_pct, '.0f')}% |",
        f"| fleet metrics refresh (counts kept on write, every 5 s) median / max | "
        f"{_f(r.refresh_seconds_median, '.3f')} / {_f(r.refresh_seconds_max, '.3f')} s |",
        f"| online at end (admin ListDevices) | {o.online:,} / {r.registered:,} "
        f"({100.0 * o.online / max(r.registered, 1):.2f}%) |",
        f"| whole-fleet ListDevices | {o.full_list_error or _ms(o.list_devices_ms) + ' ms'} |",
        "",
        "(CPU is % of one core. Latency is client-observed.)",
        "",
        "| t s | phase | heartbeats/s | hb p99 ms | coord RSS MiB | coord CPU % | Redis CPU % "
        "| load procs CPU % | Redis used MiB | last refresh s | load 1m |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r.samples:
        lines.append(
            f"| {s.t:.0f} | {s.phase} | {s.heartbeats_per_s:,.0f} | {_ms(s.heartbeat_p99_ms)} "
            f"| {s.coordinator_rss_mib:.0f} | "
            f"{s.coordinator_cpu_pct:.0f} | {s.redis_cpu_pct:.0f} | {s.loadgen_cpu_pct:.0f} | "
            f"{s.redis_used_mib:.1f} | {_f(s.refresh_seconds, '.3f')} | {s.loadavg_1m:.1f} |"
        )
    for code, msg in r.error_samples.items():
        lines.append(f"first {code}: {msg}")
    if o.by_status.keys() - {"DEVICE_STATUS_ONLINE"}:
        lines.append(f"status at end: {o.by_status}")
    if r.coordinator_log_warnings:
        lines.append("coordinator log warnings:")
        lines += [f"  {w}" for w in r.coordinator_log_warnings]
    return "\n".join(lines)


def to_json(r: SoakResult, args: argparse.Namespace, wall: float) -> str:
    def clean(obj: Any) -> Any:
        if isinstance(obj, float):
            return None if math.isnan(obj) else round(obj, 4)
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return json.dumps(
        clean(
            {
                "benchmark": "soak",
                "edgefleet": __version__,
                "revision": source_revision(),
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "cpus": os.cpu_count(),
                "redis": "url" if args.redis_url else "embedded",
                "concurrency": args.concurrency,
                "wall_seconds": wall,
                "result": asdict(r),
            }
        ),
        indent=2,
    )


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Hold N simulated devices (several load processes) against one real "
        "coordinator for a bounded time; report rates, latency, coordinator RSS and Redis memory."
    )
    p.add_argument("--devices", type=int, default=10_000, help="fleet size")
    p.add_argument("--duration", type=float, default=120.0, help="seconds to hold heartbeats")
    p.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="heartbeat interval the coordinator tells devices (devices follow what it tells)",
    )
    p.add_argument("--workers", type=int, default=3, help="load processes")
    p.add_argument("--channels", type=int, default=4, help="gRPC channels per load process")
    p.add_argument("--concurrency", type=int, default=64, help="registrations in flight, total")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="registered, no heartbeats")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    p.add_argument("--data-dir", type=Path, default=None, help="base dir (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data dir (coordinator log)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.devices < 1 or args.workers < 1 or args.channels < 1 or args.concurrency < 1:
        p.error("--devices, --workers, --channels and --concurrency must be positive")
    if args.duration <= 0 or args.interval <= 0 or args.sample_every <= 0:
        p.error("--duration, --interval and --sample-every must be positive")
    if args.idle_seconds < 0:
        p.error("--idle-seconds must be >= 0")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through the same cleanup path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    own_base = args.data_dir is None
    base: Path = Path(tempfile.mkdtemp(prefix="ef-soak-")) if own_base else args.data_dir
    base.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, base)
    t0 = time.perf_counter()
    try:
        result = soak.run()
    except KeyboardInterrupt:
        print("interrupted; stopping the load processes and the coordinator", file=sys.stderr)
        return 130
    finally:
        soak.close()
        if own_base and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - t0
    if args.json:
        print(to_json(result, args, wall))
    else:
        print(render_table(result, args))
        print(f"wall time: {wall:.1f} s")
    if args.keep:
        print(f"data kept in {base}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

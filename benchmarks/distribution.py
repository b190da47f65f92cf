"""Distribution: what delivering a variant costs, per byte and per fleet rollout.

``python -m benchmarks.distribution [--devices 100] [--json]`` answers two questions.

1. **Per byte**: how much slower is our artifact path than moving the same bytes on local disk?
   This part is ``benchmarks/artifacts.py`` run as is (its own coordinator and a
   ``--artifact-mb`` bundle): a plain ``shutil.copyfile`` of the archive is the floor; the
   loopback ``DownloadArtifact`` stream, and the agent's whole fetch (stream + sha256 + safe
   unpack + signature/per-file verification + rename), are reported as ratios to it.

2. **Per rollout**: how long does it take to bring ``--devices`` devices to a new variant, and
   where does the time go? For each strategy (``all``, and ``waves`` 10 % -> 50 % -> 100 %)
   a fresh coordinator process (embedded Redis, ``--heartbeat-interval 1 --rollout-interval
   0.5``) gets a model with real signed bundles (``tests.fleetkit.make_model``: synthetic
   weights, real bundle format; selection picks its ~150 KB int8 or ~600 KB fp32 variant per
   device), and one load process runs every device with grpc.aio over its own connection,
   through the agent's own code: heartbeat with active/previous/failed variant, then one
   ``Reconciler.reconcile`` pass over an ``ArtifactCache`` (the same order, wait and interval
   as ``agent/edgefleet/agent/session.py``). Then ``CreateRollout`` through the admin API, and the clock runs
   until the rollout reads ``succeeded``. Reported: bytes the devices received, wall time to
   ``succeeded`` (it includes the heartbeat polling, the controller's passes and each wave's
   ``--soak``, which is the point: that is what an operator waits for), and per-device
   activation latency from the heartbeat that first carried the new desired state to the
   reconcile pass that made it active (download, verify, unpack, atomic swap).

Why that baseline: the same activations done with no network and no coordinator - copy each
device's archive into its cache, sha256 it, unpack, verify the bundle and swap ``current``, with
the agent's ``ArtifactCache`` methods - is the floor of the work itself. The ``baseline`` column
runs them all at once, the file work in threads as the agents' is (the floor of the fleet's wall
time on this box: its fsyncs share journal commits); the line under the table adds them one after
another, and one activation alone, to compare with the devices' activation latency. ``ratio`` is
wall time over the concurrent baseline: how much the control loop (heartbeat polling, controller
passes, soak, waves) and the transport add on top of the bytes and the cryptography.

The load devices send no telemetry, so the rollout gates judge activation only (no error
rate or latency reports to fail on). Coordinators are stopped with SIGTERM and temp dirs
removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
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

from benchmarks import artifacts as artifact_bench
from edgefleet.agent.artifacts import ArtifactCache, DownloadResult
from edgefleet.agent.backoff import Backoff
from edgefleet.agent.desired import Desired
from edgefleet.agent.reconcile import Reconciler, ReconcileStatus
from edgefleet.agent.session import RECONCILE_WAIT_SECONDS, RPC_TIMEOUT_SECONDS, desired_from_proto
from edgefleet.agent.transport import CHANNEL_OPTIONS as AGENT_CHANNEL_OPTIONS
from edgefleet.archive import pack_directory
from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.perf import device_benchmark
from edgefleet.v1 import admin_pb2, artifact_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.variant_store import VariantStore
from edgefleet.version import __version__
from edgefleet.wire import profile_to_proto

MODEL = "digits"
LABELS = {"bench": "distribution"}
# Each simulated device gets its own TCP connection, as separate devices would (without a
# channel-local subchannel pool gRPC core would share one connection between all channels).
CHANNEL_OPTIONS = [*AGENT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
COORDINATOR_ARGS = ["--heartbeat-interval", "1", "--rollout-interval", "0.5"]
# Non-MCU and MCU classes: selection gives the first the fp32 variant, the MCU the int8 one.
DEFAULT_PROFILES = "phone-flagship,phone-budget,rpi4,rpi-zero2w,jetson-nano,cortex-m7"
POLL_SECONDS = 0.1


def make_model(data_dir: Path) -> dict[str, str]:
    """``tests.fleetkit.make_model``: signed real-format bundles, recipe -> variant id.

    Imported when called: ``tests/`` is outside mypy's files, and a static import would make
    ``mypy benchmarks`` type-check the test helpers too.
    """
    fleetkit = importlib.import_module("tests.fleetkit")
    ids: dict[str, str] = fleetkit.make_model(data_dir)
    return ids


# --- one simulated device, run by the agent's own cache and reconciler ----------------------


@dataclass
class SimAgent:
    index: int
    name: str
    profile: str
    state_dir: Path
    channel: grpc.aio.Channel
    device: Any  # DeviceServiceStub (the generated stubs are untyped)
    artifacts: Any  # ArtifactServiceStub
    cache: ArtifactCache
    reconciler: Reconciler
    device_id: str = ""
    credential: str = ""
    keys: tuple[str, ...] = ()
    sequence: int = 0
    status: ReconcileStatus = field(default_factory=ReconcileStatus)
    desired: Desired = field(default_factory=Desired)
    seen_at: dict[str, float] = field(default_factory=dict)  # variant -> first desired
    active_at: dict[str, float] = field(default_factory=dict)  # variant -> first active
    bytes_received: int = 0
    downloads: int = 0
    _counted: DownloadResult | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credential}"),)

    async def register(self, enroll_token: str) -> None:
        """Enrol as ``AgentSession._register`` does, retrying UNAVAILABLE with its backoff (a
        fleet connecting at once can overflow the listen backlog; real agents retry too)."""
        profile = get_profile(self.profile)
        bench = device_benchmark(profile)
        request = device_pb2.RegisterRequest(
            instance_key=f"bench-distribution-{self.index:05d}-{time.time_ns()}",
            name=self.name,
            profile=profile_to_proto(profile),
            agent_version=__version__,
            labels=LABELS,
            benchmark=device_pb2.DeviceBenchmark(
                macs_per_second=bench.macs_per_second, method=bench.method
            ),
        )
        backoff = Backoff(cap=2.0)
        while True:
            try:
                reply = await self.device.Register(
                    request,
                    metadata=(("authorization", f"Bearer {enroll_token}"),),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
                break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or backoff.attempt >= 10:
                    raise
                await asyncio.sleep(backoff.next_delay())
        self.device_id, self.credential = reply.device_id, reply.credential
        self.keys = tuple(reply.bundle_public_keys)
        self.cache.set_trusted_keys(self.keys)
        self.reconciler.device_id = reply.device_id

    async def heartbeat(self, state: device_pb2.AgentState) -> float:
        """One heartbeat as ``AgentSession._heartbeat`` sends it; returns the told interval."""
        self.sequence += 1
        reply = await self.device.Heartbeat(
            device_pb2.HeartbeatRequest(
                device_id=self.device_id,
                state=state,
                sequence=self.sequence,
                active_variant=self.status.active_variant,
                previous_variant=self.status.previous_variant,
                failed_variant=self.status.failed_variant,
                failure_reason=self.status.failure_reason,
            ),
            metadata=self.metadata,
            timeout=RPC_TIMEOUT_SECONDS,
        )
        self.desired = desired_from_proto(reply.desired)  # as AgentSession converts it
        target = reply.desired.variant_id
        if target and target != self.status.active_variant and target not in self.seen_at:
            self.seen_at[target] = time.monotonic()
        return float(reply.heartbeat_interval_seconds or 1.0)

    async def reconcile(self) -> None:
        """One pass as ``AgentSession._reconcile`` makes it, timing the activation."""
        self.status = await self.reconciler.reconcile(self.desired, self.artifacts, self.metadata)
        done = self.reconciler.last_download
        if done is not None and done is not self._counted:
            self._counted = done
            self.bytes_received += done.bytes_received
            self.downloads += 1
        active = self.status.active_variant
        if active and active not in self.active_at:
            self.active_at[active] = time.monotonic()

    async def run(self, stop: asyncio.Event, first_delay: float) -> None:
        """The session loop: heartbeat, reconcile, wait the told interval (errors retried)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=first_delay)
        state = device_pb2.AGENT_STATE_STARTING
        while not stop.is_set():
            delay = 1.0
            try:
                delay = await self.heartbeat(state)
                state = device_pb2.AGENT_STATE_READY
                await self.reconcile()
            except grpc.aio.AioRpcError as err:
                print(f"{self.name}: {err.code().name} {err.details()}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        await self.reconciler.aclose()


def make_agents(address: str, root: Path, count: int, profiles: Sequence[str]) -> list[SimAgent]:
    agents = []
    for i in range(count):
        state_dir = root / f"device-{i:05d}"
        cache = ArtifactCache(state_dir)
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        agents.append(
            SimAgent(
                index=i,
                name=f"dist-{i:05d}",
                profile=profiles[i % len(profiles)],
                state_dir=state_dir,
                channel=channel,
                device=device_pb2_grpc.DeviceServiceStub(channel),
                artifacts=artifact_pb2_grpc.ArtifactServiceStub(channel),
                cache=cache,
                reconciler=Reconciler(cache, wait_seconds=RECONCILE_WAIT_SECONDS),
            )
        )
    return agents


# --- the rollout, timed ---------------------------------------------------------------------


@dataclass
class RolloutResult:
    strategy: str
    devices: int
    skipped: int
    state: str
    message: str
    waves: list[float]
    variants: dict[str, int]  # recipe -> devices
    bytes_served: int
    downloads: int
    wall_seconds: float
    activation_p50_seconds: float
    activation_p99_seconds: float
    create_to_active_p50_seconds: float
    create_to_active_p99_seconds: float
    baseline_seconds: float  # the same activations, local and concurrent
    ratio: float  # wall_seconds / baseline_seconds
    baseline_sequential_seconds: float = 0.0  # ... one after another
    local_activation_p50_seconds: float = 0.0  # one local activation alone
    local_activation_p99_seconds: float = 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def wait_rollout(
    client: AdminClient, rollout_id: str, timeout: float
) -> tuple[admin_pb2.Rollout, float]:
    """Poll until the rollout is final; return it and the monotonic time it was seen final."""
    deadline = time.monotonic() + timeout
    while True:
        rollout = await asyncio.to_thread(client.get_rollout, rollout_id)
        if rollout.state in ("succeeded", "rolled_back"):
            return rollout, time.monotonic()
        if time.monotonic() > deadline:
            raise AdminClientError(f"rollout {rollout_id} still {rollout.state} after {timeout}s")
        await asyncio.sleep(POLL_SECONDS)


async def fleet_rollout(
    args: argparse.Namespace, strategy: str, address: str, data_dir: Path, work: Path
) -> tuple[RolloutResult, list[SimAgent], admin_pb2.Rollout]:
    enroll = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
    admin = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    agents = make_agents(address, work / "agents", args.devices, args.profiles)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(a.register(enroll) for a in agents))
        spread = 1.0 / len(agents)  # first heartbeats spread over one interval, as in a fleet
        tasks = [asyncio.create_task(a.run(stop, i * spread)) for i, a in enumerate(agents)]
        while any(a.sequence == 0 for a in agents):  # every device has reported once
            await asyncio.sleep(POLL_SECONDS)
        with AdminClient(address, admin) as client:
            request = admin_pb2.CreateRolloutRequest(
                model=MODEL,
                selector="all",
                strategy=strategy,
                gate=admin_pb2.RolloutGate(  # scripted devices serve no traffic
                    soak_seconds=args.soak, wave_timeout_seconds=args.timeout, min_inferences=0
                ),
            )
            if strategy == "waves":
                request.waves.extend(args.waves)
            started = time.monotonic()
            created = await asyncio.to_thread(client.create_rollout, request)
            rollout, finished = await wait_rollout(client, created.id, args.timeout)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a in agents:
            await a.channel.close()
    wall = finished - started
    planned = {d.device_id: d for d in rollout.devices}
    latencies, since_create = [], []
    for a in agents:
        d = planned.get(a.device_id)
        if d is None or d.variant_id not in a.active_at:
            continue
        since_create.append(a.active_at[d.variant_id] - started)
        if d.variant_id in a.seen_at:
            latencies.append(a.active_at[d.variant_id] - a.seen_at[d.variant_id])
    recipes: dict[str, int] = {}
    for d in rollout.devices:
        recipes[d.recipe] = recipes.get(d.recipe, 0) + 1
    result = RolloutResult(
        strategy=strategy,
        devices=len(rollout.devices),
        skipped=len(rollout.skipped),
        state=rollout.state,
        message=rollout.message,
        waves=list(rollout.waves),
        variants=recipes,
        bytes_served=sum(a.bytes_received for a in agents),
        downloads=sum(a.downloads for a in agents),
        wall_seconds=wall,
        activation_p50_seconds=percentile(latencies, 50),
        activation_p99_seconds=percentile(latencies, 99),
        create_to_active_p50_seconds=percentile(since_create, 50),
        create_to_active_p99_seconds=percentile(since_create, 99),
        baseline_seconds=0.0,
        ratio=0.0,
    )
    return result, agents, rollout


async def local_baseline(
    data_dir: Path, rollout: admin_pb2.Rollout, keys: Sequence[str], work: Path, concurrent: bool
) -> tuple[float, list[float]]:
    """The same activations with no network: copy, sha256, unpack, verify, swap - per device.

    With ``concurrent`` all devices run at once, their file work in threads as the agent's is
    (the floor of the fleet's wall time on this box); otherwise one after another (the cost of
    one activation alone). Returns the total seconds and each activation's seconds.
    """
    store = VariantStore(data_dir)
    archives: dict[str, tuple[Path, str]] = {}
    for vid in {d.variant_id for d in rollout.devices}:
        path = work / f"{vid}.tar"
        with path.open("wb") as out:
            info = pack_directory(store.variants_dir / vid, out)
        archives[vid] = (path, info.sha256)
    tag = "concurrent" if concurrent else "sequential"

    async def activate(i: int, variant_id: str) -> float:
        t = time.perf_counter()
        archive, sha = archives[variant_id]
        cache = ArtifactCache(work / f"{tag}-{i:05d}", keys)
        part = cache.downloads_dir / f"{variant_id}.part"
        await asyncio.to_thread(shutil.copyfile, archive, part)
        await cache._verify_archive(variant_id, sha)
        await asyncio.to_thread(cache._install, variant_id)
        cache.activate(variant_id)
        if cache.current() != variant_id:
            raise AssertionError(f"baseline activation of {variant_id[:12]} failed")
        return time.perf_counter() - t

    start = time.perf_counter()
    if concurrent:
        each = await asyncio.gather(
            *(activate(i, d.variant_id) for i, d in enumerate(rollout.devices))
        )
    else:
        each = [await activate(i, d.variant_id) for i, d in enumerate(rollout.devices)]
    return time.perf_counter() - start, list(each)


_live: list[tuple[subprocess.Popen[bytes], Path]] = []  # coordinators and their data dirs


def stop_coordinator(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """SIGTERM the coordinator; then make sure its embedded Redis went with it.

    A coordinator stopped in the middle of a rollout can take long enough that its Redis is
    still saving when the data dir is removed - and Redis refuses to exit when that save fails.
    The server's own pidfile names it; it is killed only if its command line is this data dir's.
    """
    stop_process(proc)
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        redis = psutil.Process(int((data_dir / "redis" / "redis.pid").read_text()))
        if str(data_dir) in " ".join(redis.cmdline()):
            redis.kill()
            redis.wait(timeout=5)


def run_strategy(args: argparse.Namespace, strategy: str, base: Path) -> RolloutResult:
    """A fresh coordinator, model and fleet for one strategy (nothing cached from the other)."""
    work = base / strategy
    data_dir = work / "coordinator"
    make_model(data_dir)
    proc, address = start_coordinator_process(data_dir, COORDINATOR_ARGS)
    _live.append((proc, data_dir))
    try:
        result, agents, rollout = asyncio.run(
            fleet_rollout(args, strategy, address, data_dir, work)
        )
    finally:
        stop_coordinator(proc, data_dir)
        _live.remove((proc, data_dir))
    shutil.rmtree(work / "agents", ignore_errors=True)
    baseline_dir = work / "baseline"
    baseline_dir.mkdir()
    keys = agents[0].keys
    result.baseline_seconds, _ = asyncio.run(
        local_baseline(data_dir, rollout, keys, baseline_dir, concurrent=True)
    )
    result.ratio = result.wall_seconds / result.baseline_seconds
    result.baseline_sequential_seconds, alone = asyncio.run(
        local_baseline(data_dir, rollout, keys, baseline_dir, concurrent=False)
    )
    result.local_activation_p50_seconds = percentile(alone, 50)
    result.local_activation_p99_seconds = percentile(alone, 99)
    shutil.rmtree(work, ignore_errors=True)
    return result


# --- artifact throughput (benchmarks/artifacts.py, reused as is) ----------------------------


def artifact_throughput(mb: float, repeat: int) -> list[dict[str, Any]]:
    """Run ``benchmarks.artifacts`` and read its table back as rows.

    Its measurement lives in its ``main`` (one coordinator, one bundle, median of runs); it
    prints a markdown table, which is parsed here rather than the measurement duplicated.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = artifact_bench.main(["--mb", str(mb), "--repeat", str(repeat)])
    if code != 0:
        raise RuntimeError(f"benchmarks.artifacts exited with {code}")
    rows = []
    for line in out.getvalue().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not line.startswith("| ") or cells[0] == "path":
            continue
        rows.append(
            {
                "path": cells[0],
                "mib": float(cells[1]),
                "seconds": float(cells[2]),
                "mib_per_second": float(cells[3].replace(",", "")),
                "vs_file_copy": float(cells[4].rstrip("x")),
            }
        )
    if len(rows) < 3:
        raise RuntimeError(f"unexpected benchmarks.artifacts output:\n{out.getvalue()}")
    return rows


# --- output ----------------------------------------------------------------------------------


def print_tables(
    throughput: list[dict[str, Any]], results: list[RolloutResult], args: argparse.Namespace
) -> None:
    print(f"artifact throughput: {args.artifact_mb:g} MiB bundle, median of {args.repeat} runs")
    print("| path | MiB/s | seconds | vs file copy |")
    print("|---|---:|---:|---:|")
    for row in throughput:
        print(
            f"| {row['path']} | {row['mib_per_second']:,.0f} | {row['seconds']:.3f} "
            f"| {row['vs_file_copy']:.1f}x |"
        )
    print()
    waves = ",".join(f"{w:g}" for w in args.waves)
    print(
        f"rollout to {args.devices} simulated devices ({', '.join(sorted(set(args.profiles)))}); "
        f"heartbeat 1 s, controller 0.5 s, soak {args.soak:g} s per wave, waves {waves}"
    )
    print(
        "| strategy | devices | total bytes | wall to succeeded s | activation p50 s "
        "| activation p99 s | baseline s | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        name = r.strategy if r.state == "succeeded" else f"{r.strategy} ({r.state})"
        print(
            f"| {name} | {r.devices} | {r.bytes_served:,} | {r.wall_seconds:.2f} "
            f"| {r.activation_p50_seconds:.3f} | {r.activation_p99_seconds:.3f} "
            f"| {r.baseline_seconds:.3f} | {r.ratio:.0f}x |"
        )
    for r in results:
        mix = ", ".join(f"{n} x {recipe}" for recipe, n in sorted(r.variants.items()))
        print(
            f"  {r.strategy}: {mix}; {r.downloads} downloads; rollout created -> device active "
            f"p50 {r.create_to_active_p50_seconds:.2f} s, p99 {r.create_to_active_p99_seconds:.2f}"
            f" s; local baseline one after another {r.baseline_sequential_seconds:.3f} s "
            f"(one activation p50 {r.local_activation_p50_seconds:.3f} s, "
            f"p99 {r.local_activation_p99_seconds:.3f} s)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument(
        "--profiles", default=DEFAULT_PROFILES, help="catalog profiles, assigned round-robin"
    )
    parser.add_argument("--strategies", default="all,waves", help="comma list of all|waves")
    parser.add_argument("--waves", default="0.1,0.5,1", help="fractions for the waves strategy")
    parser.add_argument("--soak", type=float, default=1.0, help="soak seconds per wave (> 0)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-rollout limit")
    parser.add_argument("--artifact-mb", type=float, default=32.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    args.profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    for p in args.profiles:
        get_profile(p)  # unknown names fail here, before anything starts
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.waves = [float(w) for w in args.waves.split(",")]
    if args.devices < 1 or args.soak <= 0:
        parser.error("--devices must be >= 1 and --soak > 0 (0 would mean the 30 s default)")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through the same cleanup path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="bench-distribution-"))
    try:
        throughput = artifact_throughput(args.artifact_mb, args.repeat)
        results = [run_strategy(args, s, base) for s in args.strategies]
    except KeyboardInterrupt:
        print("interrupted; stopping the coordinator", file=sys.stderr)
        return 130
    finally:
        for proc, data_dir in list(_live):
            stop_coordinator(proc, data_dir)
        shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - t0
    if args.json:
        doc = {
            "artifact_throughput": throughput,
            "rollouts": [asdict(r) for r in results],
            "devices": args.devices,
            "profiles": args.profiles,
            "soak_seconds": args.soak,
            "benchmark_wall_seconds": wall,
        }
        print(json.dumps(doc, indent=2))
    else:
        print_tables(throughput, results, args)
        print(f"\nbenchmark wall time {wall:.1f} s")
    return 0 if all(r.state == "succeeded" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

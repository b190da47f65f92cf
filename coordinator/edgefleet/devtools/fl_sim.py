"""Our ServerApp and ClientApp on Flower's Simulation Engine (Ray): thousands of virtual devices.

Why this exists: a loopback federation (:mod:`edgefleet.devtools.fl_local`) costs two processes
per device, so a 2-core box tops out at a few dozen. Flower's Simulation Engine runs the same
``ClientApp`` for every virtual SuperNode inside a small pool of Ray actors (one per CPU given),
and the ``ServerApp`` in a thread of this process, so 1,000 devices cost what two do -- plus
their messages.

What is simulated, and how it reaches the unchanged apps:

* **The device.** A real agent writes its SuperNode's ``node_config`` (device id, profile,
  RAM, battery, labels, where its shard is: :func:`edgefleet.agent.fl.supernode.node_config_for`).
  A virtual SuperNode's ``node_config`` holds only Flower's ``partition-id``, so
  :class:`SimulatedClientApp` merges in the node_config :func:`plan_fleet` wrote for that
  partition, then calls the agent's ClientApp -- whose ``query`` then reports the virtual
  device's facts, and the ServerApp selects on them exactly as on a fleet (``--select``, the
  RAM budget, HeteroFL widths). No state dir is needed: Flower keeps each node's context
  (the update codec's residual) between messages in simulation as a SuperNode does.
* **The mix.** Profiles are dealt from the catalog by weight (phones, Pis, a Jetson, MCUs);
  devices of a battery-powered profile get a seeded battery level, mains devices report none.
* **The data.** Non-IID by group, as real fleets are (a site, a user population): the
  digits training split is cut into ``groups`` label-skewed parts
  (:func:`edgefleet.fl.partition.make_shards`, Dirichlet ``alpha``, a little per-group sensor
  noise) and each device draws its local train/held-out rows from its group's part. With
  1,000 devices on 1,078 digits rows, devices of one group share rows: the point is the
  system's behaviour at scale, not a dataset of that size.

Why the ServerApp is wrapped: ``flwr.simulation.run_simulation`` takes no run config, so
:func:`simulation_server_app` hands the run's :class:`RunSettings` straight to
:func:`edgefleet.flower.serverapp.run_rounds` -- the whole body of our ServerApp's ``main``.
Why this lives in ``devtools``: it joins the agent's ClientApp to the coordinator's ServerApp,
and only dev tools may import both sides (the import contracts in ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.catalog import UnknownProfileError, get_profile
from edgefleet.fl.contract import Node
from edgefleet.fl.partition import Shard, make_shards, save_shard
from edgefleet.flower.run_settings import RunSettings

__all__ = [
    "DEFAULT_MIX",
    "MAX_DEVICES",
    "SimOptions",
    "SimulatedClientApp",
    "TreeRss",
    "VirtualDevice",
    "parse_mix",
    "plan_fleet",
    "run_simulation",
    "simulation_server_app",
    "write_fleet",
]

#: A fleet as a product might see it: mostly phones and Pis, a quarter microcontrollers.
DEFAULT_MIX = (
    "phone-budget:30,phone-flagship:10,rpi4:15,rpi-zero2w:10,rpi3:5,jetson-nano:5,"
    "esp32-s3:10,stm32h743:10,nucleo-l4r5zi:5"
)
#: Past this, one Flower in-memory state and one progress record per run grow unwieldy; and
#: a 2-core box needs minutes per round.
MAX_DEVICES = 10_000
#: battery-powered devices report a level in this range (percent)
BATTERY_RANGE = (5.0, 100.0)
FLEET_FILE = "fleet.json"
log = logging.getLogger(__name__)
#: Ray's start-up deadlines, stretched for a loaded box: at its defaults the raylet aborted
#: ("Timed out waiting for file .../metrics_agent_port") when its metrics agent took over
#: 30 s to start at a load average of 50 on 2 cores. Also: Ray's accelerator env override
#: warning off (no GPUs here).
RAY_ENV = {
    "RAY_agent_register_timeout_ms": "600000",
    "RAY_worker_register_timeout_seconds": "600",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


@dataclass(frozen=True)
class SimOptions:
    """One simulated federated run (the ``edgefleet train simulate`` options)."""

    devices: int = 100
    rounds: int = 3
    #: fraction of the selected devices that train each round
    fraction: float = 0.1
    strategy: str = "heterofl"
    select: str = ""
    mix: str = DEFAULT_MIX
    groups: int = 20
    alpha: float = 0.5
    #: local training rows per device (held-out rows: a quarter of it, at least one)
    samples: int = 32
    #: CPUs Ray may use; one ClientApp actor per CPU
    cpus: int = 2
    seed: int = 0
    arch_config: str = ""
    lr: float = 0.1
    local_epochs: int = 5
    batch_size: int = 16
    round_timeout: float = 600.0
    final_evaluate: bool = False

    def check(self) -> None:
        """Raise ``ValueError`` (one line) on an option out of range."""
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"--devices must be 1..{MAX_DEVICES}, got {self.devices}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 1 <= self.groups <= self.devices:
            raise ValueError(f"--groups must be 1..{self.devices} (the device count)")
        if self.alpha <= 0:
            raise ValueError(f"--alpha must be > 0, got {self.alpha}")
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        cores = os.cpu_count() or 1
        if not 1 <= self.cpus <= cores:
            raise ValueError(f"--cpus must be 1..{cores} (this machine's cores)")
        parse_mix(self.mix)
        self.settings(Path("."))  # the strategy, selector and codec checks of a real run

    def settings(self, root: Path) -> RunSettings:
        """The ServerApp's run settings for a fleet written under ``root``."""
        return RunSettings.from_run_config(
            {
                "num-rounds": self.rounds, "strategy": self.strategy, "min-devices": 1,
                "select": self.select, "arch": "mlp", "arch-config": self.arch_config,
                "test-path": str(root / "test.npz"), "out-dir": str(root / "run"),
                "lr": self.lr, "local-epochs": self.local_epochs,
                "batch-size": self.batch_size, "fraction-train": self.fraction,
                "round-timeout": self.round_timeout,
                "node-wait-timeout": max(60.0, self.devices * 0.5),
                "final-evaluate": self.final_evaluate, "seed": self.seed,
            }
        )  # fmt: skip


@dataclass(frozen=True)
class VirtualDevice:
    """What one virtual SuperNode stands for (its node_config, once its shard is written)."""

    partition: int
    device: str
    profile: str
    ram: int
    battery: float | None
    group: int
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_mix(text: str) -> list[tuple[str, float]]:
    """``"rpi4:3,esp32-s3:1"`` (weights; a bare name weighs 1) as catalog profiles."""
    mix: list[tuple[str, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            get_profile(name)
        except UnknownProfileError as exc:
            raise ValueError(f"--mix: {exc}") from None
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--mix: weight of {name!r} is not a number: {weight!r}") from None
        if w <= 0:
            raise ValueError(f"--mix: weight of {name!r} must be > 0, got {weight}")
        mix.append((name, w))
    if not mix:
        raise ValueError("--mix names no profile")
    return mix


def _deal(n: int, weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """``n`` indices into ``weights``, each as often as its share (largest remainder), shuffled:
    exact proportions at any ``n``, not a sample's."""
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * n
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    dealt = np.repeat(np.arange(len(weights)), counts)
    return [int(i) for i in rng.permutation(dealt)]


def plan_fleet(opts: SimOptions) -> list[VirtualDevice]:
    """Every virtual device's profile, battery and group; a pure function of the options."""
    rng = np.random.default_rng([opts.seed, 7])
    mix = parse_mix(opts.mix)
    kinds = _deal(opts.devices, [w for _, w in mix], rng)
    groups = _deal(opts.devices, [1.0] * opts.groups, rng)
    fleet = []
    for i, (kind, group) in enumerate(zip(kinds, groups, strict=True)):
        profile = get_profile(mix[kind][0])
        battery = round(float(rng.uniform(*BATTERY_RANGE)), 1) if profile.battery_mah > 0 else None
        labels = {"group": f"g{group:03d}", "class": profile.device_class}
        dev = VirtualDevice(
            i, f"vdev-{i:05d}", profile.name, profile.ram_bytes, battery, group, labels
        )
        fleet.append(dev)
    return fleet


def _device_shard(group: Shard, samples: int, rng: np.random.Generator) -> Shard:
    """A device's rows, drawn without replacement from its group's part."""
    n_train = min(samples, len(group.y_train))
    n_eval = min(max(1, samples // 4), len(group.y_eval))
    tr = rng.choice(len(group.y_train), n_train, replace=False)
    ev = rng.choice(len(group.y_eval), n_eval, replace=False)
    return Shard(group.x_train[tr], group.y_train[tr], group.x_eval[ev], group.y_eval[ev])


def write_fleet(root: Path, opts: SimOptions) -> list[VirtualDevice]:
    """Shards, the server's test set and the node_config table under ``root``."""
    from edgefleet.modelops.data import load_dataset

    fleet = plan_fleet(opts)
    ds = load_dataset("digits")
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "test.npz", x=ds.x_test, y=ds.y_test)
    parts = make_shards(
        ds.x_train, ds.y_train, opts.groups, alpha=opts.alpha, seed=opts.seed, noise=0.05
    )
    table: dict[str, dict[str, object]] = {}
    for dev in fleet:
        rng = np.random.default_rng([opts.seed, dev.partition, 11])
        path = save_shard(
            _device_shard(parts[dev.group], opts.samples, rng),
            root / "data" / f"{dev.device}.npz",
        )
        table[str(dev.partition)] = {
            **node_config_for(
                dev.device, dev.profile, dev.ram, str(path), battery=dev.battery,
                labels=dev.labels, partition_id=dev.partition,
            ),
            Node.NUM_PARTITIONS: opts.devices,
        }  # fmt: skip
    (root / FLEET_FILE).write_text(json.dumps(table))
    return fleet


@functools.lru_cache(maxsize=4)
def _fleet_table(path: str) -> dict[str, dict[str, object]]:
    """The node_config table, read once per Ray actor process (not once per message)."""
    table: dict[str, dict[str, object]] = json.loads(Path(path).read_text())
    return table


class SimulatedClientApp(ClientApp):
    """The agent's ClientApp, given the node_config an agent would have given its SuperNode.

    Ray pickles this object with every message, so it carries only the table's path; each
    actor process reads the table once.
    """

    def __init__(self, fleet_path: str) -> None:
        super().__init__()
        self.fleet_path = fleet_path

    def __call__(self, message: Message, context: Context) -> Message:
        from edgefleet.agent.fl.clientapp import app

        partition = str(context.node_config[Node.PARTITION_ID])
        context.node_config.update(_fleet_table(self.fleet_path)[partition])  # type: ignore[arg-type]
        return app(message, context)


def simulation_server_app(settings: RunSettings, devices: int) -> ServerApp:
    """Our ServerApp's round loop with ``settings`` given directly (the Python API of the
    Simulation Engine has no run config to read them from).

    The engine starts the ServerApp's thread before it has registered every virtual node, and
    the round loop asks the nodes online when it starts for their facts; so this waits for
    all ``devices`` first -- else a 1,000-device run would select among the first hundred.
    """
    from edgefleet.flower.serverapp import run_rounds

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + settings.node_wait_timeout
        while len(list(grid.get_node_ids())) < devices:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine registered fewer than {devices} virtual nodes")
            time.sleep(0.05)
        run_rounds(grid, settings)

    return app


class TreeRss:
    """Peak resident memory of this process and all its descendants (Ray's GCS, raylet,
    workers), sampled every ``interval`` s in a thread: what the whole simulation costs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-rss")

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        total, count = 0, 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
                count += 1
            except psutil.Error:
                continue  # a worker that exited between listing and reading
        if total > self.peak:
            self.peak, self.peak_processes = total, count
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _follow(path: Path, on_round: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    """Call ``on_round`` for each round the ServerApp appends to ``progress.json``."""
    seen = 0
    while True:
        done = stop.wait(0.25)
        try:
            rounds = json.loads(path.read_text()).get("rounds", [])
        except (OSError, ValueError):
            rounds = []  # not written yet (written atomically, so never torn)
        for r in rounds[seen:]:
            on_round(r)
        seen = max(seen, len(rounds))
        if done:
            return


def start_ray(cpus: int, verbose: bool = False, attempts: int = 3) -> None:
    """Start Ray as Flower's Ray backend would, retrying its start-up timeout.

    Ray waits a fixed 30 s for its raylet to register with the GCS (``ray._private.node``);
    on a loaded box that start-up took longer and ``ray.init`` raised, failing the run before
    any device existed. Flower's backend starts Ray only when it is not running yet, so
    starting it here (same arguments: PYTHONPATH for the workers, no dashboard) lets us retry.
    """
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # the workers import our packages and Flower's
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                num_cpus=cpus, num_gpus=0, include_dashboard=False,
                object_store_memory=128 * 1024 * 1024,
                logging_level=logging.INFO if verbose else logging.ERROR,
                log_to_driver=verbose, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            )  # fmt: skip
            return
        except Exception as exc:  # Ray raises a bare Exception for its start-up timeout
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise RuntimeError(f"Ray did not start: {exc}") from None
            log.warning("Ray start-up timed out (attempt %d of %d); retrying", attempt, attempts)


def run_simulation(
    opts: SimOptions,
    root: Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    """Write the fleet under ``root``, run it on the Ray backend; the run's record, plus
    ``simulation``: devices, set-up and run seconds, peak RSS of the process tree."""
    opts.check()
    # no calls home from a simulation: Flower's and Ray's usage telemetry off
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    from flwr.simulation import run_simulation as flwr_run_simulation

    t0 = time.monotonic()
    write_fleet(root, opts)
    settings = opts.settings(root)
    progress = root / "run" / "progress.json"
    # one ClientApp actor per CPU; Ray itself is started here (Flower's backend then uses it)
    backend_config: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if not verbose:
        flwr_log.setLevel(logging.ERROR)  # per-round strategy INFO lines and the API's
        # deprecation notice; our own round lines say what happened
    stop = threading.Event()
    follower = threading.Thread(
        target=_follow, args=(progress, on_round or (lambda r: None), stop), daemon=True
    )
    t_setup = time.monotonic() - t0
    try:
        with TreeRss() as rss:
            follower.start()
            t1, wall1 = time.monotonic(), time.time()
            start_ray(opts.cpus, verbose)
            t_ray = time.monotonic() - t1
            flwr_run_simulation(
                server_app=simulation_server_app(settings, opts.devices),
                client_app=SimulatedClientApp(str(root / FLEET_FILE)),
                num_supernodes=opts.devices,
                backend_config=backend_config,
            )
            t_run = time.monotonic() - t1
    finally:
        stop.set()
        if follower.is_alive():
            follower.join()
        flwr_log.setLevel(level)
        import ray

        if ray.is_initialized():
            ray.shutdown()
    doc: dict[str, Any] = json.loads(progress.read_text())
    rounds = doc.get("rounds", [])
    doc["simulation"] = {
        "devices": opts.devices,
        "cpus": opts.cpus,
        "setup_seconds": round(t_setup, 3),
        "run_seconds": round(t_run, 3),
        # Ray's start, then until round 1 began: actors warming up, every node's facts query
        "ray_start_seconds": round(t_ray, 3),
        "before_round_1_seconds": (
            round(rounds[0]["ended"] - rounds[0]["seconds"] - wall1, 3) if rounds else None
        ),
        "peak_rss_bytes": rss.peak,
        "peak_rss_processes": rss.peak_processes,
    }
    return doc

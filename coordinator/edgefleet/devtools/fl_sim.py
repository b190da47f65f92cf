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
* **The mix.** Profiles are dealt from the catalog by weight (phones, Pis, a Jetson, MCUs
  with and without PSRAM: :data:`DEFAULT_MIX`); devices of a battery-powered profile get a
  seeded battery level, mains devices report none.
* **The data and the model.** Non-IID by group, as real fleets are: the numpy MLP or
  ResNet-8 on label-skewed digits parts, or MLPerf Tiny's DS-CNN on the kws set with one
  voice per group, the devices holding raw audio and computing the MFCC themselves
  (:mod:`edgefleet.devtools.fl_sim_tasks`). A conv net's round is planned under each device's
  memory by the agent's own code; each round records its scope mix.

How the run reaches the engine (``engine``): by default as Flower 1.42 recommends, ``flwr
run`` of a Flower App against a SuperLink in simulation mode
(:mod:`edgefleet.devtools.fl_sim_flwr`), the settings travelling in the run config that
:data:`server_app` and :data:`client_app` read; or through the deprecated
``flwr.simulation.run_simulation`` (``python-api``), which takes no run config, so
:func:`simulation_server_app` hands the run's :class:`RunSettings` straight to
:func:`edgefleet.flower.serverapp.run_rounds` -- the whole body of our ServerApp's ``main``.
Why this lives in ``devtools``: it joins the agent's ClientApp to the coordinator's ServerApp,
and only dev tools may import both sides (the import contracts in ``pyproject.toml``).

Size: over 500 lines because one simulated run's life reads best in one place -- its options
and their checks, the fleet's plan, the two apps that turn a partition into a device, the
process-tree memory sampler and the run itself; the task (data, model) and the SuperLink
submission are modules of their own.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.catalog import UnknownProfileError, get_profile
from edgefleet.devtools.fl_sim_flwr import SIM_DEVICES, SIM_FLEET, run_on_superlink
from edgefleet.devtools.fl_sim_tasks import MODELS, ScopeTable, task_defaults, write_task_data
from edgefleet.fl.contract import Node
from edgefleet.flower.run_settings import RunSettings

__all__ = [
    "DEFAULT_MIX",
    "MAX_DEVICES",
    "SimOptions",
    "SimulatedClientApp",
    "TreeRss",
    "VirtualDevice",
    "limit_training_budget",
    "parse_mix",
    "plan_fleet",
    "run_simulation",
    "simulation_server_app",
    "write_fleet",
]

#: A fleet as a product might see it: mostly phones and Pis, a quarter microcontrollers --
#: a tenth of the fleet ESP32-S3 modules with 8 MB PSRAM, the class whose memory trains a
#: conv net in a light scope: DS-CNN's round is full on phones and Pis, head-only on the PSRAM
#: modules, and impossible on the SRAM-only MCUs (not even its head fits; they train the MLP).
DEFAULT_MIX = (
    "phone-budget:30,phone-flagship:10,rpi4:15,rpi-zero2w:10,rpi3:5,jetson-nano:5,"
    "esp32-s3-n8r8:10,esp32-s3:5,stm32h743:5,nucleo-l4r5zi:5"
)
#: Past this, one Flower in-memory state and one progress record per run grow unwieldy; and
#: a 2-core box needs minutes per round.
MAX_DEVICES = 10_000
#: battery-powered devices report a level in this range (percent)
BATTERY_RANGE = (5.0, 100.0)
FLEET_FILE = "fleet.json"
ENGINES = ("superlink", "python-api")
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
    """One simulated federated run (the ``edgefleet train simulate`` options).

    ``strategy``, ``lr``, ``local_epochs`` and ``batch_size`` left ``None`` take the model
    family's defaults (:func:`edgefleet.devtools.fl_sim_tasks.task_defaults`).
    """

    devices: int = 100
    rounds: int = 3
    #: fraction of the selected devices that train each round
    fraction: float = 0.1
    #: the model family (a key of :data:`edgefleet.devtools.fl_sim_tasks.MODELS`)
    model: str = "mlp"
    strategy: str | None = None
    select: str = ""
    mix: str = DEFAULT_MIX
    groups: int = 20
    alpha: float = 0.5
    #: local training rows per device (held-out rows: a quarter of it, at least one)
    samples: int = 32
    #: CPUs Ray may use; one ClientApp actor per CPU
    cpus: int = 2
    seed: int = 0
    lr: float | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    round_timeout: float = 600.0
    final_evaluate: bool = False
    #: where the built-in kws set is cached (default: the user's cache dir), and its size
    data_dir: Path | None = None
    kws_size: str = "default"
    #: kws: training voices DS-CNN is pre-trained on centrally before the run (no device
    #: holds them); 0 starts from random weights
    base_voices: int = 6
    #: how the run reaches Flower's Simulation Engine: ``superlink`` (``flwr run`` of a Flower
    #: App against ``flower-superlink --simulation``, Flower 1.42's recommended path:
    #: :mod:`edgefleet.devtools.fl_sim_flwr`) or ``python-api`` (the deprecated
    #: ``flwr.simulation.run_simulation``, kept to compare the two)
    engine: str = "superlink"

    def resolved(self) -> SimOptions:
        """These options with the model family's defaults filled in."""
        d = task_defaults(self.model)
        return replace(
            self,
            strategy=self.strategy or d.strategy,
            lr=d.lr if self.lr is None else self.lr,
            local_epochs=d.local_epochs if self.local_epochs is None else self.local_epochs,
            batch_size=d.batch_size if self.batch_size is None else self.batch_size,
        )

    def check(self) -> None:
        """Raise ``ValueError`` (one line) on an option out of range."""
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
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
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.base_voices < 0:
            raise ValueError(f"--base-voices must be >= 0, got {self.base_voices}")
        cores = os.cpu_count() or 1
        if not 1 <= self.cpus <= cores:
            raise ValueError(f"--cpus must be 1..{cores} (this machine's cores)")
        parse_mix(self.mix)
        opts = self.resolved()
        if opts.strategy == "heterofl" and MODELS[self.model] == "kws":
            raise ValueError(
                "--strategy heterofl slices the zoo's width-scalable configs; "
                f"{self.model} (MLPerf Tiny's config) runs fedavg or fedprox"
            )
        if (opts.local_epochs or 0) < 1 or (opts.batch_size or 0) < 1 or not (opts.lr or 0) > 0:
            raise ValueError("--lr must be > 0, --local-epochs and --batch-size >= 1")
        opts.settings(Path("."))  # the strategy, selector and codec checks of a real run

    def settings(self, root: Path, task: Mapping[str, object] | None = None) -> RunSettings:
        """The ServerApp's run settings for a fleet written under ``root`` (``task``: the
        run config keys the written task fixes: arch, its config, the frontend)."""
        opts = self.resolved()
        return RunSettings.from_run_config(
            {
                "num-rounds": opts.rounds, "strategy": opts.strategy, "min-devices": 1,
                "select": opts.select, "arch": opts.model,
                "test-path": str(root / "test.npz"), "out-dir": str(root / "run"),
                "lr": opts.lr, "local-epochs": opts.local_epochs,
                "batch-size": opts.batch_size, "fraction-train": opts.fraction,
                "round-timeout": opts.round_timeout,
                "node-wait-timeout": max(60.0, opts.devices * 0.5),
                "final-evaluate": opts.final_evaluate, "seed": opts.seed,
                **(task or {}),
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


def write_fleet(root: Path, opts: SimOptions) -> tuple[list[VirtualDevice], RunSettings]:
    """The task's shards and test set, and the node_config table, under ``root``; the fleet
    and the run's settings. Raises ``ValueError`` (one line) when the data cannot serve it."""
    fleet = plan_fleet(opts)
    task = write_task_data(
        root, opts.model, opts.groups, [d.group for d in fleet], samples=opts.samples,
        alpha=opts.alpha, seed=opts.seed, data_dir=opts.data_dir, kws_size=opts.kws_size,
        base_voices=opts.base_voices,
    )  # fmt: skip
    table: dict[str, dict[str, object]] = {}
    for dev in fleet:
        table[str(dev.partition)] = {
            **node_config_for(
                dev.device, dev.profile, dev.ram, str(task.device_paths[dev.partition]),
                battery=dev.battery, labels=dev.labels, partition_id=dev.partition,
            ),
            Node.NUM_PARTITIONS: opts.devices,
        }  # fmt: skip
    (root / FLEET_FILE).write_text(json.dumps(table))
    return fleet, opts.settings(root, task.run_config)


def limit_training_budget(root: Path, device: VirtualDevice, budget_bytes: int) -> None:
    """Let ``device`` spend only ``budget_bytes`` of its RAM on training (its node_config's
    budget fraction in the fleet table under ``root``): a memory-tight device among the
    fleet, which plans a light fine-tuning scope where the others train in full."""
    path = root / FLEET_FILE
    table = json.loads(path.read_text())
    table[str(device.partition)][Node.BUDGET_FRACTION] = budget_bytes / device.ram
    path.write_text(json.dumps(table))
    _fleet_table.cache_clear()


@functools.lru_cache(maxsize=4)
def _fleet_table(path: str) -> dict[str, dict[str, object]]:
    """The node_config table, read once per Ray actor process (not once per message)."""
    table: dict[str, dict[str, object]] = json.loads(Path(path).read_text())
    return table


#: this actor process's counts (Ray keeps actors alive across messages), see :func:`actor_stats`
_ACTOR: dict[str, int] = {"messages": 0, "torch_imports": 0, "torch_import_message": 0}
ACTORS_DIR = "actors"


class SimulatedClientApp(ClientApp):
    """The agent's ClientApp, given the node_config an agent would have given its SuperNode.

    Ray pickles this object with every message, so it carries only the table's path; each
    actor process reads the table once. Each actor also writes how many messages it handled
    and whether one of them imported torch (``actors/<pid>.json`` beside the table): Ray keeps
    its actors for the whole run, so a conv net's torch import is paid once per actor, not per
    message as in a SuperNode's per-message ClientApp process -- this records that it is.
    """

    def __init__(self, fleet_path: str = "") -> None:
        super().__init__()
        self.fleet_path = fleet_path

    def __call__(self, message: Message, context: Context) -> Message:
        from edgefleet.agent.fl.clientapp import app

        fleet_path = self.fleet_path or str(context.run_config[SIM_FLEET])
        partition = str(context.node_config[Node.PARTITION_ID])
        context.node_config.update(_fleet_table(fleet_path)[partition])  # type: ignore[arg-type]
        had_torch = "torch" in sys.modules
        _ACTOR["messages"] += 1
        try:
            return app(message, context)
        finally:
            if not had_torch and "torch" in sys.modules:
                _ACTOR["torch_imports"] += 1
                _ACTOR["torch_import_message"] = _ACTOR["messages"]
            stats = Path(fleet_path).parent / ACTORS_DIR / f"{os.getpid()}.json"
            stats.parent.mkdir(exist_ok=True)
            stats.write_text(json.dumps(_ACTOR))


#: the ClientApp of a submitted simulation (reads the table's path from the run config)
client_app = SimulatedClientApp()


def actor_stats(root: Path) -> list[dict[str, int]]:
    """What each ClientApp actor process of the run under ``root`` recorded."""
    out = []
    for path in sorted((root / ACTORS_DIR).glob("*.json")):
        try:
            out.append({"pid": int(path.stem), **json.loads(path.read_text())})
        except (OSError, ValueError):
            continue  # written while the run was torn down
    return out


def _wait_for_nodes(grid: Grid, devices: int, timeout: float) -> None:
    """The engine starts the ServerApp before it has registered every virtual node, and the
    round loop asks the nodes online when it starts for their facts; so wait for all
    ``devices`` first -- else a 1,000-device run would select among the first hundred."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < devices:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine registered fewer than {devices} virtual nodes")
        time.sleep(0.05)


def simulation_server_app(settings: RunSettings, devices: int) -> ServerApp:
    """Our ServerApp's round loop with ``settings`` given directly (the Python API of the
    Simulation Engine has no run config to read them from), once all nodes are registered."""
    from edgefleet.flower.serverapp import run_rounds

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _wait_for_nodes(grid, devices, settings.node_wait_timeout)
        run_rounds(grid, settings)

    return app


#: the ServerApp of a submitted simulation: our round loop, its settings from the run config
server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from edgefleet.flower.serverapp import run_rounds

    settings = RunSettings.from_run_config(dict(context.run_config))
    _wait_for_nodes(grid, int(str(context.run_config[SIM_DEVICES])), settings.node_wait_timeout)
    run_rounds(grid, settings)


def _process_name(cmdline: list[str]) -> str:
    """A short name for a process of the run: the Flower or Ray program it runs."""
    for part in cmdline[:4]:
        base = os.path.basename(part)
        if base.startswith(("flower-", "flwr-", "raylet", "gcs_server", "ray::")):
            return base.split()[0]
        if "ray" in part and part.endswith(".py"):
            return base.removesuffix(".py")  # Ray's dashboard/agent/log-monitor helpers
    return os.path.basename(cmdline[0]) if cmdline else "?"


class TreeRss:
    """Peak resident memory of this process and all its descendants (Ray's GCS, raylet,
    workers), sampled every ``interval`` s in a thread: what the whole simulation costs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        #: at the peak: RSS per process name (``raylet``, ``flower-superlink``, ...)
        self.peak_by_name: dict[str, int] = {}
        #: peak of the summed PSS: shared pages (Ray's object store, which every actor maps,
        #: and shared libraries) split among the processes sharing them instead of counted
        #: in full by each, as an RSS sum does -- what the run really occupies
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-rss")

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        total, count, pss = 0, 0, 0
        by_name: dict[str, int] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                mem = proc.memory_full_info()  # /proc/PID/smaps_rollup: 0.1 ms a process
                name = _process_name(proc.cmdline()) if proc.pid != me.pid else "driver"
            except psutil.Error:
                continue  # a worker that exited between listing and reading
            total += mem.rss
            pss += getattr(mem, "pss", mem.rss)
            count += 1
            by_name[name] = by_name.get(name, 0) + mem.rss
        self.peak_pss = max(self.peak_pss, pss)
        if total > self.peak:
            self.peak, self.peak_processes, self.peak_by_name = total, count, by_name
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
    if opts.engine == "python-api":
        from flwr.simulation import run_simulation as flwr_run_simulation

    t0 = time.monotonic()
    _, settings = write_fleet(root, opts)
    annotate = _round_annotator(settings)
    progress = root / "run" / "progress.json"
    # one ClientApp actor per CPU; Ray itself is started here (Flower's backend then uses it)
    backend_config: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if not verbose:
        # per-round strategy INFO lines, the API's deprecation notice and a traceback per
        # failed device update: the round records say what happened and why devices failed
        flwr_log.setLevel(logging.CRITICAL)
    stop = threading.Event()
    report = on_round or (lambda r: None)
    follower = threading.Thread(
        target=_follow, args=(progress, lambda r: report(annotate(r)), stop), daemon=True
    )
    t_setup = time.monotonic() - t0
    try:
        with TreeRss() as rss:
            follower.start()
            t1, wall1 = time.monotonic(), time.time()
            if opts.engine == "superlink":
                t_ray = None  # flwr-simulation starts Ray inside the run
                deadline = settings.node_wait_timeout + 120.0 + opts.rounds * opts.round_timeout
                run_on_superlink(
                    root, settings, opts.devices, opts.cpus, root / FLEET_FILE,
                    deadline_s=deadline, verbose=verbose,
                )  # fmt: skip
            else:
                start_ray(opts.cpus, verbose)
                t_ray = round(time.monotonic() - t1, 3)
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
        if opts.engine == "python-api":
            import ray

            if ray.is_initialized():
                ray.shutdown()
    doc: dict[str, Any] = json.loads(progress.read_text())
    rounds = [annotate(r) for r in doc.get("rounds", [])]
    doc["rounds"] = rounds
    doc["simulation"] = {
        "devices": opts.devices,
        "cpus": opts.cpus,
        "model": opts.model,
        "setup_seconds": round(t_setup, 3),
        "run_seconds": round(t_run, 3),
        # Ray's start (python-api), then until round 1 began: the SuperLink and the FAB
        # (superlink), actors warming up, every node's facts query
        "engine": opts.engine,
        "ray_start_seconds": t_ray,
        "before_round_1_seconds": (
            round(rounds[0]["ended"] - rounds[0]["seconds"] - wall1, 3) if rounds else None
        ),
        "peak_rss_bytes": rss.peak,
        "peak_rss_processes": rss.peak_processes,
        "peak_pss_bytes": rss.peak_pss,
        "peak_rss_by_process": dict(sorted(rss.peak_by_name.items(), key=lambda kv: -kv[1])),
        # per ClientApp actor process: messages handled, and how often torch was imported
        "actors": actor_stats(root),
    }
    return doc


def _round_annotator(settings: RunSettings) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Adds ``scopes`` (devices per fine-tuning scope) to a conv net's round records."""
    if settings.arch == "mlp":
        return lambda r: r  # the numpy MLP has one scope: everything
    table = ScopeTable(settings.arch, settings.arch_config, widths=(1.0, 0.5, 0.25))

    def annotate(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "scopes": table.mix(r.get("device_trained_params") or {})}

    return annotate

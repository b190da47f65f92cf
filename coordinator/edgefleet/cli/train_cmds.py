"""``edgefleet train start|status|ls|stop``: federated fine-tuning on Flower's Deployment Engine.

A run is a Flower run of our ServerApp on a SuperLink -- an external one (``--superlink``,
the SuperNodes being the agents') or a loopback federation of simulated devices started for
the run (``--local N``). Its record (settings, per-round participants/loss/accuracy, final
scores and weights) lives in ``--runs-dir/NAME/`` (default ``DATA_DIR/fl-runs``, absolute), written
by the ServerApp after every round.

MODEL is either an architecture the federated app trains (``mlp``, ``ds-cnn``, ``resnet-8`` at
width 1.0 on digits: what ``coordinator/edgefleet/flower/model.py`` builds) or a model registered in the
variant store (``edgefleet models ls``) whose architecture is one of those. A registered model's
base weights are the starting point, and a finished run becomes a new model in the store,
``MODEL-ft-RUN`` (the store has no versions within a name, so a fine-tuned version is a sibling
model whose checkpoint path names the run); ``--rebuild`` re-runs the recipes MODEL's variants
were built with (read from their signed manifests) on it, and ``--deploy SELECTOR`` rolls it out
through the coordinator's rollout machinery. Anything else (a custom ``nn.Module``, another
width or dataset) is refused before the run starts rather than registered under a wrong spec.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.table import Table

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
    client,
    err_console,
    fail,
    one_line_errors,
    out,
    print_json,
    usage_error,
)
from edgefleet.cli.completion import DEPLOY_STRATEGIES, complete_models, complete_profiles

if TYPE_CHECKING:
    from edgefleet.variant_store import ModelEntry, VariantStore
    from edgefleet.zoo import ArchitectureSpec

train_app = typer.Typer(help="Federated fine-tuning (Flower).", no_args_is_help=True)

RunsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--runs-dir",
        envvar="EDGEFLEET_FL_RUNS",
        help="where run records are kept (default: DATA_DIR/fl-runs)",
        show_default=False,
        resolve_path=True,
    ),
]
DEFAULT_RUNS: Path | None = None  # DATA_DIR/fl-runs, made absolute by _runs_dir
MODELS = ("mlp", "ds-cnn", "resnet-8")
#: coordinator/edgefleet/flower/serverapp.py STRATEGIES (not imported: it loads Flower; a test keeps them equal)
FL_STRATEGIES = ("fedavg", "fedprox", "heterofl")
DP_MODES = ("none", "server-fixed")
#: the SuperNodes' shards and the held-out split are digits (coordinator/edgefleet/devtools/fl_local.py, clientapp)
FL_DATASET = "digits"
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EDGEFLEET_DATA_DIR",
        help="variant store the fine-tuned model is registered in (default ./.edgefleet)",
        show_default=False,
        resolve_path=True,
    ),
]


def _store(data_dir: Path | None) -> VariantStore:
    from edgefleet.variant_store import VariantStore, resolve_data_dir

    return VariantStore(resolve_data_dir(data_dir))


def _runs_dir(runs_dir: Path | None, data_dir: Path | None) -> Path:
    """``--runs-dir``, else DATA_DIR/fl-runs; absolute, so a run's record does not depend on
    the directory the command was started from (the ServerApp writes to this path)."""
    from edgefleet.variant_store import resolve_data_dir

    return (runs_dir or resolve_data_dir(data_dir) / "fl-runs").absolute()


def _complete_model(incomplete: str) -> list[str]:
    """Architectures the federated app trains, then registered models."""
    return [m for m in MODELS if m.startswith(incomplete)] + complete_models(incomplete)


def _check_numbers(**values: tuple[float, float, bool]) -> None:
    """Refuse NaN, infinities and out-of-range numbers before anything starts (exit 2).

    Each value is ``(value, lowest, lowest_allowed)``; names are the options' own.
    """
    for name, (value, low, inclusive) in values.items():
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise usage_error(f"{flag} must be a finite number, got {value}")
        if value < low or (value == low and not inclusive):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise usage_error(f"{flag} must be {bound}, got {value:g}")


def _fl_spec(arch: str) -> ArchitectureSpec:
    """The zoo spec of what the federated app trains for ``arch`` (full width, digits)."""
    from edgefleet.flower import model as fl_model
    from edgefleet.zoo import ArchitectureSpec

    return ArchitectureSpec(arch, fl_model.arch_config(arch, 1.0), fl_model.INPUT_SHAPE)


def _fl_arch_of(entry: ModelEntry) -> str:
    """The FL architecture a registered model maps to, or a one-line refusal.

    Only exact matches are accepted: the run's weights are loaded into ``entry``'s spec with
    a strict state-dict check, and a near match (other width, other classes) would either fail
    after the run or, worse, register weights under a spec that does not describe them.
    """
    from edgefleet.zoo import ArchitectureSpec

    spec = ArchitectureSpec.from_json(entry.architecture)
    supported = f"federated fine-tuning trains {', '.join(MODELS)} at width 1.0 on {FL_DATASET}"
    if spec.name not in MODELS:
        raise fail(f"model {entry.name!r} is a {spec.name!r} architecture; {supported}")
    if entry.dataset != FL_DATASET:
        raise fail(f"model {entry.name!r} was trained on {entry.dataset!r}; {supported}")
    want = _fl_spec(spec.name)
    if spec.low_rank or (spec.config, spec.input_shape) != (want.config, want.input_shape):
        raise fail(
            f"model {entry.name!r} is {spec.name} with config {json.dumps(spec.config)}, not the "
            f"one the federated app trains ({json.dumps(want.config)}); {supported}"
        )
    return spec.name


def _recipes_of(store: VariantStore, entry: ModelEntry) -> list[str]:
    """The recipe labels ``entry``'s variants were built with, in build order, from their
    manifests (each bundle verified on load); the base (``fp32``) is registered anyway."""
    labels: list[str] = []
    for vid in entry.variants:
        if vid == entry.base:
            continue
        label = str(store.load(vid).manifest.get("recipe_label") or "fp32")
        if label != "fp32" and label not in labels:
            labels.append(label)
    return labels


def _base_weights(store: VariantStore, entry: ModelEntry, path: Path) -> Path:
    """The registered model's base weights as the FL initial ``.npz`` (state-dict order)."""
    import numpy as np

    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.build import load_torch_model

    module = load_torch_model(store.load(entry.base))
    params = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    return fl_model.save_params(params, path)


def _register(
    store: VariantStore,
    name: str,
    spec: ArchitectureSpec,
    weights: Path,
    latency_runs: int,
) -> str:
    """Register the run's final weights as model ``name`` (measured, signed fp32 base).

    The FL record keeps every tensor as float32 (BatchNorm's step counter included); each is
    cast back to the dtype the zoo module holds so the strict checkpoint load accepts it.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import build_model

    ref = build_model(spec).state_dict()
    params = fl_model.load_params(weights)
    tensors = {k: torch.from_numpy(np.array(v)).to(ref[k].dtype) for k, v in params.items()}
    checkpoint = weights.with_suffix(".safetensors")
    save_file(tensors, str(checkpoint))
    options = BuildOptions(latency=LatencyConfig(warmup=min(30, latency_runs), runs=latency_runs))
    entry = register_model(store, name, spec, FL_DATASET, checkpoint=checkpoint, options=options)
    return entry.base


def _rollout(
    model: str, selector: str, strategy: str, coordinator: str, admin_token: str
) -> dict[str, Any]:
    """Create a rollout of ``model`` (gates: the coordinator's defaults, as `edgefleet deploy`
    without options; use that command for finer control)."""
    from edgefleet.client.render import rollout_to_dict
    from edgefleet.v1 import admin_pb2

    request = admin_pb2.CreateRolloutRequest(
        model=model,
        selector=selector,
        strategy=strategy,
        waves=[0.05, 0.25, 1.0] if strategy == "waves" else [],
        canary_fraction=0.1 if strategy == "canary" else 0.0,
    )
    with client(coordinator, admin_token) as c:
        return rollout_to_dict(c.create_rollout(request))


def _fleet_superlink(data_dir: Path | None) -> tuple[str, Path | None, str]:
    """The SuperLink the coordinator on this data dir runs, the CA that verifies it, and its
    embedded Redis ("" for an external one: pass --redis-url / EDGEFLEET_REDIS_URL)."""
    from edgefleet.variant_store import resolve_data_dir

    info_path = resolve_data_dir(data_dir) / "coordinator.json"
    if not info_path.exists():
        raise fail(
            f"no coordinator runs with data dir {info_path.parent} (start one, or give "
            "--superlink HOST:PORT, or --local N for simulated devices)"
        )
    info = json.loads(info_path.read_text())
    if not info.get("superlink"):
        raise fail(
            f"the coordinator at {info.get('address')} runs no SuperLink "
            "(restart it with --superlink local, or give --superlink HOST:PORT)"
        )
    ca = info.get("ca_cert")
    return str(info["superlink"]), Path(ca) if ca else None, str(info.get("embedded_redis") or "")


def _load(run_dir: Path) -> dict[str, Any]:
    meta = (
        json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    )
    progress = run_dir / "progress.json"
    doc: dict[str, Any] = json.loads(progress.read_text()) if progress.exists() else {}
    state = doc.get("state", meta.get("state", "submitted"))
    if meta.get("state") == "stopped":
        state = "stopped"
    reason = doc.get("reason")
    if state == "running" and not _alive(doc.get("pid")):
        # The ServerApp died without recording an outcome (SuperLink/host restart, kill -9):
        # say so rather than showing "running" forever. Resuming is not implemented.
        state, reason = "failed", "the ServerApp process is gone (SuperLink restarted or killed)"
    return {"name": run_dir.name, **meta, **doc, "state": state, "reason": reason}


def _alive(pid: object) -> bool:
    """Whether the ServerApp process that wrote the record still runs (same host only)."""
    from edgefleet.fl.process import pid_alive

    return pid_alive(pid) if isinstance(pid, int) else True  # unknown: trust the record


def _round_line(r: dict[str, Any], total: int) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    loss = "-" if r.get("train_loss") is None else f"{r['train_loss']:.3f}"
    return (
        f"round {r['round']}/{total}: {len(r['participants'])} device(s), loss {loss}, "
        f"client acc {pct(r.get('client_eval_acc'))}, test acc {pct(r.get('test_acc'))}, "
        f"{r['seconds']:.1f}s"
    )


def _report_rounds(
    redis_url: str,
    model: str,
    run: str,
    rounds: list[dict[str, Any]],
    failed: bool,
    failed_round: int | None = None,
) -> None:
    """Put finished rounds in the fleet state, where the coordinator exports them as the
    ``edgefleet_fl_*`` metrics (dashboards and the FederatedRoundFailed alert read them)."""
    import asyncio

    import redis.asyncio as aioredis

    from edgefleet.coordinator.state.model import FederatedRound
    from edgefleet.coordinator.state.store import FleetStore

    def nan_if_none(v: Any) -> float:
        return float("nan") if v is None else float(v)

    async def write() -> None:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        try:
            for r in rounds:
                await store.record_fl_round(FederatedRound(
                    model, run, int(r["round"]), "completed", nan_if_none(r.get("train_loss")),
                    nan_if_none(r.get("test_acc", r.get("client_eval_acc"))),
                    len(r.get("participants", [])), time.time(),
                ))  # fmt: skip
            if failed:
                last = failed_round or (int(rounds[-1]["round"]) + 1 if rounds else 1)
                await store.record_fl_round(
                    FederatedRound(
                        model, run, last, "failed", float("nan"), float("nan"), 0, time.time()
                    )
                )
        finally:
            await store.close()

    asyncio.run(write())


class _RoundReporter:
    """Records finished rounds in the fleet's Redis, one transaction per round, oldest first.

    The run does not depend on the coordinator (its SuperLink outlives a coordinator kill), so
    neither may following it: while Redis is away (an embedded one restarts with its
    coordinator) records wait here and go out later, each exactly once; the run's outcome is
    never changed by it.
    """

    def __init__(self, redis_url: str, model: str, run: str, quiet: bool) -> None:
        self.redis_url, self.model, self.run, self.quiet = redis_url, model, run, quiet
        self.pending: list[tuple[dict[str, Any] | None, int]] = []  # (round, 0) / (None, failed)
        self.last_round = 0
        self.warned = False

    def __call__(self, new: list[dict[str, Any]], failed: bool) -> None:
        for r in new:
            self.pending.append((r, 0))
            self.last_round = int(r["round"])
        if failed:
            self.pending.append((None, self.last_round + 1))
        self.flush()

    def flush(self) -> bool:
        """Send what is pending; False (and kept for later) while Redis is unreachable."""
        from edgefleet.coordinator.errors import Unavailable

        while self.pending:
            round_doc, failed_round = self.pending[0]
            try:
                if round_doc is not None:
                    _report_rounds(self.redis_url, self.model, self.run, [round_doc], False)
                else:
                    _report_rounds(self.redis_url, self.model, self.run, [], True, failed_round)
            except (Unavailable, OSError, ConnectionError) as exc:
                if not self.warned and not self.quiet:
                    err_console.print(
                        f"fleet state unreachable ({exc}); round records will be sent later"
                    )
                self.warned = True
                return False
            self.pending.pop(0)
        return True

    def drain(self, timeout: float = 60.0) -> None:
        """At the end: keep trying for ``timeout`` s, then say what could not be recorded."""
        deadline = time.monotonic() + timeout
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(1.0)
        if self.pending:
            err_console.print(
                f"warning: {len(self.pending)} round record(s) could not be written to the "
                "fleet state (edgefleet_fl_* metrics will miss them)"
            )


def _follow(
    run_dir: Path,
    as_json: bool,
    timeout: float,
    report: Callable[[list[dict[str, Any]], bool], None] | None = None,
) -> dict[str, Any]:
    """Print each round as the ServerApp records it; return the finished record."""
    shown = 0
    deadline = time.monotonic() + timeout
    while True:
        doc = _load(run_dir)
        rounds = doc.get("rounds", [])
        total = int(doc.get("settings", {}).get("num_rounds", len(rounds)))
        for r in rounds[shown:]:
            if not as_json:
                out.print(_round_line(r, total), highlight=False)
        finished = doc["state"] not in ("running", "submitted")
        if report is not None and (rounds[shown:] or finished):
            report(rounds[shown:], finished and doc["state"] != "succeeded")
        shown = len(rounds)
        if finished:
            return doc
        if time.monotonic() > deadline:
            raise fail(f"run {run_dir.name} still {doc['state']} after {timeout:.0f}s")
        time.sleep(0.25)


@train_app.command("start")
@one_line_errors
def start(
    model: Annotated[
        str,
        typer.Argument(
            help=f"{', '.join(MODELS)}, or a registered model of one of them",
            autocompletion=_complete_model,
        ),
    ],
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 3,
    strategy: Annotated[
        str, typer.Option(click_type=click.Choice(FL_STRATEGIES), help="aggregation")
    ] = "fedavg",
    min_devices: Annotated[int, typer.Option("--min-devices", min=1)] = 2,
    select: Annotated[str, typer.Option("--select", help="e.g. 'battery>30 and ram>=512MiB'")] = "",
    init: Annotated[Path | None, typer.Option(help="initial weights (.npz)")] = None,
    superlink: Annotated[
        str,
        typer.Option(
            help="SuperLink HOST:PORT (its SuperNodes are the agents'); default: the one the "
            "coordinator on this data dir runs"
        ),
    ] = "",
    superlink_ca: Annotated[
        Path | None,
        typer.Option(
            "--superlink-ca", help="CA certificate to verify --superlink with (else plaintext)"
        ),
    ] = None,
    local: Annotated[int, typer.Option(help="start N simulated devices on loopback instead")] = 0,
    profiles: Annotated[
        str, typer.Option(help="profiles of --local devices", autocompletion=complete_profiles)
    ] = "rpi4",
    lr: float = 0.05,
    local_epochs: Annotated[int, typer.Option("--local-epochs")] = 1,
    proximal_mu: Annotated[float, typer.Option("--proximal-mu")] = 0.01,
    dp: Annotated[
        str, typer.Option(click_type=click.Choice(DP_MODES), help="Flower's DP wrapper")
    ] = "none",
    dp_noise: Annotated[float, typer.Option("--dp-noise")] = 0.0,
    dp_clip: Annotated[float, typer.Option("--dp-clip")] = 10.0,
    round_timeout: Annotated[float, typer.Option("--round-timeout")] = 120.0,
    name: Annotated[str, typer.Option(help="run name (default: MODEL-TIMESTAMP)")] = "",
    runs_dir: RunsDirOpt = DEFAULT_RUNS,
    timeout: Annotated[float, typer.Option(help="give up following after this many s")] = 3600,
    redis_url: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_REDIS_URL",
            help="also record each round in the fleet's Redis (exported as edgefleet_fl_* metrics)",
        ),
    ] = "",
    register: Annotated[
        bool,
        typer.Option(
            "--register",
            help="register the result as MODEL-ft-RUN (always for a registered MODEL)",
        ),
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="re-run MODEL's variants' recipes on the result")
    ] = False,
    deploy: Annotated[
        str,
        typer.Option(
            "--deploy", metavar="SELECTOR", help="roll the result out, e.g. all | profile:rpi4"
        ),
    ] = "",
    deploy_strategy: Annotated[
        str, typer.Option("--deploy-strategy", click_type=click.Choice(DEPLOY_STRATEGIES))
    ] = "all",
    latency_runs: Annotated[
        int, typer.Option("--latency-runs", min=1, help="timed runs per variant measurement")
    ] = 300,
    data_dir: DataDirOpt = None,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune MODEL on the fleet for R rounds, printing each round as it finishes."""
    from edgefleet.flower.participants import parse_selection

    _check_numbers(
        lr=(lr, 0.0, False),
        local_epochs=(local_epochs, 1, True),
        proximal_mu=(proximal_mu, 0.0, True),
        dp_noise=(dp_noise, 0.0, True),
        dp_clip=(dp_clip, 0.0, False),
        round_timeout=(round_timeout, 0.0, False),
        timeout=(timeout, 0.0, False),
        local=(local, 0, True),
    )
    if superlink and local:
        raise usage_error("give at most one of --superlink HOST:PORT or --local N")
    try:
        parse_selection(select)  # a bad expression fails here, before anything starts
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    if rebuild and model in MODELS:
        raise usage_error(
            f"--rebuild re-runs the recipes of a registered model's variants; {model!r} is an "
            "architecture (register it with `edgefleet models add`, build, then train that)"
        )
    store, base_entry, recipes = None, None, []
    if model in MODELS:
        arch = model
    else:
        from edgefleet.variant_store import UnknownModelError

        store = _store(data_dir)
        try:
            base_entry = store.model(model)
        except UnknownModelError:
            raise fail(
                f"unknown model {model!r}: neither an architecture the federated app trains "
                f"({', '.join(MODELS)}) nor a registered model (edgefleet models ls)"
            ) from None
        arch = _fl_arch_of(base_entry)
        recipes = _recipes_of(store, base_entry) if rebuild else []
    if rebuild and not recipes:
        raise fail(f"--rebuild: model {model!r} has no compressed variants to rebuild")
    register = register or base_entry is not None or rebuild or bool(deploy)
    runs_dir = _runs_dir(runs_dir, data_dir)
    if not superlink and not local:
        superlink, superlink_ca, fleet_redis = _fleet_superlink(data_dir)
        # rounds go into the fleet's state (edgefleet_fl_* metrics) without being asked
        redis_url = redis_url or fleet_redis
    run_name = name or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).absolute()
    if run_dir.exists():
        raise fail(f"run {run_name!r} already exists in {runs_dir}")
    new_model = f"{model}-ft-{run_name}"
    if register:
        store = store or _store(data_dir)
        if any(m.name == new_model for m in store.models()):
            raise fail(f"model {new_model!r} already exists in the variant store")
    run_dir.mkdir(parents=True)
    if base_entry is not None and init is None and store is not None:
        init = _base_weights(store, base_entry, run_dir / "init.npz")
    config: dict[str, object] = {
        "num-rounds": rounds, "strategy": strategy, "min-devices": min_devices, "select": select,
        "arch": arch, "lr": lr, "local-epochs": local_epochs, "proximal-mu": proximal_mu,
        "dp": dp, "dp-noise": dp_noise, "dp-clip": dp_clip, "round-timeout": round_timeout,
        "out-dir": str(run_dir),
    }  # fmt: skip
    if init is not None:
        config["init-path"] = str(init.absolute())
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    fed = None
    try:
        if local:
            from edgefleet.devtools.fl_local import LocalFederation

            fed = LocalFederation(
                run_dir / "federation", num_nodes=local, profiles=profiles.split(",")
            ).start()
            config["test-path"] = str(fed.root / "test.npz")
            address = fed.address
        else:
            address = superlink
        from edgefleet.coordinator.fl.superlink import submit, write_app

        app = write_app(run_dir / "app", config)
        ca = None
        if fed is not None and fed.flower_tls is not None:
            ca = fed.flower_tls.ca
        elif superlink_ca is not None:
            ca = superlink_ca.absolute()
        meta: dict[str, object] = {
            "superlink": address,
            "superlink_ca": str(ca) if ca else None,
            "flwr_home": str(run_dir / "flwr-home"),
            "state": "submitted",
        }
        (run_dir / "meta.json").write_text(json.dumps(meta))
        run_id = submit(app, run_dir / "flwr-home", address, ca=ca)
        meta["flwr_run_id"] = run_id
        (run_dir / "meta.json").write_text(json.dumps(meta))
        if not as_json:
            err_console.print(f"run {run_name} (Flower run {run_id}) on {address}")
        reporter = _RoundReporter(redis_url, model, run_name, as_json) if redis_url else None
        doc = _follow(run_dir, as_json, timeout, reporter)
        if reporter is not None:
            reporter.drain()
    finally:
        if fed is not None:
            fed.stop()
    summary = _summary(doc)
    if doc["state"] != "succeeded":
        if as_json:
            print_json(summary)
            raise typer.Exit(1)
        raise fail(f"run {run_name} {doc['state']}: {doc.get('reason') or ''}")
    accuracy = _accuracy(doc, store, base_entry)
    summary["test_accuracy"] = accuracy
    if not as_json:
        out.print(_accuracy_line(accuracy), highlight=False)
        out.print(f"weights: {run_dir / 'final.npz'}", highlight=False)
    if register and store is not None:
        if accuracy["worse_than_base"]:
            _warn_worse(accuracy, new_model, deploy)
        summary.update(_publish(
            store, new_model, arch, base_entry, run_dir / "final.npz", recipes, deploy,
            deploy_strategy, latency_runs, coordinator, admin_token, as_json,
        ))  # fmt: skip
    if as_json:
        print_json(summary)


def _accuracy(
    doc: dict[str, Any], store: VariantStore | None, base_entry: ModelEntry | None
) -> dict[str, Any]:
    """The run's test accuracy against what it started from.

    The baseline is the run's own initial evaluation (same held-out split, same code as the
    final one); for a registered MODEL without it, the base variant's measured accuracy.
    """
    final = (doc.get("final") or {}).get("test_acc")
    initial = (doc.get("initial") or {}).get("test_acc")
    base = None
    if store is not None and base_entry is not None:
        base = store.load(base_entry.base).manifest.get("metrics", {}).get("accuracy")
    baseline = initial if initial is not None else base
    worse = final is not None and baseline is not None and final < baseline
    change = None if final is None or baseline is None else 100 * (final - baseline)
    return {
        "initial": initial,
        "final": final,
        "base": base,
        "change_points": change,
        "worse_than_base": worse,
    }


def _accuracy_line(acc: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "unknown" if v is None else f"{100 * v:.1f}%"

    if acc["final"] is None:
        return "test accuracy: not reported by the run"
    if acc["change_points"] is None:
        return f"test accuracy {pct(acc['final'])}"
    start = acc["initial"] if acc["initial"] is not None else acc["base"]
    return f"test accuracy {pct(start)} -> {pct(acc['final'])} ({acc['change_points']:+.1f} points)"


def _warn_worse(acc: dict[str, Any], new_model: str, deploy: str) -> None:
    """Registering (and deploying) a model that lost accuracy is allowed but never quiet."""
    start = acc["initial"] if acc["initial"] is not None else acc["base"]
    then = f" and deploying it to {deploy}" if deploy else ""
    err_console.print(
        f"[bold red]WARNING: the fine-tuned model is worse than its base[/bold red]: test "
        f"accuracy {100 * acc['final']:.1f}% vs {100 * start:.1f}% "
        f"({acc['change_points']:+.1f} points); registering it as {new_model}{then} anyway "
        "(try more --rounds, --local-epochs or a smaller --lr)",
        highlight=False,
        soft_wrap=True,
    )


def _publish(
    store: VariantStore,
    new_model: str,
    arch: str,
    base_entry: ModelEntry | None,
    weights: Path,
    recipes: list[str],
    deploy: str,
    deploy_strategy: str,
    latency_runs: int,
    coordinator: str,
    admin_token: str,
    as_json: bool,
) -> dict[str, Any]:
    """Register the finished run, rebuild its variants, deploy: each step printed as it ends.

    A failure after registration says what already exists, so the user can finish by hand
    (`edgefleet models build` / `edgefleet deploy`) instead of re-running the federation.
    """
    from edgefleet.zoo import ArchitectureSpec

    def say(msg: str) -> None:
        if not as_json:
            out.print(msg, highlight=False)

    spec = ArchitectureSpec.from_json(base_entry.architecture) if base_entry else _fl_spec(arch)
    base = _register(store, new_model, spec, weights, latency_runs)
    say(f"registered {new_model} (base {base[:12]})")
    result: dict[str, Any] = {"registered": {"model": new_model, "base": base, "variants": []}}
    if recipes:
        from edgefleet.modelops.build import BuildOptions, build_variants
        from edgefleet.modelops.measure import LatencyConfig

        options = BuildOptions(
            latency=LatencyConfig(warmup=min(30, latency_runs), runs=latency_runs)
        )
        try:
            ids = build_variants(store, new_model, recipes, options=options)
        except Exception as exc:
            raise fail(
                f"registered {new_model}, but rebuilding failed: {exc} "
                f"(retry with `edgefleet models build {new_model} --recipes ...`)"
            ) from None
        result["registered"]["variants"] = [
            {"recipe": r, "id": v} for r, v in zip(recipes, ids, strict=True)
        ]
        say(f"rebuilt {len(ids)} variant(s): {', '.join(recipes)}")
    if deploy:
        try:
            rollout = _rollout(new_model, deploy, deploy_strategy, coordinator, admin_token)
        except Exception as exc:
            raise fail(
                f"registered {new_model}, but the rollout was not created: {exc} "
                f"(retry with `edgefleet deploy {new_model} --to {deploy}`)"
            ) from None
        result["rollout"] = rollout
        say(
            f"rollout {rollout['id']}: {new_model} -> {deploy} [{rollout['state']}], "
            f"{len(rollout['devices'])} device(s), {len(rollout['skipped'])} skipped; "
            f"follow it with: edgefleet rollout status {rollout['id']} --watch"
        )
    return result


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": doc["name"],
        "state": doc["state"],
        "reason": doc.get("reason"),
        "superlink": doc.get("superlink"),
        "flwr_run_id": doc.get("flwr_run_id"),
        "strategy": doc.get("settings", {}).get("strategy"),
        "model": doc.get("settings", {}).get("arch"),
        "rounds": doc.get("rounds", []),
        "initial": doc.get("initial"),
        "final": doc.get("final"),
    }


def _runs(runs_dir: Path) -> list[Path]:
    return sorted(p for p in runs_dir.glob("*") if (p / "meta.json").exists())


@train_app.command("ls")
@one_line_errors
def ls(
    runs_dir: RunsDirOpt = DEFAULT_RUNS, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """List federated runs."""
    docs = [_load(p) for p in _runs(_runs_dir(runs_dir, data_dir))]
    if as_json:
        print_json([_summary(d) for d in docs])
        return
    table = Table("NAME", "STATE", "STRATEGY", "ROUNDS", "TEST ACC", "SUPERLINK")
    for d in docs:
        acc = (d.get("final") or {}).get("test_acc")
        total = d.get("settings", {}).get("num_rounds", "?")
        table.add_row(
            d["name"], d["state"], str(d.get("settings", {}).get("strategy", "")),
            f"{len(d.get('rounds', []))}/{total}", "-" if acc is None else f"{100 * acc:.1f}%",
            str(d.get("superlink", "")),
        )  # fmt: skip
    out.print(table)


@train_app.command("status")
@one_line_errors
def status(
    name: Annotated[str, typer.Argument(help="run name (edgefleet train ls)")],
    watch: Annotated[bool, typer.Option("--watch", help="follow until it finishes")] = False,
    runs_dir: RunsDirOpt = DEFAULT_RUNS,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run's rounds (participants, loss, accuracy) and state."""
    runs_dir = _runs_dir(runs_dir, data_dir)
    run_dir = runs_dir / name
    if not (run_dir / "meta.json").exists():
        raise fail(f"no run {name!r} in {runs_dir}")
    doc = _follow(run_dir, as_json, 3600) if watch else _load(run_dir)
    if as_json:
        print_json(_summary(doc))
        return
    total = int(doc.get("settings", {}).get("num_rounds", 0))
    if not watch:
        for r in doc.get("rounds", []):
            out.print(_round_line(r, total), highlight=False)
    out.print(f"{name}: {doc['state']} {doc.get('reason') or ''}".rstrip(), highlight=False)


@train_app.command("stop")
@one_line_errors
def stop(
    name: Annotated[str, typer.Argument(help="run name")],
    runs_dir: RunsDirOpt = DEFAULT_RUNS,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run on its SuperLink (``flwr stop``) and mark it stopped."""
    from edgefleet.coordinator.fl.superlink import stop_run

    runs_dir = _runs_dir(runs_dir, data_dir)
    meta_path = runs_dir / name / "meta.json"
    if not meta_path.exists():
        raise fail(f"no run {name!r} in {runs_dir}")
    meta = json.loads(meta_path.read_text())
    if "flwr_run_id" not in meta:
        raise fail(f"run {name!r} was never submitted")
    ca = Path(meta["superlink_ca"]) if meta.get("superlink_ca") else None
    stop_run(Path(meta["flwr_home"]), meta["superlink"], int(meta["flwr_run_id"]), ca)
    meta["state"] = "stopped"
    meta_path.write_text(json.dumps(meta))
    if as_json:
        print_json({"name": name, "state": "stopped"})
    else:
        out.print(f"{name}: stopped")

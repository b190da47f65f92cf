"""``edgefleet train start|status|ls|stop``: federated fine-tuning on Flower's Deployment Engine.

A run is a Flower run of our ServerApp on a SuperLink -- an external one (``--superlink``,
the SuperNodes being the agents') or a loopback federation of simulated devices started for
the run (``--local N``). Its record (settings, per-round participants/loss/accuracy, final
scores and weights) lives in ``--runs-dir/NAME/``, written by the ServerApp after every round.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from coordinator.cli.common import JsonOpt, err_console, fail, one_line_errors, out, print_json

train_app = typer.Typer(help="Federated fine-tuning (Flower).", no_args_is_help=True)

RunsDirOpt = Annotated[
    Path,
    typer.Option("--runs-dir", envvar="EDGEFLEET_FL_RUNS", help="where run records are kept"),
]
DEFAULT_RUNS = Path(".edgefleet/fl-runs")
MODELS = ("mlp", "ds-cnn", "resnet-8")


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
    if not isinstance(pid, int):
        return True  # unknown: trust the record
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    redis_url: str, model: str, run: str, rounds: list[dict[str, Any]], failed: bool
) -> None:
    """Put finished rounds in the fleet state, where the coordinator exports them as the
    ``edgefleet_fl_*`` metrics (dashboards and the FederatedRoundFailed alert read them)."""
    import asyncio

    import redis.asyncio as aioredis

    from coordinator.store import FederatedRound, FleetStore

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
                last = int(rounds[-1]["round"]) + 1 if rounds else 1
                await store.record_fl_round(
                    FederatedRound(
                        model, run, last, "failed", float("nan"), float("nan"), 0, time.time()
                    )
                )
        finally:
            await store.close()

    asyncio.run(write())


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
            report(rounds[shown:], finished and doc["state"] != "completed")
        shown = len(rounds)
        if finished:
            return doc
        if time.monotonic() > deadline:
            raise fail(f"run {run_dir.name} still {doc['state']} after {timeout:.0f}s")
        time.sleep(0.25)


@train_app.command("start")
@one_line_errors
def start(
    model: Annotated[str, typer.Argument(help=f"architecture: {', '.join(MODELS)}")],
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 3,
    strategy: Annotated[str, typer.Option(help="fedavg | fedprox | heterofl")] = "fedavg",
    min_devices: Annotated[int, typer.Option("--min-devices", min=1)] = 2,
    select: Annotated[str, typer.Option("--select", help="e.g. 'battery>30 and ram>=512MiB'")] = "",
    init: Annotated[Path | None, typer.Option(help="initial weights (.npz)")] = None,
    superlink: Annotated[
        str, typer.Option(help="external SuperLink HOST:PORT (its SuperNodes are the agents')")
    ] = "",
    local: Annotated[int, typer.Option(help="start N simulated devices on loopback instead")] = 0,
    profiles: Annotated[str, typer.Option(help="profiles of --local devices")] = "rpi4",
    lr: float = 0.05,
    local_epochs: Annotated[int, typer.Option("--local-epochs")] = 1,
    proximal_mu: Annotated[float, typer.Option("--proximal-mu")] = 0.01,
    dp: Annotated[str, typer.Option(help="none | server-fixed (Flower's DP wrapper)")] = "none",
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
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune MODEL on the fleet for R rounds, printing each round as it finishes."""
    from coordinator.fl.selection import parse_selection
    from coordinator.fl.serverapp import STRATEGIES

    if model not in MODELS:
        raise fail(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    if strategy not in STRATEGIES:
        raise fail(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    parse_selection(select)  # a bad expression fails here, before anything starts
    if dp not in ("none", "server-fixed"):
        raise fail(f"--dp must be none or server-fixed, got {dp!r}")
    if bool(superlink) == bool(local):
        raise fail("give exactly one of --superlink HOST:PORT or --local N")
    run_name = name or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).absolute()
    if run_dir.exists():
        raise fail(f"run {run_name!r} already exists in {runs_dir}")
    run_dir.mkdir(parents=True)
    config: dict[str, object] = {
        "num-rounds": rounds, "strategy": strategy, "min-devices": min_devices, "select": select,
        "arch": model, "lr": lr, "local-epochs": local_epochs, "proximal-mu": proximal_mu,
        "dp": dp, "dp-noise": dp_noise, "dp-clip": dp_clip, "round-timeout": round_timeout,
        "out-dir": str(run_dir),
    }  # fmt: skip
    if init is not None:
        config["init-path"] = str(init.absolute())
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    fed = None
    try:
        if local:
            from coordinator.fl.local import LocalFederation

            fed = LocalFederation(
                run_dir / "federation", num_nodes=local, profiles=profiles.split(",")
            ).start()
            config["test-path"] = str(fed.root / "test.npz")
            address = fed.address
        else:
            address = superlink
        from coordinator.fl.superlink import submit, write_app

        app = write_app(run_dir / "app", config)
        meta: dict[str, object] = {
            "superlink": address,
            "flwr_home": str(run_dir / "flwr-home"),
            "state": "submitted",
        }
        (run_dir / "meta.json").write_text(json.dumps(meta))
        run_id = submit(app, run_dir / "flwr-home", address)
        meta["flwr_run_id"] = run_id
        (run_dir / "meta.json").write_text(json.dumps(meta))
        if not as_json:
            err_console.print(f"run {run_name} (Flower run {run_id}) on {address}")
        report = None
        if redis_url:

            def report(new: list[dict[str, Any]], failed: bool) -> None:
                _report_rounds(redis_url, model, run_name, new, failed)

        doc = _follow(run_dir, as_json, timeout, report)
    finally:
        if fed is not None:
            fed.stop()
    if as_json:
        print_json(_summary(doc))
        return
    if doc["state"] != "succeeded":
        raise fail(f"run {run_name} {doc['state']}: {doc.get('reason') or ''}")
    fin, ini = doc.get("final", {}), doc.get("initial", {})
    if fin.get("test_acc") is not None and ini.get("test_acc") is not None:
        out.print(f"test accuracy {100 * ini['test_acc']:.1f}% -> {100 * fin['test_acc']:.1f}%")
    out.print(f"weights: {run_dir / 'final.npz'}", highlight=False)


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
def ls(runs_dir: RunsDirOpt = DEFAULT_RUNS, as_json: JsonOpt = False) -> None:
    """List federated runs."""
    docs = [_load(p) for p in _runs(runs_dir)]
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
    as_json: JsonOpt = False,
) -> None:
    """Show a run's rounds (participants, loss, accuracy) and state."""
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
    as_json: JsonOpt = False,
) -> None:
    """Stop a run on its SuperLink (``flwr stop``) and mark it stopped."""
    from coordinator.fl.superlink import stop_run

    meta_path = runs_dir / name / "meta.json"
    if not meta_path.exists():
        raise fail(f"no run {name!r} in {runs_dir}")
    meta = json.loads(meta_path.read_text())
    if "flwr_run_id" not in meta:
        raise fail(f"run {name!r} was never submitted")
    stop_run(Path(meta["flwr_home"]), meta["superlink"], int(meta["flwr_run_id"]))
    meta["state"] = "stopped"
    meta_path.write_text(json.dumps(meta))
    if as_json:
        print_json({"name": name, "state": "stopped"})
    else:
        out.print(f"{name}: stopped")

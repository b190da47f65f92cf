"""``edgefleet train simulate``: our ServerApp/ClientApp on Flower's Simulation Engine (Ray).

A verb of its own rather than ``train start --simulate N``: ``start`` runs on a real fleet
(over the API, a SuperLink, or ``--local`` processes) and most of its options -- the
coordinator, registering and deploying the result, SecAgg+, Redis records -- mean nothing for
virtual devices, while a simulation needs options a fleet has no use for (the profile mix,
non-IID groups, rows per device, CPUs for Ray). Each verb validates only what it runs.

The work is in :mod:`edgefleet.devtools.fl_sim`, imported when the command runs (Ray and
Flower's simulation runtime are heavy to import).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape

from edgefleet.cli.common import JsonOpt, err_console, fail, one_line_errors, out, print_json
from edgefleet.cli.completion import complete_profiles
from edgefleet.cli.train_follow import round_line

__all__ = ["simulate"]

SIM_STRATEGIES = ("heterofl", "fedavg", "fedprox")
#: the model families a simulation trains (``edgefleet.devtools.fl_sim_tasks.MODELS``, kept
#: here too so ``--help`` needs no import of the simulation stack)
SIM_MODELS = ("mlp", "resnet-8", "ds-cnn-kws")


def _round_line(r: dict[str, Any], total: int) -> str:
    """`train start`'s round line, with the devices per fine-tuning scope for a conv net."""
    line = round_line(r, total)
    scopes = r.get("scopes")
    if scopes:
        line += "; scopes " + ", ".join(f"{k} {v}" for k, v in scopes.items())
    return line


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` view: the run's outcome, its rounds (without per-device maps) and what
    the simulation cost."""
    devices = doc.get("devices", {})
    by_profile: dict[str, dict[str, int]] = {}
    for d in devices.values():
        row = by_profile.setdefault(str(d.get("profile")), {"devices": 0, "selected": 0})
        row["devices"] += 1
        row["selected"] += int(bool(d.get("selected")))
    rounds = [
        {k: v for k, v in r.items() if k != "participants" and not k.startswith("device_")}
        | {"participants": len(r.get("participants", []))}
        for r in doc.get("rounds", [])
    ]
    return {
        "state": doc.get("state"),
        "reason": doc.get("reason"),
        "model": doc.get("settings", {}).get("arch"),
        "strategy": doc.get("settings", {}).get("strategy"),
        "select": doc.get("settings", {}).get("select"),
        "profiles": dict(sorted(by_profile.items())),
        "initial": doc.get("initial"),
        "rounds": rounds,
        "final": doc.get("final"),
        "simulation": doc.get("simulation"),
    }


@one_line_errors
def simulate(
    devices: Annotated[
        int, typer.Option("--devices", "-n", help="virtual devices (Flower SuperNodes)")
    ] = 100,
    rounds: Annotated[int, typer.Option("--rounds", help="federated rounds")] = 3,
    fraction: Annotated[
        float,
        typer.Option("--fraction", help="share of the selected devices that train each round"),
    ] = 0.1,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="mlp or resnet-8 on digits, ds-cnn-kws on the kws set (one voice per device, "
            "raw audio)",
        ),
    ] = "mlp",
    strategy: Annotated[
        str | None,
        typer.Option(
            click_type=click.Choice(SIM_STRATEGIES),
            help="heterofl: each device trains the width its RAM fits (default: heterofl; "
            "fedavg for ds-cnn-kws)",
            show_default=False,
        ),
    ] = None,
    select: Annotated[
        str,
        typer.Option(
            "--select", metavar="SELECTOR", help="which devices train, e.g. 'battery>=20'"
        ),
    ] = "",
    mix: Annotated[
        str,
        typer.Option(
            "--mix",
            metavar="PROFILE:WEIGHT,...",
            help="catalog profiles and their shares of the fleet (default: phones, Pis, a "
            "Jetson, MCUs)",
            autocompletion=complete_profiles,
            show_default=False,
        ),
    ] = "",
    groups: Annotated[
        int, typer.Option("--groups", help="non-IID groups (sites / user populations)")
    ] = 20,
    alpha: Annotated[
        float, typer.Option("--alpha", help="label skew between groups (Dirichlet; small = strong)")
    ] = 0.5,
    samples: Annotated[int, typer.Option("--samples", help="local training rows per device")] = 32,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="default: 0.1 mlp, 0.05 conv nets", show_default=False),
    ] = None,
    local_epochs: Annotated[
        int | None,
        typer.Option("--local-epochs", help="default: 5 mlp, 2 conv nets", show_default=False),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", show_default=False)] = None,
    cpus: Annotated[int, typer.Option("--cpus", help="CPUs Ray may use (one actor each)")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="where shards and the run record go (default: a new temporary dir, kept)",
            resolve_path=True,
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="where the kws set is cached (default: ~/.cache/edgefleet)",
            show_default=False,
        ),
    ] = None,
    kws_size: Annotated[
        str, typer.Option("--kws-size", help="tiny, default or large (the kws set's size)")
    ] = "default",
    base_voices: Annotated[
        int,
        typer.Option(
            "--base-voices",
            help="ds-cnn-kws: training voices it is pre-trained on before the run (no device "
            "holds them; 0: from random weights)",
        ),
    ] = 6,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            click_type=click.Choice(("superlink", "python-api")),
            help="superlink: `flwr run` against a simulation SuperLink (Flower's recommended "
            "path); python-api: the deprecated run_simulation",
        ),
    ] = "superlink",
    verbose: Annotated[bool, typer.Option("--verbose", help="Flower's and Ray's logs")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run federated rounds of our ServerApp/ClientApp over N virtual devices (Flower's
    Simulation Engine on Ray), each with a catalog profile, a battery and a non-IID shard."""
    from edgefleet.devtools.fl_sim import DEFAULT_MIX, SimOptions

    opts = SimOptions(
        devices=devices, rounds=rounds, fraction=fraction, model=model, strategy=strategy,
        select=select, mix=mix or DEFAULT_MIX, groups=groups, alpha=alpha, samples=samples,
        lr=lr, local_epochs=local_epochs, batch_size=batch_size, cpus=cpus, seed=seed,
        data_dir=data_dir, kws_size=kws_size, base_voices=base_voices, engine=engine,
    )  # fmt: skip
    try:
        opts.check()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    try:
        import ray  # noqa: F401  (the simulation extra)
    except ImportError:
        # escaped: the console would read [simulation] as markup
        raise fail(
            escape("Flower's Simulation Engine needs Ray: pip install 'edgefleet[simulation]'")
        ) from None
    from edgefleet.devtools.fl_sim import run_simulation

    root = work_dir or Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
    if not as_json:
        err_console.print(f"{devices} virtual devices, {rounds} round(s); record in {root}")

    def progress(r: dict[str, Any]) -> None:
        if not as_json:
            out.print(_round_line(r, rounds), highlight=False)

    try:
        doc = run_simulation(opts, root, progress, verbose=verbose)
    except ValueError as exc:  # the task's data cannot serve the options (e.g. too few voices)
        raise fail(str(exc), 2) from None
    except (RuntimeError, TimeoutError) as exc:  # the engine failed before the run ended
        raise fail(f"simulated run failed: {exc}") from None
    summary = _summary(doc)
    if as_json:
        print_json(summary)
    else:
        sim = summary["simulation"] or {}
        selected = sum(p["selected"] for p in summary["profiles"].values())
        out.print(
            f"{summary['state']}: {selected} of {devices} devices selected; "
            f"{sim.get('run_seconds', 0):.1f}s on {cpus} CPU(s), peak RSS "
            f"{sim.get('peak_rss_bytes', 0) / 2**20:.0f} MiB (PSS "
            f"{sim.get('peak_pss_bytes', 0) / 2**20:.0f} MiB) over "
            f"{sim.get('peak_rss_processes', 0)} processes",
            highlight=False,
        )
    if summary["state"] != "succeeded":
        # the record's reason is "ExceptionType: message"; the type says nothing to an operator
        reason = re.sub(r"^[A-Za-z]+Error: ", "", str(summary.get("reason")))
        raise fail(f"simulated run {summary['state']}: {reason}")

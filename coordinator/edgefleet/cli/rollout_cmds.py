"""``edgefleet deploy``, ``edgefleet rollout ...`` and ``edgefleet devices explain``."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    EXIT_ROLLED_BACK,
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
from edgefleet.cli.completion import DEPLOY_STRATEGIES, complete_models
from edgefleet.client import render
from edgefleet.client.render import rollout_to_dict
from edgefleet.selectors import EXAMPLES, ROLLOUT_FIELDS, SelectionError, parse_selection
from edgefleet.v1 import admin_pb2

rollout_app = typer.Typer(help="Watch and steer rollouts.", no_args_is_help=True)
TERMINAL = ("succeeded", "rolled_back")


def _fractions(text: str) -> list[float]:
    """``--waves`` percentages -> fractions; errors speak the flag's unit (percent)."""
    try:
        percents = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise usage_error(f"--waves expects percentages like 5,25,100, got {text!r}") from None
    if not percents or any(not (0 < p <= 100) for p in percents):  # also refuses NaN
        raise usage_error(f"--waves are percentages in (0, 100], e.g. 5,25,100; got {text!r}")
    if percents != sorted(set(percents)):
        raise usage_error(f"--waves must increase (each % is cumulative), got {text!r}")
    return [p / 100 for p in percents]


_ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # what the coordinator accepts


def _shown(text: str, limit: int = 24) -> str:
    """An id as it may appear in a message: never a pasted 70 KB blob."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _check_rollout_id(value: str) -> str:
    """Refuse a malformed rollout id with one line and exit 2, before any call."""
    if not _ROLLOUT_ID_RE.match(value):
        raise usage_error(
            f"malformed rollout id {_shown(value)}: at most 64 of [A-Za-z0-9._-], "
            "e.g. ro-3f2a9c1b7e (edgefleet rollout ls)"
        )
    return value


RolloutIdArg = Annotated[
    str,
    typer.Argument(help="rollout id (ro-..., edgefleet rollout ls)", callback=_check_rollout_id),
]


def _canary_fraction(percent: float) -> float:
    """``--canary`` percent -> fraction (the coordinator wants 0 < f < 1)."""
    if not 0 < percent < 100:  # also refuses NaN
        raise usage_error(
            f"--canary is a percentage of the selected devices in (0, 100), got {percent:g}"
        )
    return percent / 100


def _check_to(value: str) -> str:
    """``--to`` is a selector (edgefleet.selectors): a bad one is a usage error, before any RPC."""
    if not value.strip():
        raise usage_error(f"--to needs a selector ({EXAMPLES})")
    try:
        parse_selection(value, ROLLOUT_FIELDS)
    except SelectionError as exc:
        raise usage_error(f"--to: {exc}") from None
    return value


def deploy(
    model: Annotated[
        str, typer.Argument(help="model name (edgefleet models ls)", autocompletion=complete_models)
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="devices: all | profile:NAME | label:KEY=VALUE | device:ID (comma = or), or an "
            "expression such as 'ram>=512MiB and labels.site=lab' (README: Selecting devices)",
            callback=_check_to,
        ),
    ] = "all",
    strategy: Annotated[
        str,
        typer.Option(click_type=click.Choice(DEPLOY_STRATEGIES), help="how devices are staged"),
    ] = "all",
    waves: Annotated[str, typer.Option(help="wave sizes in % for --strategy waves")] = "5,25,100",
    canary: Annotated[float, typer.Option(help="canary size in % for --strategy canary")] = 10.0,
    soak: Annotated[float, typer.Option(help="seconds a wave must stay healthy")] = 30.0,
    max_failed: Annotated[int, typer.Option(help="activation failures tolerated")] = 0,
    max_error_rate: Annotated[float, typer.Option(help="inference error rate limit")] = 0.05,
    max_latency_ratio: Annotated[
        float, typer.Option(help="roll back if latency exceeds prediction by this factor")
    ] = 3.0,
    wave_timeout: Annotated[float, typer.Option(help="seconds for a wave to activate")] = 600.0,
    min_inferences: Annotated[
        int | None,
        typer.Option(
            help="requests each device must serve with the new variant before its wave can "
            "pass (too few: the wave holds, then times out and rolls back); default: the "
            "coordinator's, 0 = no minimum"
        ),
    ] = None,
    max_ttft_ms: Annotated[
        float,
        typer.Option(
            help="language models: roll back if a device's median time to first token "
            "exceeds this many ms (0 = no gate)"
        ),
    ] = 0.0,
    min_tokens_per_s: Annotated[
        float,
        typer.Option(
            help="language models: roll back if a device's median decode rate falls below "
            "this many tokens/s (0 = no gate)"
        ),
    ] = 0.0,
    accuracy_tolerance: Annotated[
        float, typer.Option(help="points of accuracy traded for speed (selection)")
    ] = 0.5,
    latency_slo_ms: Annotated[float, typer.Option(help="per-inference latency SLO, 0 = none")] = 0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Deploy the best-fitting variant of MODEL to each selected device, in stages.

    A language model's devices each get a variant and the longest context they hold."""
    for flag, value in (("--max-ttft-ms", max_ttft_ms), ("--min-tokens-per-s", min_tokens_per_s)):
        if not value >= 0 or value == float("inf"):  # also refuses NaN
            raise usage_error(f"{flag} must be a finite number >= 0 (0 = no gate), got {value:g}")
    request = admin_pb2.CreateRolloutRequest(
        model=model,
        selector=to,
        strategy=strategy,
        waves=_fractions(waves) if strategy == "waves" else [],
        canary_fraction=_canary_fraction(canary) if strategy == "canary" else 0.0,
        gate=admin_pb2.RolloutGate(
            soak_seconds=soak,
            max_failed_devices=max_failed,
            max_error_rate=max_error_rate,
            max_latency_ratio=max_latency_ratio,
            wave_timeout_seconds=wave_timeout,
            **({} if min_inferences is None else {"min_inferences": min_inferences}),
            max_ttft_ms=max_ttft_ms,
            min_tokens_per_s=min_tokens_per_s,
        ),
        accuracy_tolerance=accuracy_tolerance / 100,
        latency_slo_ms=latency_slo_ms,
    )
    with client(coordinator, admin_token) as c:
        rollout = c.create_rollout(request)
    if as_json:
        print_json(rollout_to_dict(rollout))
        return
    out.print(rollout_table(rollout))
    err_console.print(f"follow it with: edgefleet rollout status {rollout.id} --watch")


def rollout_table(r: admin_pb2.Rollout) -> Table:
    table = Table(
        title=f"rollout {r.id}: {r.model} -> {r.selector} [{r.state}] "
        f"wave {r.current_wave + 1}/{len(r.waves)} - {r.message}",
        title_justify="left",
    )
    for col in (
        "DEVICE",
        "NAME",
        "PROFILE",
        "WAVE",
        "VARIANT",
        "RECIPE",
        "RUNTIME",
        "PRED MS",
        "STATUS",
    ):
        table.add_column(col)
    styles = {"active": "green", "failed": "red", "rolled_back": "yellow"}
    for d in r.devices:
        style = styles.get(d.status, "")
        status = f"[{style}]{d.status}[/{style}]" if style else d.status
        if d.detail:
            status += f" ({d.detail})"
        table.add_row(
            d.device_id,
            d.name,
            d.profile,
            str(d.wave + 1),
            d.variant_id[:12],
            f"{d.recipe} (context {d.context_limit})" if d.context_limit else d.recipe,
            d.runtime,
            f"{d.predicted_latency_ms:.3g}",
            status,
        )
    for s in r.skipped:
        table.add_row(s.device_id, s.name, "", "-", "-", "-", "-", "-", f"skipped: {s.reason}")
    return table


@rollout_app.command("ls")
@one_line_errors
def rollout_ls(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    with client(coordinator, admin_token) as c:
        rollouts = c.list_rollouts()
    if as_json:
        print_json(
            [{k: v for k, v in rollout_to_dict(r).items() if k != "devices"} for r in rollouts]
        )
        return
    table = Table(title=f"{len(rollouts)} rollout(s)", title_justify="left")
    for col in ("ID", "MODEL", "TO", "STRATEGY", "STATE", "WAVE", "DEVICES", "MESSAGE"):
        table.add_column(col)
    for r in rollouts:
        table.add_row(
            r.id,
            r.model,
            r.selector,
            r.strategy,
            r.state,
            f"{r.current_wave + 1}/{len(r.waves)}",
            str(len(r.devices)),
            r.message,
        )
    out.print(table)


@rollout_app.command("status")
@one_line_errors
def rollout_status(
    rollout_id: RolloutIdArg,
    watch: Annotated[bool, typer.Option(help="follow with a progress bar until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="give up watching after this many seconds")] = 0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout; with --watch, follow it until it succeeds or rolls back."""
    with client(coordinator, admin_token) as c:
        rollout = c.get_rollout(rollout_id)
        if watch:
            rollout = _watch(c, rollout, timeout)
    if as_json:
        print_json(rollout_to_dict(rollout))
    else:
        out.print(rollout_table(rollout))
    if watch and rollout.state == "rolled_back":
        raise typer.Exit(EXIT_ROLLED_BACK)


def _watch(c: Any, rollout: admin_pb2.Rollout, timeout: float) -> admin_pb2.Rollout:
    from rich.progress import Progress

    deadline = time.monotonic() + timeout if timeout > 0 else None
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("active", total=max(1, len(rollout.devices)))
        while rollout.state not in TERMINAL:
            active = sum(1 for d in rollout.devices if d.status == "active")
            progress.update(
                task,
                completed=active,
                description=f"{rollout.state} wave {rollout.current_wave + 1}/{len(rollout.waves)}",
            )
            if deadline is not None and time.monotonic() > deadline:
                raise fail(f"rollout {rollout.id} still {rollout.state} after {timeout:.0f}s")
            time.sleep(0.5)
            rollout = c.get_rollout(rollout.id)
    return rollout


def _control(action: str) -> Any:
    @one_line_errors
    def command(
        rollout_id: RolloutIdArg,
        coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
        admin_token: AdminTokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        with client(coordinator, admin_token) as c:
            rollout = c.control_rollout(rollout_id, action)
        if as_json:
            print_json(rollout_to_dict(rollout))
        else:
            out.print(f"rollout {rollout.id}: {rollout.state} ({rollout.message})")

    command.__doc__ = {
        "pause": "Stop advancing waves (devices keep what they have).",
        "resume": "Continue a paused rollout.",
        "rollback": "Return every device in the rollout to its previous variant.",
    }[action]
    return command


for _action in ("pause", "resume", "rollback"):
    rollout_app.command(_action)(_control(_action))


def explain(
    device_id: Annotated[str, typer.Argument(help="device id (dev-...)")],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="model to choose a variant of", autocompletion=complete_models
        ),
    ],
    accuracy_tolerance: Annotated[float, typer.Option(help="points of accuracy")] = 0.5,
    latency_slo_ms: Annotated[float, typer.Option(help="latency SLO, 0 = none")] = 0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Show every variant of MODEL against this device: what fits, what not, and why."""
    with client(coordinator, admin_token) as c:
        e = c.explain_device(device_id, model, accuracy_tolerance / 100, latency_slo_ms)
    candidates: list[dict[str, Any]] = [
        {
            "variant": v.variant_id,
            "reason": "fits" if v.fits else "; ".join(v.failures),
            "recipe": v.recipe,
            "precision": v.precision,
            "accuracy": round(v.accuracy, 6),
            "bundle_bytes": v.bundle_bytes,
            "runtime": v.runtime,
            "predicted_latency_ms": round(v.predicted_latency_ms, 6),
            "fits": v.fits,
            "failures": list(v.failures),
            "chosen": v.chosen,
        }
        for v in e.candidates
    ]
    if as_json:
        print_json(
            {
                "device_id": e.device_id,
                "model": e.model,
                "chosen": e.chosen_variant or None,
                "reason": e.reason,
                "device_macs_per_second": e.device_macs_per_second,
                "latency_correction": e.latency_correction,
                "candidates": candidates,
            }
        )
        return
    table = Table(
        title=f"{e.model} on {e.device_id} ({e.device_macs_per_second / 1e9:.2f} GMAC/s, "
        f"latency correction x{e.latency_correction:.2f})",
        title_justify="left",
    )
    for col in (
        "",
        "VARIANT",
        "RECIPE",
        "PRECISION",
        "ACCURACY",
        "SIZE",
        "RUNTIME",
        "PRED MS",
        "VERDICT",
    ):
        table.add_column(col)
    for v in sorted(candidates, key=lambda x: (not x["chosen"], not x["fits"], -x["accuracy"])):
        verdict = (
            "[green]fits[/green]" if v["fits"] else "[red]" + "; ".join(v["failures"]) + "[/red]"
        )
        table.add_row(
            "*" if v["chosen"] else "",
            str(v["variant"])[:12],
            str(v["recipe"]),
            str(v["precision"]),
            f"{v['accuracy']:.2%}",
            render.human_bytes(int(v["bundle_bytes"])),
            str(v["runtime"]),
            f"{v['predicted_latency_ms']:.3g}",
            verdict,
        )
    out.print(table)
    out.print(e.reason, highlight=False)

"""``edgefleet train start|status|ls|stop``: federated fine-tuning on Flower's Deployment Engine.

Two paths. **Over the API** (``train_remote``), whenever a coordinator is configured
(``--coordinator``, ``$EDGEFLEET_COORDINATOR`` or a context) and neither ``--local``,
``--superlink`` nor ``--runs-dir`` is given: any replica submits the run to the fleet's one
SuperLink and the ServerApp records it in the fleet's Redis, so the verbs work from any host
and any replica, with no Flower, data dir or run directory here. **Locally** (below), for
``--local N`` federations, an explicit ``--superlink``, or a coordinator on this host's data dir:

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
A registered *language model* (byte-lm) runs federated LoRA instead (``--lora-rank``,
``--lora-alpha``, ``--lora-targets``, ``--steps``; ``train_validate``): adapters only on the
wire, each round's line in held-out perplexity, the result registered as ``MODEL-ft-RUN``.

``train start`` is four steps, each its own module: validate (``train_validate``: refuse before
anything starts) -> submit (``train_submit``) -> follow (``train_follow``) -> publish
(``train_publish``). This module holds the commands and their options, and the recorder that puts
finished rounds in the fleet's state on the local path (the CLI's one write to Redis, named in
the import contract; over the API the ServerApp writes them itself).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from edgefleet.cli import train_remote
from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
    err_console,
    fail,
    one_line_errors,
    out,
    print_json,
)
from edgefleet.cli.completion import DEPLOY_STRATEGIES, complete_profiles
from edgefleet.cli.train_follow import (
    follow,
    follow_rounds,
    is_lora,
    list_runs,
    load_record,
    round_line,
    summarize,
)
from edgefleet.cli.train_publish import publish
from edgefleet.cli.train_simulate import simulate
from edgefleet.cli.train_submit import stop_submitted, submit
from edgefleet.cli.train_validate import (
    DP_MODES,
    FL_STRATEGIES,
    MODELS,
    StartOptions,
    complete_model,
    resolve_runs_dir,
    validate,
)

train_app = typer.Typer(help="Federated fine-tuning (Flower).", no_args_is_help=True)
# virtual devices on Flower's Simulation Engine (Ray): a verb of its own, see train_simulate
train_app.command("simulate")(simulate)

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
DEFAULT_RUNS: Path | None = None  # DATA_DIR/fl-runs, made absolute by resolve_runs_dir
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


# --- the fleet's record of rounds ----------------------------------------------------------


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
                    len(r.get("participants", [])), time.time(), int(r.get("bytes_up") or 0),
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


def _given(param: str) -> bool:
    """Whether option ``param`` was on the command line (or its environment), not defaulted."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(param) if ctx is not None else None
    return source not in (None, click.core.ParameterSource.DEFAULT)


# --- commands ----------------------------------------------------------------------------


@train_app.command("start")
@one_line_errors
def start(
    model: Annotated[
        str,
        typer.Argument(
            help=f"{', '.join(MODELS)}, or a registered model of one of them",
            autocompletion=complete_model,
        ),
    ],
    rounds: Annotated[int, typer.Option("--rounds", min=1)] = 3,
    strategy: Annotated[
        str, typer.Option(click_type=click.Choice(FL_STRATEGIES), help="aggregation")
    ] = "fedavg",
    min_devices: Annotated[int, typer.Option("--min-devices", min=1)] = 2,
    select: Annotated[
        str,
        typer.Option(
            "--select",
            metavar="SELECTOR",
            help="which devices train, e.g. 'battery>30 and ram>=512MiB' or profile:rpi4",
        ),
    ] = "",
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
    buffer: Annotated[
        int, typer.Option("--buffer", help="fedbuff: aggregate every K arrivals", metavar="K")
    ] = 4,
    max_staleness: Annotated[
        int,
        typer.Option(
            "--max-staleness", metavar="S", help="fedbuff: drop updates more than S versions old"
        ),
    ] = 4,
    update_codec: Annotated[
        str,
        typer.Option(
            "--update-codec", help="devices' updates: none | q8 | q4 | topk:F (error feedback)"
        ),
    ] = "none",
    secure_agg: Annotated[
        bool,
        typer.Option("--secure-agg", help="Flower's SecAgg+: the server sees only the sum"),
    ] = False,
    lora_rank: Annotated[
        int | None,
        typer.Option("--lora-rank", help="a registered LM: LoRA adapters' rank [default: 8]"),
    ] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option("--lora-alpha", help="a registered LM: scale numerator (alpha/rank) [16]"),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets", help="a registered LM: adapted linears, of q,k,v,proj,up,down [q,v]"
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="a registered LM: local adapter steps per round [20]"),
    ] = None,
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
            "--deploy",
            metavar="SELECTOR",
            help="roll the result out to these devices (the --select language), e.g. all | "
            "profile:rpi4 | 'ram>=1GiB and labels.site=lab'",
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
    """Fine-tune MODEL on the fleet for R rounds, printing each round as it finishes.

    With a coordinator configured (and no --local, --superlink or --runs-dir), the run goes
    through its TrainingService: no Flower, data dir or SuperLink host needed here."""
    options = StartOptions(
        model=model, rounds=rounds, strategy=strategy, min_devices=min_devices, select=select,
        init=init, superlink=superlink, superlink_ca=superlink_ca, local=local,
        profiles=profiles, lr=lr, local_epochs=local_epochs, proximal_mu=proximal_mu, dp=dp,
        dp_noise=dp_noise, dp_clip=dp_clip, round_timeout=round_timeout, name=name,
        runs_dir=runs_dir, timeout=timeout, redis_url=redis_url, register=register,
        rebuild=rebuild, deploy=deploy, deploy_strategy=deploy_strategy,
        latency_runs=latency_runs, data_dir=data_dir, coordinator=coordinator,
        admin_token=admin_token, as_json=as_json, buffer=buffer, max_staleness=max_staleness,
        update_codec=update_codec, secure_agg=secure_agg, lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_targets=lora_targets, steps=steps, lr_given=_given("lr"),
    )  # fmt: skip
    if not local and not superlink and runs_dir is None and train_remote.coordinator_configured():
        train_remote.start(options)
        return
    plan = validate(options)
    with submit(plan) as submission:  # a --local federation runs until the block ends
        reporter = (
            _RoundReporter(plan.redis_url, model, plan.run_name, as_json)
            if plan.redis_url
            else None
        )
        doc = follow(plan, submission, reporter)
    publish(plan, doc)


@train_app.command("ls")
@one_line_errors
def ls(
    runs_dir: RunsDirOpt = DEFAULT_RUNS, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """List federated runs (the coordinator's, when one is configured and no --runs-dir)."""
    if runs_dir is None and train_remote.coordinator_configured():
        train_remote.ls(as_json)
        return
    docs = [load_record(p) for p in list_runs(resolve_runs_dir(runs_dir, data_dir))]
    if as_json:
        print_json([summarize(d) for d in docs])
        return
    table = Table("NAME", "STATE", "STRATEGY", "ROUNDS", "TEST ACC", "SUPERLINK")
    for d in docs:
        acc = (d.get("final") or {}).get("test_acc")
        score = "-" if acc is None else f"{100 * acc:.1f}%"
        if is_lora(d):  # a language model: held-out perplexity, not accuracy
            ppl = summarize(d)["perplexity"]["final"]
            score = "-" if ppl is None else f"ppl {ppl:.3f}"
        total = d.get("settings", {}).get("num_rounds", "?")
        table.add_row(
            d["name"], d["state"], str(d.get("settings", {}).get("strategy", "")),
            f"{len(d.get('rounds', []))}/{total}", score, str(d.get("superlink", "")),
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
    if runs_dir is None and train_remote.coordinator_configured():
        train_remote.status(name, watch, as_json)
        return
    runs_dir = resolve_runs_dir(runs_dir, data_dir)
    run_dir = runs_dir / name
    if not (run_dir / "meta.json").exists():
        raise fail(f"no run {name!r} in {runs_dir}")
    doc = follow_rounds(run_dir, as_json, 3600) if watch else load_record(run_dir)
    if as_json:
        print_json(summarize(doc))
        return
    total = int(doc.get("settings", {}).get("num_rounds", 0))
    if not watch:
        for r in doc.get("rounds", []):
            out.print(round_line(r, total, is_lora(doc)), highlight=False)
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
    if runs_dir is None and train_remote.coordinator_configured():
        train_remote.stop(name, as_json)
        return
    stop_submitted(resolve_runs_dir(runs_dir, data_dir), name)
    if as_json:
        print_json({"name": name, "state": "stopped"})
    else:
        out.print(f"{name}: stopped")

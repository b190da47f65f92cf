"""``train start|status|ls|stop`` over the API: the coordinator runs the federation (issue 18).

When a coordinator is configured (``--coordinator``, ``$EDGEFLEET_COORDINATOR`` or a context)
and no local target is asked for (``--local N``, ``--superlink HOST:PORT``, ``--runs-dir``),
the train verbs call TrainingService on any replica: the replica submits the run to the fleet's
SuperLink, the ServerApp records every round in the fleet's Redis, and this module only prints
what the replica streams back. So the CLI needs neither Flower, nor the coordinator's data dir,
nor the SuperLink's host: ``train status`` from a laptop shows a run started from anywhere.

``--deploy SELECTOR`` registers the result (``MODEL-ft-NAME``, by the ServerApp) and, once the
run succeeded, rolls it out through AdminService as ``edgefleet deploy`` would: the CLI drives this
last step over the API, so it needs to stay attached until the run ends (as the local ``train
start`` does). Refused in one line before anything starts: ``--rebuild`` (it re-runs a
registered model's recipes, and over the API MODEL is an architecture: build the result with
``edgefleet models build MODEL-ft-NAME``, a job), registered classifiers as MODEL. A
registered language model is accepted: the coordinator runs federated LoRA of it (the
``--lora-*`` settings travel in StartRunRequest; the ServerApp prepares the base and registers
the result), and the round lines say held-out perplexity, read from the run's record.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgefleet.cli.common import (
    _given_flags,
    ca_certificate,
    err_console,
    fail,
    out,
    print_json,
    settings,
    usage_error,
)
from edgefleet.cli.train_follow import is_lora, perplexity_curve, round_line
from edgefleet.cli.train_validate import StartOptions, check_numbers, lora_given, lora_plan
from edgefleet.client.training_client import TrainingClient
from edgefleet.v1 import training_pb2


def coordinator_configured() -> bool:
    """Whether the operator named a coordinator (flag, environment or context)."""
    return bool(
        _given_flags().get("coordinator")
        or os.environ.get("EDGEFLEET_COORDINATOR")
        or settings().context
    )


def training_client() -> TrainingClient:
    chosen = settings()
    return TrainingClient(chosen.coordinator, chosen.admin_token, ca_cert=ca_certificate())


def run_to_dict(run: training_pb2.TrainingRun) -> dict[str, Any]:
    """The ``--json`` view of a run (the same keys as a local run's summary)."""
    record = json.loads(run.record_json) if run.record_json else {}
    return {
        "name": run.name,
        "state": run.state,
        "reason": run.reason or None,
        "superlink": run.superlink,
        "flwr_run_id": run.flwr_run_id or None,
        "strategy": run.strategy,
        "model": run.model,
        "rounds": record.get("rounds", []),
        "initial": record.get("initial"),
        "final": record.get("final"),
        "registered_model": run.registered_model or None,
        "register_error": record.get("register_error"),
        **({"perplexity": perplexity_curve(record), "registered_as": record.get("registered_as")}
           if is_lora(record) else {}),
    }  # fmt: skip


def _round_dict(r: training_pb2.TrainingRound) -> dict[str, Any]:
    def opt(name: str) -> float | None:
        return getattr(r, name) if r.HasField(name) else None

    return {
        "round": r.round, "participants": list(r.participants), "train_loss": opt("train_loss"),
        "client_eval_acc": opt("client_eval_acc"), "test_acc": opt("test_acc"),
        "seconds": r.seconds,
    }  # fmt: skip


def _record(run: training_pb2.TrainingRun) -> dict[str, Any]:
    return json.loads(run.record_json) if run.record_json else {}


def _lora(run: training_pb2.TrainingRun) -> bool:
    return is_lora(_record(run))


def _rounds(run: training_pb2.TrainingRun) -> list[dict[str, Any]]:
    """The run's rounds: the record's (a LoRA round's per-device held-out loss is there), else
    the wire's."""
    record = _record(run)
    if is_lora(record) and len(record.get("rounds") or []) == len(run.rounds):
        return list(record.get("rounds") or [])
    return [_round_dict(r) for r in run.rounds]


def start(o: StartOptions) -> None:
    """Validate, StartRun, then follow WatchRun's stream to the outcome (exit 1 if not
    succeeded)."""
    check_numbers(o)
    lora = lora_plan(o) if lora_given(o) else None  # bad numbers/targets: exit 2, here
    if o.rebuild:
        raise usage_error(
            "--rebuild re-runs a registered model's recipes, and over the API MODEL is an "
            "architecture: build the result as a job with `edgefleet models build "
            "MODEL-ft-NAME --recipes ...` (use --register or --deploy to register it)"
        )
    init = b""
    if o.init is not None:
        try:
            init = Path(o.init).read_bytes()
        except OSError as exc:
            raise fail(f"cannot read --init {o.init}: {exc.strerror}") from None
    request = training_pb2.StartRunRequest(
        model=o.model, rounds=o.rounds, strategy=o.strategy, min_devices=o.min_devices,
        select=o.select, lr=o.lr if o.lr_given else 0.0,  # 0: the model family's default
        local_epochs=o.local_epochs, proximal_mu=o.proximal_mu,
        dp=o.dp, dp_noise=o.dp_noise, dp_clip=o.dp_clip, round_timeout_seconds=o.round_timeout,
        name=o.name, register=o.register or bool(o.deploy), init_weights=init, buffer=o.buffer,
        max_staleness=o.max_staleness, update_codec=o.update_codec, secure_agg=o.secure_agg,
    )  # fmt: skip
    if lora is not None:  # a registered LM (the coordinator checks it is one): LoRA settings
        request.lora_rank, request.lora_alpha = lora.rank, lora.alpha
        request.lora_targets.extend(lora.targets)
        request.lora_steps = lora.steps
    with closing(training_client()) as c:
        run = c.start_run(request)
        if not o.as_json:
            err_console.print(
                f"run {run.name} (Flower run {run.flwr_run_id}) on {run.superlink}, "
                f"via {c.address}",
                highlight=False,
            )
        run = _follow(c, run.name, o.as_json, o.timeout)
    rollout = _deploy(run, o) if o.deploy and run.state == "succeeded" else None
    _finish(run, o.as_json, rollout)


def _deploy(run: training_pb2.TrainingRun, o: StartOptions) -> dict[str, Any]:
    """Roll the registered result out to ``--deploy`` (AdminService.CreateRollout, the
    coordinator's default gates, as `edgefleet deploy` without options)."""
    from edgefleet.cli.train_publish import _rollout

    if not run.registered_model:
        error = (json.loads(run.record_json) if run.record_json else {}).get("register_error")
        raise fail(f"run {run.name} succeeded but its result was not registered ({error}); "
                   "nothing deployed")  # fmt: skip
    try:
        return _rollout(run.registered_model, o.deploy, o.deploy_strategy, "", "")
    except Exception as exc:  # the run and its model stand: say how to finish by hand
        raise fail(
            f"registered {run.registered_model}, but the rollout was not created: {exc} "
            f"(retry with `edgefleet deploy {run.registered_model} --to {o.deploy}`)"
        ) from None


def _follow(
    c: TrainingClient, name: str, as_json: bool, timeout: float
) -> training_pb2.TrainingRun:
    shown = 0
    last = None
    for run in c.watch_run(name, timeout):
        if not as_json:
            for r in _rounds(run)[shown:]:
                out.print(round_line(r, run.num_rounds, _lora(run)), highlight=False)
        shown = len(run.rounds)
        last = run
    if last is None:  # pragma: no cover - the stream always sends the run once
        raise fail(f"run {name}: the coordinator sent nothing")
    return last


def _finish(
    run: training_pb2.TrainingRun, as_json: bool, rollout: dict[str, Any] | None = None
) -> None:
    if as_json:
        print_json({**run_to_dict(run), **({"rollout": rollout} if rollout else {})})
        if run.state != "succeeded":
            raise typer.Exit(1)
        return
    if run.state != "succeeded":
        raise fail(f"run {run.name} {run.state}: {run.reason}")
    acc = run.final_test_acc if run.HasField("final_test_acc") else None
    out.print(
        f"{run.name}: succeeded" + ("" if acc is None else f", test accuracy {100 * acc:.1f}%")
    )
    if _lora(run):
        from edgefleet.cli.train_publish import _perplexity_line

        out.print(_perplexity_line(perplexity_curve(_record(run))), highlight=False)
    if run.registered_model:
        out.print(f"registered {run.registered_model}", highlight=False)
    error = (json.loads(run.record_json) if run.record_json else {}).get("register_error")
    if error:
        err_console.print(f"warning: the result was not registered: {error}", highlight=False)
    if rollout:
        out.print(
            f"rollout {rollout['id']}: {run.registered_model} [{rollout['state']}], "
            f"{len(rollout['devices'])} device(s); follow it with: edgefleet rollout status "
            f"{rollout['id']} --watch",
            highlight=False,
        )


def ls(as_json: bool) -> None:
    with closing(training_client()) as c:
        runs = c.list_runs()
    if as_json:
        print_json([run_to_dict(r) for r in runs])
        return
    table = Table("NAME", "STATE", "STRATEGY", "ROUNDS", "TEST ACC", "SUPERLINK")
    for r in runs:
        acc = f"{100 * r.final_test_acc:.1f}%" if r.HasField("final_test_acc") else "-"
        table.add_row(
            r.name, r.state, r.strategy, f"{len(r.rounds)}/{r.num_rounds}", acc, r.superlink
        )
    out.print(table)


def status(name: str, watch: bool, as_json: bool) -> None:
    with closing(training_client()) as c:
        run = _follow(c, name, as_json, 3600) if watch else c.get_run(name)
    if as_json:
        print_json(run_to_dict(run))
        return
    if not watch:
        for r in _rounds(run):
            out.print(round_line(r, run.num_rounds, _lora(run)), highlight=False)
    out.print(f"{run.name}: {run.state} {run.reason}".rstrip(), highlight=False)


def stop(name: str, as_json: bool) -> None:
    with closing(training_client()) as c:
        run = c.stop_run(name)
    if as_json:
        print_json(run_to_dict(run))
    else:
        out.print(f"{run.name}: {run.state}")

"""``edgefleet jobs ls|show|watch|cancel``, and the progress bar ``models build`` follows a job with.

Everything goes through JobService on the coordinator (any replica): the CLI never reads the
job queue or the coordinator's disk. A job runs on ``edgefleet worker`` processes; these verbs
only look at it or stop it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated, Any

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet.cli.common import (
    FLAGS_KEY,
    JsonOpt,
    ca_certificate,
    err_console,
    fail,
    one_line_errors,
    out,
    print_json,
    settings,
)
from edgefleet.client import render
from edgefleet.client.job_client import JobClient, status_name
from edgefleet.v1 import jobs_pb2

__all__ = [
    "coordinator_configured", "follow_job", "job_client", "jobs_app", "parse_duration",
    "run_remote_build",
]  # fmt: skip

jobs_app = typer.Typer(help="Build jobs run by `edgefleet worker` processes.", no_args_is_help=True)
JobArg = Annotated[str, typer.Argument(help="job id (see `edgefleet jobs ls`)")]


def coordinator_configured() -> bool:
    """Whether the operator named a coordinator (flag, environment or context)."""
    ctx = click.get_current_context(silent=True)
    flags = ctx.meta.get(FLAGS_KEY, {}) if ctx is not None else {}
    return bool(
        flags.get("coordinator") or os.environ.get("EDGEFLEET_COORDINATOR") or settings().context
    )


def job_client() -> JobClient:
    chosen = settings()
    return JobClient(chosen.coordinator, chosen.admin_token, ca_cert=ca_certificate())


def job_json(j: jobs_pb2.Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "kind": j.kind,
        "model": j.model,
        "recipes": list(j.recipes),
        "status": status_name(j.status),
        "step": j.step,
        "total": j.total,
        "message": j.message,
        "variant_ids": list(j.variant_ids),
        "error": j.error,
        "attempt": j.attempt,
        "worker": j.worker,
        "created_at": render.iso(j.created_at) if j.HasField("created_at") else None,
        "started_at": render.iso(j.started_at) if j.HasField("started_at") else None,
        "ended_at": render.iso(j.ended_at) if j.HasField("ended_at") else None,
    }


def follow_job(c: JobClient, job_id: str, *, bar: bool = True) -> jobs_pb2.Job:
    """Stream the job's progress (a bar on stderr) until it ends; return its last state."""
    last: jobs_pb2.Job | None = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not bar,
    )
    with progress:
        task = progress.add_task("queued", total=None)
        for job in c.watch_job(job_id):
            last = job
            running = job.status == jobs_pb2.JOB_STATUS_STARTED
            where = f" on {job.worker}" if job.worker and running else ""
            retry = f" (attempt {job.attempt})" if job.attempt > 1 else ""
            progress.update(
                task,
                total=job.total or None,
                completed=job.step,
                description=f"{job.message or status_name(job.status)}{retry}{where}",
            )
    assert last is not None  # the stream always sends the job first
    return last


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TIMEOUT_SECONDS = 7 * 86400  # the server's bound too (edgefleet.coordinator.jobs)


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``2h`` or ``1d`` as whole seconds, 1 s to 7 days; a
    :class:`typer.BadParameter` (a usage error, one line) otherwise."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 90s, 30m, 2h)") from None
    if not 1 <= seconds <= MAX_TIMEOUT_SECONDS:
        raise typer.BadParameter(f"{text!r}: must be 1 s to 7 days")
    return round(seconds)


@one_line_errors
def run_remote_build(
    model: str, recipes: Sequence[str], latency_runs: int, as_json: bool, timeout: int = 0
) -> None:
    """``models build`` against the coordinator: queue the job, follow it, say what it built
    (``timeout``: seconds per attempt, 0 = the coordinator's default)."""
    with job_client() as c:
        reply = c.start_build(model, recipes, latency_runs, timeout)
        if not reply.created:
            err_console.print(
                f"the same build is already {status_name(reply.job.status)} as job "
                f"{reply.job.id}; following it",
                highlight=False,
            )
        else:
            err_console.print(f"queued job {reply.job.id}", highlight=False)
        job = follow_job(c, reply.job.id, bar=not as_json)
    if job.status != jobs_pb2.JOB_STATUS_FINISHED:
        raise fail(f"job {job.id} {status_name(job.status)}: {job.error or 'no reason given'}")
    if as_json:
        print_json(list(job.variant_ids))
    else:
        out.print(
            f"built {len(job.variant_ids)} variant(s) of {model} (job {job.id}); "
            f"see `edgefleet models variants {model}`",
            highlight=False,
        )


@jobs_app.command("ls")
@one_line_errors
def ls(
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first: queued, running and recently ended."""
    with job_client() as c:
        jobs = c.list_jobs(limit)
    if as_json:
        print_json([job_json(j) for j in jobs])
        return
    table = Table("id", "model", "status", "progress", "attempt", "worker", "created")
    for j in jobs:
        table.add_row(
            j.id,
            j.model,
            status_name(j.status),
            f"{j.step}/{j.total}" if j.total else "-",
            str(j.attempt or "-"),
            j.worker or "-",
            render.iso(j.created_at) if j.HasField("created_at") else "-",
        )
    out.print(table)


@jobs_app.command("show")
@one_line_errors
def show(job_id: JobArg, as_json: JsonOpt = False) -> None:
    """One job: status, progress, the variants it built or why it failed."""
    with job_client() as c:
        job = c.get_job(job_id)
    data = job_json(job)
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if value not in (None, "", []):
            out.print(f"{key}: {value}", highlight=False)


@jobs_app.command("watch")
@one_line_errors
def watch(job_id: JobArg, as_json: JsonOpt = False) -> None:
    """Follow a job's progress until it ends (exit 1 unless it finished)."""
    with job_client() as c:
        job = follow_job(c, job_id, bar=not as_json)
    if as_json:
        print_json(job_json(job))
    if job.status != jobs_pb2.JOB_STATUS_FINISHED:
        raise fail(f"job {job.id} {status_name(job.status)}: {job.error or 'no reason given'}")


@jobs_app.command("cancel")
@one_line_errors
def cancel(job_id: JobArg, as_json: JsonOpt = False) -> None:
    """Cancel a queued job, or stop a running one on its worker."""
    with job_client() as c:
        job = c.cancel_job(job_id)
    if as_json:
        print_json(job_json(job))
    else:
        out.print(f"job {job.id}: {status_name(job.status)}", highlight=False)

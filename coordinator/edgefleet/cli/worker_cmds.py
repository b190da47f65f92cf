"""``edgefleet worker``: run builds queued on the fleet's Redis, on this machine.

A worker is an RQ worker (``edgefleet.coordinator.jobs`` says why RQ) on the ``edgefleet-builds``
queue. It can live on any machine that reaches the fleet's Redis: the coordinator only enqueues
(the gRPC server never runs torch work); the worker loads the model from the variant store, runs
``edgefleet.modelops.build`` in a forked horse per job and puts the variants back.

Which Redis, as the coordinator resolves it: ``--redis-url`` (``$EDGEFLEET_REDIS_URL``) for an
external server, else the embedded Redis of the coordinator running on ``--data-dir`` (its socket,
from ``DATA_DIR/coordinator.json``). With an external Redis the variants go to the shared store
in Redis (every replica reads them); with the embedded one, to the data dir, as the single-node
coordinator does. ``--jobs-redis-url`` gives the queue its own Redis (needed when the fleet's is
a Redis Cluster, which RQ cannot use).

The CLI contract in pyproject.toml names this module's import of the job queue, like
``coordinator_cmds`` names the server's: both run coordinator-side code in this process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import err_console, fail, one_line_errors

__all__ = ["worker"]


def _embedded_url(data_dir: Path) -> str:
    info_path = data_dir / "coordinator.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        info = {}
    url = info.get("embedded_redis") if isinstance(info, dict) else None
    if not url:
        raise fail(
            f"no Redis to take jobs from: pass --redis-url (the coordinator's, or set "
            f"EDGEFLEET_REDIS_URL), or --data-dir of a coordinator running with its embedded "
            f"Redis ({info_path} names none)"
        )
    return str(url)


@one_line_errors
def worker(
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEFLEET_REDIS_URL",
            help="the fleet's Redis (as the coordinator's --redis-url); default: the embedded "
            "Redis of the coordinator running on --data-dir",
        ),
    ] = None,
    jobs_redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEFLEET_JOBS_REDIS_URL",
            help="a separate Redis for the job queue (required when the fleet's is a Cluster)",
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="EDGEFLEET_DATA_DIR",
            help="variant store (the data dir; a cache when the store is shared in Redis)",
            resolve_path=True,
        ),
    ] = Path(".edgefleet"),
    fleet_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="EDGEFLEET_FLEET_DIR",
            help="the fleet identity whose signing key signs the variants (as the coordinator's)",
            resolve_path=True,
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="worker name (default: host.pid)")] = "",
    monitor_interval: Annotated[
        int, typer.Option(min=1, help="seconds between heartbeats of a running build")
    ] = 10,
    abandon_grace: Annotated[
        int, typer.Option(min=1, help="seconds past a missed heartbeat before a build is retried")
    ] = 30,
    maintenance_interval: Annotated[
        int, typer.Option(min=1, help="seconds between looks for builds of dead workers")
    ] = 15,
    burst: Annotated[bool, typer.Option(help="exit when the queue is empty")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Run build jobs from the fleet's job queue until stopped (Ctrl-C: finish the job first)."""
    from edgefleet.cli import build_job
    from edgefleet.coordinator.jobs import (
        BuildWorker,
        WorkerTimings,
        check_reachable,
        rq_connection,
    )
    from edgefleet.fleet_dir import SIGNING_KEY_FILE

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fleet_url = redis_url or _embedded_url(data_dir)
    connection = rq_connection(jobs_redis_url or fleet_url)
    check_reachable(connection)  # one line if Redis is away
    key = fleet_dir / SIGNING_KEY_FILE if fleet_dir is not None else None
    build_job.configure(build_job.StoreConfig(data_dir, redis_url or None, key))
    import edgefleet.modelops.build  # noqa: F401  (loaded once here: every forked job starts warm)

    timings = WorkerTimings(
        monitor=monitor_interval, grace=abandon_grace, maintenance=maintenance_interval
    )
    w = BuildWorker.make(connection, timings, name=name or f"{socket.gethostname()}.{os.getpid()}")
    err_console.print(
        f"edgefleet worker {w.name} on {w.queue_names()} "
        f"(store: {'shared in Redis' if redis_url else data_dir})",
        highlight=False,
    )
    w.work(burst=burst, with_scheduler=False)

"""Build jobs (issue 18): RQ on the fleet's Redis, `edgefleet worker` processes, JobService.

Real components throughout: a real redis-server, a real coordinator process serving JobService,
real `edgefleet worker` processes (each an RQ worker forking a horse per build) and the real
build code on a tiny trained model. The workers run with ``EDGEFLEET_BUILD_STEP_DELAY`` (a sleep
between the build's real steps, documented in ``edgefleet.cli.build_job``) only so that a build
lasts long enough to be killed or cancelled in its middle on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import redis

from edgefleet.client.admin_client import AdminClientError
from edgefleet.client.job_client import JobClient, status_name
from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.coordinator.jobs import BuildRequest, JobQueue
from edgefleet.coordinator.shared_store import open_store
from edgefleet.v1 import jobs_pb2
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, cli_env, wait_for

REPO = Path(__file__).resolve().parent.parent


# --- the queue on its own (no worker): validation, idempotency, cancel of a queued job --------


def test_bad_build_requests_are_one_line_each(redis_url: str) -> None:
    q = JobQueue.from_url(redis_url)
    bad = {
        BuildRequest(""): "model: required",
        BuildRequest("../etc"): "model: letters",
        BuildRequest("m", ("int8-static", "INT8-STATIC")): "listed twice",
        BuildRequest("m", ("fp16,int8-static",)): "is not a recipe",
        BuildRequest("m", ("fp16",), latency_runs=0): "latency_runs",
        BuildRequest("m", tuple(f"r{i}" for i in range(40))): "at most 32",
    }
    for req, message in bad.items():
        with pytest.raises(InvalidArgument, match=message) as info:
            q.start_build(req)
        assert "\n" not in str(info.value)
    with pytest.raises(NotFound, match="unknown job"):
        q.get("build-nope")
    with pytest.raises(FailedPrecondition, match="cannot use a Redis Cluster"):
        JobQueue.from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")


def test_the_same_build_twice_is_one_job_and_a_queued_job_cancels(redis_url: str) -> None:
    q = JobQueue.from_url(redis_url)
    first = q.start_build(BuildRequest("m", ("fp16", "int8-static"), 5))
    again = q.start_build(BuildRequest("m", ("fp16", "int8-static"), 5))
    other = q.start_build(BuildRequest("m", ("fp16",), 5))
    assert first.created and not again.created and other.created
    assert again.id == first.id != other.id
    assert first.status == "queued" and first.total == 2
    assert q.cancel(first.id).status == "canceled"
    with pytest.raises(FailedPrecondition, match="already ended"):
        q.cancel(first.id)
    # the running one ended: the same request now makes a new job
    fresh = q.start_build(BuildRequest("m", ("fp16", "int8-static"), 5))
    assert fresh.created and fresh.id != first.id
    assert {j.id for j in q.list()} >= {first.id, other.id, fresh.id}


# --- end to end: coordinator + workers -----------------------------------------------------


class Worker:
    def __init__(
        self, redis_url: str, data_dir: Path, name: str, delay: float, fleet_dir: Path
    ) -> None:
        self.name = name
        self.log = data_dir.parent / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env["EDGEFLEET_BUILD_STEP_DELAY"] = str(delay)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli.main", "worker",
                 "--redis-url", redis_url, "--data-dir", str(data_dir), "--name", name,
                 "--fleet-dir", str(fleet_dir),
                 "--monitor-interval", "1", "--abandon-grace", "2",
                 "--maintenance-interval", "1"],
                stdout=log, stderr=log, env=env, cwd=REPO,
            )  # fmt: skip

    def kill_machine(self) -> None:
        """kill -9 the worker and the horse running its build, as when its machine dies.

        (RQ's horse is in a process group of its own: a kill -9 of the worker alone leaves
        the horse to finish the build, which is not the failure this test is about.)"""
        horses = psutil.Process(self.proc.pid).children(recursive=True)
        assert horses, "the worker has no horse: no build running"
        for p in (self.proc, *horses):
            os.kill(p.pid, signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs(horses, timeout=10)

    def ready(self, r: redis.Redis) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return bool(r.exists(f"rq:worker:{self.name}"))


@pytest.fixture
def fleet(
    redis_url: str, tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> Iterator[tuple[CoordinatorProc, Path]]:
    """A coordinator on the real Redis and a tiny trained model in the shared store."""
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import ArchitectureSpec

    coord = coordinator_factory("--redis-url", redis_url)
    store = open_store(
        tmp_path / "author", redis_url, signing_key_path=coord.data_dir / "signing-key.pem"
    )
    data = load_dataset("digits", store.root)
    spec = ArchitectureSpec.zoo(
        "mlp", width=0.25, num_classes=data.num_classes, input_shape=data.input_shape
    )
    options = BuildOptions(latency=LatencyConfig(runs=5))
    register_model(store, "tiny", spec, data, epochs=1, options=options)
    yield coord, tmp_path


def _listed_variants_verify(redis_url: str, root: Path, key: Path) -> list[str]:
    """Every variant the store lists for the model loads and verifies (hash, signature, files)."""
    store = open_store(root, redis_url, signing_key_path=key)
    ids = store.model("tiny").variants
    for vid in ids:
        store.load(vid)
    return ids


def test_a_build_killed_with_its_worker_finishes_on_another(
    fleet: tuple[CoordinatorProc, Path], redis_url: str
) -> None:
    coord, tmp = fleet
    r = redis.Redis.from_url(redis_url)
    a = Worker(redis_url, tmp / "worker-a", "worker-a", delay=0.6, fleet_dir=coord.data_dir)
    wait_for(lambda: a.ready(r), 30, "worker a")
    with JobClient(coord.address, ADMIN_TOKEN) as c:
        job = c.start_build("tiny", ["fp16"], 5).job
        seen: list[jobs_pb2.Job] = []
        b: Worker | None = None
        listings: list[list[str]] = []
        for update in c.watch_job(job.id):
            seen.append(update)
            listings.append(
                _listed_variants_verify(
                    redis_url, tmp / "reader", coord.data_dir / "signing-key.pem"
                )
            )
            if b is None and update.worker == "worker-a" and "measure" in update.message:
                a.kill_machine()
                b = Worker(
                    redis_url, tmp / "worker-b", "worker-b", delay=0.0, fleet_dir=coord.data_dir
                )
        assert b is not None, [u.message for u in seen]
        final = seen[-1]
        assert status_name(final.status) == "finished", final.error
        assert final.worker == "worker-b" and final.attempt == 2
        messages = [u.message for u in seen]
        assert "fp16: export" in messages and "built fp16" in messages  # progress streamed
        # never a partial variant listed; the finished one listed once
        base = listings[0]
        assert all(set(lst) <= set(base) | set(final.variant_ids) for lst in listings)
        listed = _listed_variants_verify(
            redis_url, tmp / "reader", coord.data_dir / "signing-key.pem"
        )
        assert listed == [*base, *final.variant_ids] and len(final.variant_ids) == 1
        b.proc.terminate()
        b.proc.wait(20)


def test_cli_builds_with_a_progress_bar_cancels_and_refuses_bad_input(
    fleet: tuple[CoordinatorProc, Path], redis_url: str
) -> None:
    coord, tmp = fleet
    r = redis.Redis.from_url(redis_url)
    w = Worker(redis_url, tmp / "worker", "worker-1", delay=0.3, fleet_dir=coord.data_dir)
    env = {**cli_env(coord.address), "COLUMNS": "120"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.cli.main", *args],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
        )  # fmt: skip

    try:
        wait_for(lambda: w.ready(r), 30, "worker")
        built = cli("models", "build", "tiny", "--recipes", "int8-dynamic")
        assert built.returncode == 0, built.stderr
        assert "queued job build-" in built.stderr and "built 1 variant(s) of tiny" in built.stdout
        assert "int8-dynamic" in built.stderr  # the bar's description: the stage it reached
        # cancel a running build: stopped on its worker, nothing listed
        before = _listed_variants_verify(
            redis_url, tmp / "reader", coord.data_dir / "signing-key.pem"
        )
        with JobClient(coord.address, ADMIN_TOKEN) as c:
            job = c.start_build("tiny", ["int8-static"], 5).job
            wait_for(lambda: c.get_job(job.id).status == jobs_pb2.JOB_STATUS_STARTED, 30, "start")
            cancelled = cli("jobs", "cancel", job.id)
            assert cancelled.returncode == 0, cancelled.stderr
            wait_for(lambda: c.get_job(job.id).status == jobs_pb2.JOB_STATUS_STOPPED, 30, "stop")
            assert "cancelled" in cli("jobs", "show", job.id).stdout
        assert (
            _listed_variants_verify(redis_url, tmp / "reader", coord.data_dir / "signing-key.pem")
            == before
        )
        listed = cli("jobs", "ls", "--json")
        assert listed.returncode == 0 and job.id in listed.stdout
        # bad input: one line each, the right status, nothing queued
        for args, message in [
            (("models", "build", "nope", "--recipes", "fp16"), "unknown model 'nope'"),
            (("jobs", "show", "build-nope"), "unknown job"),
            (("jobs", "cancel", job.id), "already ended"),
        ]:
            bad = cli(*args)
            assert bad.returncode == 1 and message in bad.stderr, bad.stderr
            assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        with JobClient(coord.address, ADMIN_TOKEN) as c:
            with pytest.raises(AdminClientError) as err:
                c.start_build("tiny", ["no such recipe"], 5)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with JobClient(coord.address, "wrong-token") as c:
            with pytest.raises(AdminClientError) as err:
                c.list_jobs()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        w.proc.terminate()
        w.proc.wait(20)

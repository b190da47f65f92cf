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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
import redis

from edgefleet.client.admin_client import AdminClientError
from edgefleet.client.job_client import TERMINAL, JobClient, status_name
from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.coordinator.jobs import BuildRequest, JobQueue
from edgefleet.coordinator.shared_store import open_store
from edgefleet.v1 import jobs_pb2
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, cli_env, free_port, wait_for

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


def test_a_worker_without_a_usable_redis_says_so_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.app import app

    env = {"EDGEFLEET_REDIS_URL": "", "EDGEFLEET_JOBS_REDIS_URL": ""}
    cases = [
        (["--data-dir", str(tmp_path)], "no Redis to take jobs from"),
        (["--redis-url", "redis+cluster://127.0.0.1:1,127.0.0.1:2"], "cannot use a Redis Cluster"),
        (["--redis-url", f"redis://127.0.0.1:{free_port()}/0"], "cannot reach the job queue"),
    ]
    for args, message in cases:
        done = CliRunner().invoke(app, ["worker", *args], env=env)
        assert done.exit_code == 1 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


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
                 "--monitor-interval", "1", "--abandon-grace", "3",
                 "--maintenance-interval", "1"],
                stdout=log, stderr=log, env=env, cwd=REPO,
            )  # fmt: skip

    def kill_machine(self) -> None:
        """kill -9 the worker and the horse running its build, as when its machine dies.

        (RQ's horse is in a process group of its own: a kill -9 of the worker alone leaves
        the horse to finish the build, which is not the failure this test is about.)"""
        horses = psutil.Process(self.proc.pid).children(recursive=True)
        assert horses, "the worker has no horse: no build running"
        for pid in (self.proc.pid, *(h.pid for h in horses)):
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        psutil.wait_procs(horses, timeout=10)

    def ready(self, r: redis.Redis) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return bool(r.exists(f"rq:worker:{self.name}"))


@dataclass
class Fleet:
    coord: CoordinatorProc
    redis_url: str
    tmp: Path
    workers: list[Worker] = field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.coord.data_dir / "signing-key.pem"  # the fleet's signing key

    def worker(self, name: str, delay: float) -> Worker:
        w = Worker(self.redis_url, self.tmp / name, name, delay, self.coord.data_dir)
        self.workers.append(w)
        return w

    def any_worker(self, delay: float) -> Worker:
        """A live worker of an earlier test if there is one (a start costs seconds), else new."""
        live = [w for w in self.workers if w.proc.poll() is None]
        return live[-1] if live else self.worker(f"worker-{len(self.workers)}", delay)

    def listed(self) -> list[str]:
        return _listed_variants_verify(self.redis_url, self.tmp / "reader", self.key)


@pytest.fixture(scope="module")
def fleet(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One coordinator on its own database of the real Redis, and a tiny trained model in the
    shared store, for the end-to-end tests of this module (each starts its own workers)."""
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import ArchitectureSpec

    url = redis_server.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    tmp = tmp_path_factory.mktemp("jobs")
    coord = CoordinatorProc(tmp / "coord", free_port(), ["--redis-url", url]).start()
    fleet = Fleet(coord, url, tmp)
    try:
        store = open_store(tmp / "author", url, signing_key_path=fleet.key)
        data = load_dataset("digits", store.root)
        spec = ArchitectureSpec.zoo(
            "mlp", width=0.25, num_classes=data.num_classes, input_shape=data.input_shape
        )
        options = BuildOptions(latency=LatencyConfig(runs=5))
        register_model(store, "tiny", spec, data, epochs=1, options=options)
        yield fleet
    finally:
        for w in fleet.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
        coord.stop()


def _listed_variants_verify(redis_url: str, root: Path, key: Path) -> list[str]:
    """Every variant the store lists for the model loads and verifies (hash, signature, files)."""
    store = open_store(root, redis_url, signing_key_path=key)
    ids = store.model("tiny").variants
    for vid in ids:
        store.load(vid)
    return ids


def test_a_build_killed_with_its_worker_finishes_on_another(fleet: Fleet) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    a = fleet.worker("worker-a", delay=0.5)
    wait_for(lambda: a.ready(r), 60, "worker a")
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        job = c.start_build("tiny", ["fp16"], 5).job
        seen: list[jobs_pb2.Job] = []
        listings: list[list[str]] = []
        b: Worker | None = None
        killed = False
        for update in c.watch_job(job.id):
            seen.append(update)
            listings.append(fleet.listed())
            if b is None and update.worker == "worker-a":  # a has it: b may start now
                b = fleet.worker("worker-b", delay=0.4)
            if not killed and update.worker == "worker-a" and "measure" in update.message:
                a.kill_machine()  # mid-build
                killed = True
    assert b is not None, [u.message for u in seen]
    final = seen[-1]
    logs = a.log.read_text() + b.log.read_text()
    assert status_name(final.status) == "finished", final.error + logs
    assert final.worker == "worker-b" and final.attempt == 2, logs
    messages = [u.message for u in seen]
    assert "fp16: export" in messages and "built fp16" in messages  # progress streamed
    # never a partial variant listed; the finished one listed once, and it verifies
    base = listings[0]
    assert all(set(lst) <= {*base, *final.variant_ids} for lst in listings)
    assert fleet.listed() == [*base, *final.variant_ids] and len(final.variant_ids) == 1


def test_cli_builds_with_a_progress_bar_cancels_and_refuses_bad_input(fleet: Fleet) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.app import app

    r = redis.Redis.from_url(fleet.redis_url)
    w = fleet.any_worker(delay=0.4)
    env = {**cli_env(fleet.coord.address), "COLUMNS": "120"}
    runner = CliRunner()

    def cli(*args: str) -> tuple[int, str, str]:
        """In this process (a fresh interpreter per call would cost more than the build)."""
        done = runner.invoke(app, list(args), env=env)
        return done.exit_code, done.stdout, done.stderr

    wait_for(lambda: w.ready(r), 60, "worker")
    # the real console script once: the build verb over the API, with its progress bar
    built = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", "models", "build", "tiny",
         "--recipes", "int8-dynamic"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "queued job build-" in built.stderr and "built 1 variant(s) of tiny" in built.stdout
    assert "int8-dynamic" in built.stderr  # the bar's description: the stage it reached
    # cancel a running build: stopped on its worker, nothing listed
    before = fleet.listed()
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        job = c.start_build("tiny", ["int8-static"], 5).job
        wait_for(lambda: c.get_job(job.id).status == jobs_pb2.JOB_STATUS_STARTED, 60, "start")
        code, stdout, stderr = cli("jobs", "cancel", job.id)
        assert code == 0, stderr
        wait_for(lambda: c.get_job(job.id).status == jobs_pb2.JOB_STATUS_STOPPED, 30, "stop")
    assert "error: cancelled" in cli("jobs", "show", job.id)[1]
    assert fleet.listed() == before
    # a recipe only the worker can judge: failed at once with its one line, not retried
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        bad_job = c.start_build("tiny", ["frobnicate"], 5).job
        wait_for(lambda: c.get_job(bad_job.id).status in TERMINAL, 60, "the bad build to end")
        failed = c.get_job(bad_job.id)
    assert failed.status == jobs_pb2.JOB_STATUS_FAILED and failed.attempt == 1
    assert failed.error.startswith("unknown recipe step 'frobnicate'"), failed.error
    code, stdout, _ = cli("jobs", "ls", "--json")
    assert code == 0 and job.id in stdout
    # bad input: one line each, the right status, nothing queued
    for args, message in [
        (("models", "build", "nope", "--recipes", "fp16"), "unknown model 'nope'"),
        (("jobs", "show", "build-nope"), "unknown job"),
        (("jobs", "cancel", job.id), "already ended"),
    ]:
        code, _, stderr = cli(*args)
        assert code == 1 and message in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        with pytest.raises(AdminClientError) as err:
            c.start_build("tiny", ["no such recipe"], 5)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with JobClient(fleet.coord.address, "wrong-token") as c:
        with pytest.raises(AdminClientError) as err:
            c.list_jobs()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        assert not [j for j in c.list_jobs() if j.model == "nope"]


def test_a_build_over_its_timeout_ends_failed_once_with_the_reason(fleet: Fleet) -> None:
    """``models build --timeout 1s`` (tests/test_job_timeout.py checks the bounds): the worker
    stops the build at its timeout, the job fails on its first attempt (a timeout is not
    retried) with one line naming it, and nothing partial is listed."""
    from typer.testing import CliRunner

    from edgefleet.cli.app import app

    r = redis.Redis.from_url(fleet.redis_url)
    w = fleet.any_worker(delay=0.4)  # each of the build's steps takes >= 0.4 s
    wait_for(lambda: w.ready(r), 60, "worker")
    before = fleet.listed()
    env = cli_env(fleet.coord.address)
    done = CliRunner().invoke(
        app, ["models", "build", "tiny", "--recipes", "int8-static", "--timeout", "1s"], env=env
    )
    assert done.exit_code == 1, done.output
    assert "failed: timed out after 1 s (its --timeout" in done.stderr, done.stderr
    with JobClient(fleet.coord.address, ADMIN_TOKEN) as c:
        job = next(j for j in c.list_jobs() if j.timeout_seconds == 1)
    assert job.status == jobs_pb2.JOB_STATUS_FAILED and job.attempt == 1, job
    assert fleet.listed() == before

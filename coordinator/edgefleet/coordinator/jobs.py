"""Build jobs on RQ, with the fleet's Redis as the broker: enqueue, progress, watch, cancel, list.

Why RQ (issue 18 asked to choose among RQ, Dramatiq, arq, Celery, Ray for this workload):

- Redis is already the fleet's shared state, so the broker adds no new server to run, secure or
  back up; RQ speaks plain Redis and nothing else.
- A build is CPU-bound torch work of seconds to minutes, a handful at a time, not a stream of
  tiny tasks. RQ forks a fresh "work horse" per job: torch's memory (allocator caches, thread
  pools, a leaked graph) dies with the horse, and a segfault or OOM kill in a native library
  fails one job, not the worker. arq (asyncio, one process) would run torch on its event loop;
  Dramatiq and Celery add their own broker layers (and Celery its result backend) for throughput
  we do not need; Ray is a cluster runtime of its own, which design.md rules out ("no home-made
  cluster layer", and Ray would be one more).
- It has what a build needs, built in: job timeouts (the horse is killed), ``Retry(max=2)``,
  a stop-job command (cancellation reaches the horse on whatever machine it runs), ``job.meta``
  (progress written by the job, read by any replica), and abandoned-job handling: a started job
  whose worker stopped heart-beating is retried by any other worker's maintenance pass when it
  has retries left (a ``kill -9``-ed worker's build runs again elsewhere).

What RQ lacks, and how it is handled here:

- **Redis Cluster.** RQ's registries, scripts and MULTI blocks span keys that are not hash-tagged
  (``rq:queue:NAME``, ``rq:job:ID``, ``rq:wip:NAME`` ...) and it takes a ``redis.Redis``, not a
  cluster client. A ``redis+cluster://`` URL is therefore refused with one line naming the fix:
  give the job queue its own plain Redis (or a Sentinel-managed master): ``$EDGEFLEET_JOBS_REDIS_URL``
  on every replica, ``--jobs-redis-url`` (same variable) on the workers; the queue holds only job
  records and progress, no fleet state, so a small non-clustered Redis (with its own replica and
  Sentinel for HA) is enough. Sentinel URLs work (the master is looked up through the sentinels).
- **Timely detection of a dead worker.** RQ's defaults notice an abandoned job after its
  heartbeat TTL (monitoring interval + 60 s) and a maintenance pass (every 10 minutes).
  :class:`BuildWorker` makes both explicit settings (``WorkerTimings``): by default a build of a
  ``kill -9``-ed worker is picked up again within about a minute.
- **Idempotent requests.** RQ's ``unique`` only refuses a known job id. The same build asked twice
  while one runs must return the running job, so a request's canonical form is hashed and
  ``SET NX`` claims ``rq:edgefleet:active-build:<hash>`` for the job id (see :meth:`JobQueue.
  start_build`).
- **Retrying a half-done build duplicates rows.** Variants carry measured latency, so a rebuilt
  recipe gets a new content address. The job therefore records each finished recipe in
  ``job.meta["done"]`` and a retry builds only the rest (the build side does this).

Visibility: a job never makes a partial variant visible. The variant store writes a bundle to a
temporary place and renames it in, then adds the index entry; the job only reports ids after
that. A worker killed mid-recipe leaves at most an unlisted, complete bundle.

This module is the queue side only (the coordinator imports it; no torch): the job body lives in
``edgefleet.cli.build_job`` and is referenced by its dotted name, never imported here.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from redis.sentinel import Sentinel
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from edgefleet.coordinator.state.connect import kind, parse_multi_host

__all__ = [
    "BUILD_FUNCTION",
    "BUILD_QUEUE",
    "BuildRequest",
    "BuildWorker",
    "JobInfo",
    "JobQueue",
    "WorkerTimings",
    "check_reachable",
    "rq_connection",
    "validate_build",
]

BUILD_QUEUE = "edgefleet-builds"
#: the job body, by name: the server enqueues it and never imports it (no torch here)
BUILD_FUNCTION = "edgefleet.cli.build_job.run_build"
ACTIVE_PREFIX = "rq:edgefleet:active-build:"
DEFAULT_JOB_TIMEOUT = 6 * 3600  # seconds; a kws build with every recipe takes minutes
MAX_JOB_TIMEOUT = 7 * 24 * 3600  # a week: longer is a stuck job, not a build
MAX_RETRIES = 2
RESULT_TTL = 7 * 24 * 3600  # finished jobs stay listed a week
MAX_RECIPES = 32
MAX_RECIPE_CHARS = 200
MAX_MODEL_CHARS = 128
_RECIPE_RE = re.compile(r"^[a-z0-9][a-z0-9:=.+_-]*$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ACTIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
TERMINAL = ("finished", "failed", "stopped", "canceled")


def rq_connection(url: str) -> redis.Redis:
    """The blocking ``redis.Redis`` RQ needs (bytes, not text) for a ``--redis-url``.

    A cluster URL is refused (RQ cannot run on Redis Cluster, see the module docstring).
    """
    which = kind(url)
    if which == "cluster":
        raise FailedPrecondition(
            "the job queue (RQ) cannot use a Redis Cluster: give it a plain Redis or a "
            "Sentinel-managed master (EDGEFLEET_JOBS_REDIS_URL; a worker's --jobs-redis-url)"
        )
    if which == "sentinel":
        u = parse_multi_host(url)
        db = u.path[1] if len(u.path) > 1 else "0"
        sentinel = Sentinel(list(u.nodes), socket_timeout=5.0)  # type: ignore[no-untyped-call]
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            u.path[0], username=u.username, password=u.password, db=int(db), ssl=u.tls
        )
        return master
    try:
        return redis.Redis.from_url(url, health_check_interval=30)
    except ValueError as exc:
        raise InvalidArgument("redis-url", str(exc)) from None


def check_reachable(connection: redis.Redis) -> None:
    """Ping the queue's Redis; :class:`Unavailable` (one line) if it does not answer."""
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"cannot reach the job queue's Redis: {exc}") from None


@dataclass(frozen=True)
class BuildRequest:
    """What to build: recipes (empty = every default recipe that applies) of model ``model``."""

    model: str
    recipes: tuple[str, ...] = ()
    latency_runs: int = 300
    #: seconds one attempt may run (0: the queue's default); not part of the identity
    timeout: int = 0

    def key(self) -> str:
        """The request's identity: the same build asked twice hashes the same (whatever
        timeout each asks: the second one follows the running job)."""
        canon = json.dumps(
            {"model": self.model, "recipes": list(self.recipes), "runs": self.latency_runs},
            sort_keys=True,
        )
        return hashlib.sha256(canon.encode()).hexdigest()[:32]


def validate_build(req: BuildRequest) -> BuildRequest:
    """Bounds and syntax, one field per error (the worker checks recipes in full)."""
    if not req.model:
        raise InvalidArgument("model", "required")
    if len(req.model) > MAX_MODEL_CHARS or not _MODEL_RE.match(req.model):
        raise InvalidArgument("model", "letters, digits, '.', '_' or '-' (at most 128)")
    if len(req.recipes) > MAX_RECIPES:
        raise InvalidArgument("recipes", f"at most {MAX_RECIPES}")
    recipes = tuple(r.strip().lower() for r in req.recipes)
    for r in recipes:
        if len(r) > MAX_RECIPE_CHARS or not _RECIPE_RE.match(r):
            raise InvalidArgument(
                "recipes",
                f"{r[:40]!r} is not a recipe (e.g. int8-static, prune-channels:ratio=0.5)",
            )
    if len(set(recipes)) != len(recipes):
        raise InvalidArgument("recipes", "a recipe is listed twice")
    if not 1 <= req.latency_runs <= 100_000:
        raise InvalidArgument("latency_runs", "must be in [1, 100000]")
    if not 0 <= req.timeout <= MAX_JOB_TIMEOUT:
        raise InvalidArgument("timeout_seconds", f"must be 1 s to 7 days ({MAX_JOB_TIMEOUT} s)")
    return BuildRequest(req.model, recipes, req.latency_runs, req.timeout)


@dataclass(frozen=True)
class JobInfo:
    """A job as the API shows it (plain values, read from RQ's job hash)."""

    id: str
    kind: str
    model: str
    recipes: tuple[str, ...]
    status: str  # queued | started | finished | failed | stopped | canceled
    step: int = 0
    total: int = 0
    message: str = ""
    variant_ids: tuple[str, ...] = ()
    error: str = ""
    attempt: int = 0
    worker: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    timeout: int = 0  # seconds per attempt
    created: bool = field(default=False, compare=False)  # start_build: a new job, not a rerun

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def job_info(job: Job) -> JobInfo:
    meta = job.meta or {}
    progress = meta.get("progress") or {}
    raw = job.get_status(refresh=False)
    status = raw.value if isinstance(raw, JobStatus) else str(raw or "queued")
    error = str(meta.get("error") or "")
    ids: tuple[str, ...] = ()
    if status == "finished":
        value = job.return_value(refresh=False)
        ids = tuple(str(v) for v in value) if isinstance(value, list) else ()
    elif status == "failed" and not error:
        result = job.latest_result()
        error = _last_line(getattr(result, "exc_string", None) or job.exc_info)
    elif status == "stopped" and not error:
        error = "cancelled"
    return JobInfo(
        id=job.id,
        kind=str(meta.get("kind", "build")),
        model=str(meta.get("model", "")),
        recipes=tuple(str(r) for r in meta.get("recipes", ())),
        status=status,
        step=int(progress.get("step", 0)),
        total=int(progress.get("total", 0)),
        message=str(progress.get("message", "")),
        variant_ids=ids,
        error=error,
        attempt=int(meta.get("attempt", 0)),
        worker=job.worker_name or str(meta.get("worker", "")),
        created_at=_ts(job.created_at),
        started_at=_ts(job.started_at),
        ended_at=_ts(job.ended_at),
        timeout=int(job.timeout or 0),
    )


class JobQueue:
    """The build queue on one Redis. Blocking calls: the gRPC layer runs them in a thread."""

    def __init__(
        self, connection: redis.Redis, name: str = BUILD_QUEUE, timeout: int = DEFAULT_JOB_TIMEOUT
    ) -> None:
        self.connection = connection
        self.queue = Queue(name, connection=connection)
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> JobQueue:
        return cls(rq_connection(url), **kw)

    def _fetch(self, job_id: str) -> Job:
        if not job_id or len(job_id) > 64:
            raise InvalidArgument("job_id", "required, at most 64 characters")
        try:
            return Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            raise NotFound(f"unknown job {job_id!r} (see `edgefleet jobs ls`)") from None
        except redis.RedisError as exc:
            raise Unavailable(f"job queue unavailable: {exc}") from None

    def start_build(self, req: BuildRequest) -> JobInfo:
        """Enqueue a build, or return the job already running the same request.

        ``SET NX`` on the request's hash decides which of two concurrent requests enqueues;
        the pointer lives as long as the job may (timeout x attempts), and a pointer to a
        job that has ended is replaced (compare-and-set, so two late requests agree).
        """
        req = validate_build(req)
        pointer = ACTIVE_PREFIX + req.key()
        ttl = (req.timeout or self.timeout) * (MAX_RETRIES + 1) + 3600
        try:
            for _ in range(5):
                job_id = f"build-{int(time.time())}-{req.key()[:8]}-{_rand()}"
                if self.connection.set(pointer, job_id, nx=True, ex=ttl):
                    return self._enqueue(job_id, req)
                current = self.connection.get(pointer)
                if current is None:
                    continue
                try:
                    job = Job.fetch(_text(current), connection=self.connection)
                except NoSuchJobError:
                    job = None
                if job is not None and job.get_status() in ACTIVE:
                    return job_info(job)
                # the running one ended: replace the pointer only if nobody else did
                with self.connection.pipeline() as pipe:
                    try:
                        pipe.watch(pointer)  # type: ignore[no-untyped-call]
                        if pipe.get(pointer) != current:
                            continue
                        pipe.multi()
                        pipe.set(pointer, job_id, ex=ttl)
                        pipe.execute()
                    except redis.WatchError:
                        continue
                return self._enqueue(job_id, req)
        except redis.RedisError as exc:
            raise Unavailable(f"job queue unavailable: {exc}") from None
        raise Unavailable("job queue busy: too many concurrent requests for this build")

    def _enqueue(self, job_id: str, req: BuildRequest) -> JobInfo:
        job = self.queue.enqueue(
            BUILD_FUNCTION,
            req.model,
            list(req.recipes),
            req.latency_runs,
            job_id=job_id,
            job_timeout=req.timeout or self.timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=RESULT_TTL,
            retry=Retry(max=MAX_RETRIES),
            description=f"build {req.model}: {','.join(req.recipes) or 'default recipes'}",
            meta={
                "kind": "build",
                "model": req.model,
                "recipes": list(req.recipes),
                "progress": {"step": 0, "total": len(req.recipes), "message": "queued"},
            },
        )
        info = job_info(job)
        return JobInfo(**{**info.__dict__, "created": True})

    def get(self, job_id: str) -> JobInfo:
        return job_info(self._fetch(job_id))

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued job, or stop a running one (the worker kills its horse)."""
        job = self._fetch(job_id)
        status = job.get_status()
        try:
            if status == JobStatus.STARTED:
                send_stop_job_command(self.connection, job.id)
            elif status in ACTIVE:
                job.cancel()
            else:
                raise FailedPrecondition(f"job {job_id} has already ended ({status})")
        except InvalidJobOperation as exc:  # it ended between the read and the command
            raise FailedPrecondition(f"job {job_id}: {exc}") from None
        except redis.RedisError as exc:
            raise Unavailable(f"job queue unavailable: {exc}") from None
        return self.get(job_id)

    def list(self, limit: int = 50) -> list[JobInfo]:
        """Newest first: queued, running and ended jobs (ended ones for RESULT_TTL)."""
        q = self.queue
        try:
            ids: list[str] = list(q.get_job_ids())
            for registry in (
                q.started_job_registry,
                q.finished_job_registry,
                q.failed_job_registry,
                q.canceled_job_registry,
                q.scheduled_job_registry,
            ):
                ids.extend(registry.get_job_ids())
            jobs = [j for j in Job.fetch_many(list(dict.fromkeys(ids)), self.connection) if j]
        except redis.RedisError as exc:
            raise Unavailable(f"job queue unavailable: {exc}") from None
        infos = [job_info(j) for j in jobs]
        infos.sort(key=lambda i: i.created_at, reverse=True)
        return infos[: max(1, limit)]

    def watch(self, job_id: str, interval: float = 0.25) -> Iterator[JobInfo]:
        """Yield the job each time it changes, until it ends (the last one yielded ends it).

        Polling the job hash (not pub/sub): progress is ``job.meta``, written by the worker
        on whatever host; any replica can serve the stream, and a missed event cannot
        strand the watcher.
        """
        last: JobInfo | None = None
        while True:
            info = self.get(job_id)
            if info != last:
                yield info
                last = info
            if info.done:
                return
            time.sleep(interval)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rand() -> str:
    import secrets

    return secrets.token_hex(4)


@dataclass(frozen=True)
class WorkerTimings:
    """How fast a worker notices work and a dead peer (seconds).

    ``monitor``: how often the worker refreshes a running job's heartbeat; ``grace``: how long
    past that a silent job counts as abandoned; ``maintenance``: how often each worker looks for
    abandoned jobs, idle or not (an idle RQ worker only looks when its blocking dequeue times
    out, so the dequeue timeout is set to it). A ``kill -9``-ed worker's build is retried after
    at most about monitor + grace + maintenance seconds.
    """

    monitor: int = 10
    grace: int = 30
    maintenance: int = 15


class BuildWorker(Worker):
    """An RQ worker whose abandoned-job detection follows :class:`WorkerTimings`, not RQ's
    fixed ``+ 60`` seconds of heartbeat slack."""

    abandon_grace = WorkerTimings.grace

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        ttl = float(self.job_monitoring_interval)
        if job.timeout and job.timeout > 0:
            ttl = min(job.timeout - working_time, ttl)
        return int(max(ttl, 1)) + self.abandon_grace

    @classmethod
    def make(
        cls,
        connection: redis.Redis,
        timings: WorkerTimings,
        queues: Sequence[str] = (BUILD_QUEUE,),
        name: str | None = None,
    ) -> BuildWorker:
        worker = cls(
            list(queues),
            name=name,
            connection=connection,
            maintenance_interval=timings.maintenance,
            worker_ttl=timings.maintenance + 15,  # RQ's dequeue timeout is worker_ttl - 15
            job_monitoring_interval=timings.monitor,
        )
        worker.abandon_grace = timings.grace
        return worker

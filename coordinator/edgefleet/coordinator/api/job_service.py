"""JobService: start, watch, list and cancel build jobs (served next to AdminService).

The same admin authentication as AdminService (:func:`.guard.admin_rpc`: starting and
cancelling need the admin token, reading accepts the read-only one). The servicer only talks to
the job queue (``edgefleet.coordinator.jobs``, RQ on Redis): it enqueues, reads job records and
sends stop commands. It never runs a build; ``edgefleet worker`` processes do. RQ's client is
blocking, so every queue call runs in a thread and the event loop keeps serving heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from edgefleet.coordinator.api.convert import timestamp
from edgefleet.coordinator.api.guard import admin_rpc, bearer_token, guard
from edgefleet.coordinator.errors import CoordinatorError, FailedPrecondition, NotFound
from edgefleet.coordinator.jobs import BuildRequest, JobInfo, JobQueue, validate_build
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.tokens import Tokens
from edgefleet.v1 import jobs_pb2, jobs_pb2_grpc
from edgefleet.variant_store import StoreError

__all__ = ["JobServicer", "add_job_service", "job_to_proto", "model_known_in"]

log = logging.getLogger(__name__)
SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
_STATUS = {
    "queued": jobs_pb2.JOB_STATUS_QUEUED,
    "deferred": jobs_pb2.JOB_STATUS_QUEUED,
    "scheduled": jobs_pb2.JOB_STATUS_QUEUED,
    "started": jobs_pb2.JOB_STATUS_STARTED,
    "finished": jobs_pb2.JOB_STATUS_FINISHED,
    "failed": jobs_pb2.JOB_STATUS_FAILED,
    "stopped": jobs_pb2.JOB_STATUS_STOPPED,
    "canceled": jobs_pb2.JOB_STATUS_CANCELED,
}
DEFAULT_LATENCY_RUNS = 300
MAX_LIST = 500


def job_to_proto(j: JobInfo) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        id=j.id,
        kind=j.kind,
        model=j.model,
        recipes=list(j.recipes),
        status=_STATUS.get(j.status, jobs_pb2.JOB_STATUS_UNSPECIFIED),
        step=j.step,
        total=j.total,
        message=j.message,
        variant_ids=list(j.variant_ids),
        error=j.error,
        attempt=j.attempt,
        worker=j.worker,
        created_at=timestamp(j.created_at) if j.created_at else None,
        started_at=timestamp(j.started_at) if j.started_at else None,
        ended_at=timestamp(j.ended_at) if j.ended_at else None,
        timeout_seconds=j.timeout,
    )


class JobServicer(jobs_pb2_grpc.JobServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        jobs: JobQueue | str,
        tokens: Tokens,
        metrics: CoordinatorMetrics | None,
        model_known: Callable[[str], bool],
        poll_interval: float = 0.25,
    ) -> None:
        #: the queue, or why there is none (e.g. a Redis Cluster: RQ cannot use one)
        self._queue = jobs if isinstance(jobs, JobQueue) else None
        self._why_not = "" if isinstance(jobs, JobQueue) else jobs
        self._tokens = tokens
        self._metrics = metrics
        self._model_known = model_known
        self._poll = poll_interval

    @property
    def _jobs(self) -> JobQueue:
        if self._queue is None:
            raise FailedPrecondition(self._why_not)
        return self._queue

    @admin_rpc(write=True)
    async def StartBuild(
        self, request: jobs_pb2.StartBuildRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.StartBuildResponse:
        req = validate_build(
            BuildRequest(
                request.model,
                tuple(request.recipes),
                request.latency_runs or DEFAULT_LATENCY_RUNS,
                request.timeout_seconds,
            )
        )
        if not await asyncio.to_thread(self._model_known, req.model):
            raise NotFound(f"unknown model {req.model!r} (see `edgefleet models ls`)")
        info = await asyncio.to_thread(self._jobs.start_build, req)
        return jobs_pb2.StartBuildResponse(job=job_to_proto(info), created=info.created)

    @admin_rpc(write=False)
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.GetJobResponse:
        info = await asyncio.to_thread(self._jobs.get, request.job_id)
        return jobs_pb2.GetJobResponse(job=job_to_proto(info))

    @admin_rpc(write=False)
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ListJobsResponse:
        limit = min(request.limit or 50, MAX_LIST)
        infos = await asyncio.to_thread(self._jobs.list, limit)
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(i) for i in infos])

    @admin_rpc(write=True)
    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.CancelJobResponse:
        info = await asyncio.to_thread(self._jobs.cancel, request.job_id)
        return jobs_pb2.CancelJobResponse(job=job_to_proto(info))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        """The job now, then every change until it ends (polling the job record: any
        replica serves the stream, whichever worker writes the progress)."""

        async def first() -> JobInfo:
            self._tokens.check_admin(bearer_token(context), write=False)
            return await asyncio.to_thread(self._jobs.get, request.job_id)

        async def read() -> JobInfo:
            return await asyncio.to_thread(self._jobs.get, request.job_id)

        info = await guard(context, first, self._metrics)
        yield jobs_pb2.WatchJobResponse(job=job_to_proto(info))
        while not info.done:
            await asyncio.sleep(self._poll)
            now = await guard(context, read, self._metrics)
            if now != info:
                info = now
                yield jobs_pb2.WatchJobResponse(job=job_to_proto(info))


class _HasModels(Protocol):
    def model(self, name: str) -> object: ...


def model_known_in(store: _HasModels) -> Callable[[str], bool]:
    """``name -> bool``: whether ``store`` (the variant store the replica serves) has the model."""

    def known(name: str) -> bool:
        try:
            store.model(name)
        except StoreError:
            return False
        return True

    return known


def add_job_service(
    server: grpc.aio.Server,
    redis_url: str,
    tokens: Tokens,
    metrics: CoordinatorMetrics | None,
    model_known: Callable[[str], bool],
) -> str:
    """Register JobService on ``server`` with the queue on ``redis_url``; return its full name
    (for health and reflection).

    A URL RQ cannot use (a Redis Cluster) still registers the service, whose calls then
    answer FAILED_PRECONDITION naming the fix (``EDGEFLEET_JOBS_REDIS_URL``): the rest of the
    coordinator works on a Cluster, only builds need the separate queue.
    """
    jobs: JobQueue | str
    try:
        jobs = JobQueue.from_url(redis_url)
    except CoordinatorError as exc:
        log.warning("build jobs are off: %s", exc)
        jobs = str(exc)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(
        JobServicer(jobs, tokens, metrics, model_known), server
    )
    return SERVICE_NAME

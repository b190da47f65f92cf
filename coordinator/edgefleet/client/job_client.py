"""The CLI's client of JobService (build jobs), on the admin client's channel and token.

A subclass of :class:`AdminClient` so a failure reads the same (one line, ``AdminClientError``)
whether it came from a unary call or from the middle of a WatchJob stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import grpc

from edgefleet.client.admin_client import AdminClient
from edgefleet.v1 import jobs_pb2, jobs_pb2_grpc

__all__ = ["TERMINAL", "JobClient", "status_name"]

TERMINAL = (
    jobs_pb2.JOB_STATUS_FINISHED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_STOPPED,
    jobs_pb2.JOB_STATUS_CANCELED,
)


def status_name(status: int) -> str:
    """``JOB_STATUS_STARTED`` -> ``started``."""
    return jobs_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()


def _raising(err: grpc.RpcError) -> Callable[..., NoReturn]:
    def call(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise err

    return call


class JobClient(AdminClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)

    def __enter__(self) -> JobClient:
        return self

    def start_build(
        self, model: str, recipes: Sequence[str], latency_runs: int, timeout_seconds: int = 0
    ) -> jobs_pb2.StartBuildResponse:
        request = jobs_pb2.StartBuildRequest(
            model=model, recipes=list(recipes), latency_runs=latency_runs,
            timeout_seconds=timeout_seconds,
        )  # fmt: skip
        reply: jobs_pb2.StartBuildResponse = self._call(self._jobs.StartBuild, request)
        return reply

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        reply = self._call(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))
        job: jobs_pb2.Job = reply.job
        return job

    def list_jobs(self, limit: int = 50) -> list[jobs_pb2.Job]:
        reply = self._call(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(limit=limit))
        return list(reply.jobs)

    def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        reply = self._call(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))
        job: jobs_pb2.Job = reply.job
        return job

    def watch_job(self, job_id: str) -> Iterator[jobs_pb2.Job]:
        """The job now, then each change until it ends (no deadline: builds take minutes)."""
        stream = self._jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id), metadata=self._metadata
        )
        try:
            for reply in stream:
                yield reply.job
        except grpc.RpcError as err:
            self._call(_raising(err), None)  # the same one-line AdminClientError
            raise
        finally:
            stream.cancel()

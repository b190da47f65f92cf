"""The TrainingService client: federated runs over the API, for ``edgefleet train``.

Why a subclass of :class:`AdminClient`: the same channel, token, TLS and one-line error
mapping (a dead coordinator, a wrong token) serve both services; this adds the training calls
and follows ``WatchRun``'s stream with the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.v1 import training_pb2, training_pb2_grpc


class TrainingClient(AdminClient):
    """Start, watch, list and stop federated runs on any replica."""

    def __init__(
        self, address: str, token: str, timeout: float = 60.0, ca_cert: bytes | None = None
    ) -> None:
        # StartRun waits for Flower to accept the run (``flwr run``: seconds), hence 60 s
        super().__init__(address, token, timeout=timeout, ca_cert=ca_cert)
        self._training = training_pb2_grpc.TrainingServiceStub(self._channel)

    def start_run(self, request: training_pb2.StartRunRequest) -> training_pb2.TrainingRun:
        reply: training_pb2.TrainingRun = self._call(self._training.StartRun, request)
        return reply

    def get_run(self, name: str) -> training_pb2.TrainingRun:
        request = training_pb2.GetRunRequest(name=name)
        reply: training_pb2.TrainingRun = self._call(self._training.GetRun, request)
        return reply

    def list_runs(self) -> list[training_pb2.TrainingRun]:
        reply: training_pb2.ListRunsResponse = self._call(
            self._training.ListRuns, training_pb2.ListRunsRequest()
        )
        return list(reply.runs)

    def stop_run(self, name: str) -> training_pb2.TrainingRun:
        request = training_pb2.StopRunRequest(name=name)
        reply: training_pb2.TrainingRun = self._call(self._training.StopRun, request)
        return reply

    def watch_run(self, name: str, timeout: float) -> Iterator[training_pb2.TrainingRun]:
        """The run now, then each change, until it finishes (or ``timeout`` s pass)."""
        stream = self._training.WatchRun(
            training_pb2.WatchRunRequest(name=name), metadata=self._metadata, timeout=timeout
        )
        try:
            yield from stream
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise AdminClientError(
                    f"run {name} still running after {timeout:.0f}s", err.code()
                ) from None
            # the same one-line mapping as unary calls
            self._call(_reraise(err), None)
            raise  # pragma: no cover - _call always raises


def _reraise(err: grpc.RpcError) -> Callable[..., NoReturn]:
    def call(*_: object, **__: object) -> NoReturn:
        raise err

    return call

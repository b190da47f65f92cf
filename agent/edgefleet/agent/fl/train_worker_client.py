"""Both sides of the training worker that are not the worker: its client and its supervisor.

* :class:`TrainWorkerClient` is what the per-message ClientApp uses: ``health`` (is the
  worker there, for this shard?), ``fit`` and ``evaluate``. Light on purpose -- grpc (which
  Flower has already imported), numpy and the generated protos -- so the ClientApp process
  still never imports torch. A worker that does not answer raises :class:`WorkerUnavailable`
  (the ClientApp then trains in-process); a refusal becomes the exception the in-process path
  would have raised (``ValueError``, ``MemoryError``), so a device fails a round the same way
  with or without its worker.
* :class:`TrainWorkerSupervisor` runs ``python -m edgefleet.agent.fl.train_worker`` under
  :class:`~edgefleet.fl.process.SupervisedProcess` (restarted on death with backoff, stopped
  with its owner, adopted by a restarted agent through its pidfile), for the agent's
  federation and the loopback federations alike.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from edgefleet.agent.fl.train_worker_wire import (
    MAX_MESSAGE_BYTES,
    SOCKET_PATH_MAX,
    decode_arrays,
    encode_arrays,
)
from edgefleet.fl.process import SupervisedProcess
from edgefleet.v1 import trainworker_pb2 as pb
from edgefleet.v1 import trainworker_pb2_grpc as pb_grpc

__all__ = [
    "SOCKET_NAME",
    "TrainWorkerClient",
    "TrainWorkerSupervisor",
    "WorkerFit",
    "WorkerUnavailable",
    "socket_path_in",
    "torch_installed",
]

#: the worker's socket in a device's state dir (short: ``sun_path`` holds 107 bytes)
SOCKET_NAME = "trainer.sock"
#: how long the ClientApp waits for a worker that is (re)starting before training in-process
HEALTH_TIMEOUT_S = 10.0

Arrays = dict[str, npt.NDArray[np.float32]]


class WorkerUnavailable(RuntimeError):
    """No worker answers on the socket (not started, dead, or serving another shard)."""


def torch_installed() -> bool:
    """Whether this environment can run a worker (``edgefleet[agent-torch]``); imports nothing."""
    return importlib.util.find_spec("torch") is not None


def socket_path_in(state_dir: Path) -> Path | None:
    """The worker's socket under ``state_dir``, or None when the path is too long for one."""
    path = state_dir.absolute() / SOCKET_NAME
    return path if len(str(path).encode()) <= SOCKET_PATH_MAX else None


@dataclass(frozen=True)
class WorkerFit:
    """A round's local training as the ClientApp reports it (the worker's or in-process)."""

    params: Arrays  # the trained tensors only
    train_loss: float
    before: tuple[float, float]
    after: tuple[float, float]
    scope: str
    batch_size: int
    trained_params: int
    num_examples: int
    eval_examples: int


def _model_spec(arch: str, arch_config: Mapping[str, Any], frontend: str) -> pb.ModelSpec:
    import json

    return pb.ModelSpec(arch=arch, arch_config=json.dumps(dict(arch_config)), frontend=frontend)


class TrainWorkerClient:
    """A channel to the worker on ``socket_path`` (close it, or use it as a context manager)."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path)
        self._channel = grpc.insecure_channel(
            f"unix:{self.socket_path}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.TrainWorkerServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TrainWorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, timeout: float = HEALTH_TIMEOUT_S) -> pb.HealthResponse:
        """The worker's counters; waits up to ``timeout`` for one that is (re)starting."""
        if not self.socket_path.exists():
            raise WorkerUnavailable(f"no training worker at {self.socket_path}")
        try:
            reply: pb.HealthResponse = self._stub.Health(
                pb.HealthRequest(), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise WorkerUnavailable(
                f"training worker at {self.socket_path}: {_details(exc)}"
            ) from exc
        return reply

    def fit(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        frontend: str,
        params: Mapping[str, npt.NDArray[Any]],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        proximal_mu: float,
        seed: int,
        budget: int,
    ) -> WorkerFit:
        """One round's local training in the worker (see the proto's ``Fit``)."""
        request = pb.FitRequest(
            model=_model_spec(arch, arch_config, frontend), params=encode_arrays(params),
            epochs=epochs, batch_size=batch_size, lr=lr, proximal_mu=proximal_mu, seed=seed,
            budget_bytes=max(0, budget),
        )  # fmt: skip
        reply: pb.FitResponse = self._call(self._stub.Fit, request)
        trained = {k: np.asarray(v, np.float32) for k, v in decode_arrays(reply.trained).items()}
        return WorkerFit(
            params=trained,
            train_loss=reply.train_loss,
            before=(reply.before_loss, reply.before_acc),
            after=(reply.after_loss, reply.after_acc),
            scope=reply.scope,
            batch_size=reply.batch_size,
            trained_params=reply.trained_params,
            num_examples=reply.num_examples,
            eval_examples=reply.eval_examples,
        )

    def evaluate(
        self,
        arch: str,
        arch_config: Mapping[str, Any],
        frontend: str,
        params: Mapping[str, npt.NDArray[Any]],
    ) -> tuple[float, float, int]:
        """(loss, accuracy, held-out examples) of ``params`` on the worker's shard."""
        request = pb.EvaluateRequest(
            model=_model_spec(arch, arch_config, frontend), params=encode_arrays(params)
        )
        reply: pb.EvaluateResponse = self._call(self._stub.Evaluate, request)
        return reply.loss, reply.accuracy, reply.num_examples

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, wait_for_ready=False)
        except grpc.RpcError as exc:
            code, details = exc.code(), _details(exc)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(details) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise MemoryError(details) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise WorkerUnavailable(f"training worker: {details}") from None
            raise RuntimeError(f"training worker: {code.name}: {details}") from None


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return str(details or exc).splitlines()[0]


class TrainWorkerSupervisor(SupervisedProcess):
    """The device's training worker, restarted on death, stopped with its owner."""

    def __init__(
        self,
        socket_path: Path,
        data_path: str | Path,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        pidfile: Path | None = None,
        name: str = "train-worker",
    ) -> None:
        if len(str(socket_path).encode()) > SOCKET_PATH_MAX:
            raise ValueError(f"socket path {socket_path} is longer than {SOCKET_PATH_MAX} bytes")
        self.socket_path = socket_path
        argv = [
            sys.executable, "-m", "edgefleet.agent.fl.train_worker",
            "--socket", str(socket_path), "--data-path", str(Path(data_path).absolute()),
        ]  # fmt: skip
        merged = dict(env or {})
        # the worker imports our packages; the spawned interpreter must find them too
        merged.setdefault("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        super().__init__(
            argv, env=merged, log_path=state_dir / "train-worker.log", name=name,
            pidfile=pidfile,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> pb.HealthResponse:
        """Block until the worker answers ``Health`` (``TimeoutError`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        last = ""
        with TrainWorkerClient(self.socket_path) as client:
            while time.monotonic() < deadline:
                try:
                    return client.health(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                except WorkerUnavailable as exc:
                    last = str(exc)
                time.sleep(0.1)
        raise TimeoutError(f"training worker did not answer in {timeout:.0f}s ({last})")

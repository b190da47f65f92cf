"""The device's long-lived training worker: ``edgefleet.v1.TrainWorkerService`` on a Unix socket.

    python -m edgefleet.agent.fl.train_worker --socket PATH --data-path SHARD.npz

Why it exists: Flower 1.42's SuperNode starts a fresh ``flwr-clientapp`` process for every
message, so a conv net trained inside the ClientApp pays ``import torch``, the zoo and the
shard's MFCC again every round -- tens of CPU seconds per update on a loaded 2-core box, most
of a small round. The agent starts this worker next to its SuperNode (supervised, restarted
on death, stopped with the agent); it imports torch once -- on the first fit, so a federation
that only trains the numpy MLP never pays for it -- and keeps the shard and its features warm,
keyed by (path, mtime, size, frontend). The ClientApp hands it the round over the socket and stays light.

What a round does is :mod:`.torch_train`'s, unchanged: the same memory plan, scopes and
``trained`` keys as the in-process path, so a device answers the same with or without it.

Why a Unix socket (mode 0600 under the device's state dir) and not a port: only the agent's
own user may reach it, with no authentication scheme and nothing on the network. Why grpc.aio:
``Health`` answers while a fit runs (in a thread), and one lock keeps one fit at a time --
two concurrent rounds would double the device's training memory, which the plan budgets once.

Every refusal is one line with a status the caller can act on (see the proto); a failure
inside training is INTERNAL with its first line, and the traceback goes to the worker's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn

import grpc

from edgefleet.agent.fl.train_worker_wire import (
    MAX_MESSAGE_BYTES,
    SOCKET_PATH_MAX,
    WireError,
    decode_arrays,
    encode_arrays,
)
from edgefleet.fl.partition import Shard
from edgefleet.interceptors import ValidationInterceptor
from edgefleet.v1 import trainworker_pb2 as pb
from edgefleet.v1 import trainworker_pb2_grpc as pb_grpc

__all__ = ["ShardError", "TrainWorker", "main", "serve"]

log = logging.getLogger("edgefleet.agent.fl.train_worker")

#: shards kept warm: the device's one shard, raw and as features (a second frontend is rare)
CACHE_ENTRIES = 2
MAX_EPOCHS = 1000
MAX_BATCH = 1 << 16


class ShardError(RuntimeError):
    """The worker's data shard is missing or unreadable (FAILED_PRECONDITION)."""


def _config(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise WireError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _check_fit(request: pb.FitRequest) -> None:
    """The scalars of a fit, before anything is computed from them."""
    if not 1 <= request.epochs <= MAX_EPOCHS:
        raise WireError(f"epochs must be in [1, {MAX_EPOCHS}], got {request.epochs}")
    if not 1 <= request.batch_size <= MAX_BATCH:
        raise WireError(f"batch_size must be in [1, {MAX_BATCH}], got {request.batch_size}")
    if not (math.isfinite(request.lr) and request.lr > 0):
        raise WireError(f"lr must be a positive finite number, got {request.lr}")
    if not (math.isfinite(request.proximal_mu) and request.proximal_mu >= 0):
        raise WireError(f"proximal_mu must be finite and >= 0, got {request.proximal_mu}")


def _check_params(arch: str, config: dict[str, Any], params: dict[str, Any]) -> None:
    """``params`` must be exactly the state dict of ``arch`` at ``config`` (names and shapes).

    Checked here so a wrong model is INVALID_ARGUMENT naming the tensor, not a torch
    ``RuntimeError`` from ``load_state_dict`` deep inside the plan.
    """
    from edgefleet.zoo import ArchitectureError, ArchitectureSpec, build_model

    if not arch:
        raise WireError("model.arch is empty")
    try:
        model = build_model(ArchitectureSpec(name=arch, config=config, input_shape=(1, 8, 8)))
    except ArchitectureError as exc:
        raise WireError(str(exc).splitlines()[0]) from exc
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in params]
    extra = [k for k in params if k not in want]
    if missing or extra:
        raise WireError(
            f"params do not match {arch}: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for k, shape in want.items():
        got = tuple(params[k].shape)
        if got != shape and not (shape == () and got == (1,)):  # a scalar travels as [1]
            raise WireError(
                f"param {k!r} has shape {list(params[k].shape)}; {arch} needs {list(shape)}"
            )


def _float32(params: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}


class TrainWorker(pb_grpc.TrainWorkerServiceServicer):
    """The service: one device's shard, one fit at a time, counters for ``Health``."""

    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self.started = time.monotonic()
        self.fits = self.evaluates = self.rejected = 0
        self.cache_hits = self.cache_misses = 0
        self.busy = False
        self._cache: OrderedDict[tuple[str, int, int, str], Shard] = OrderedDict()
        self._lock: asyncio.Lock | None = None  # made on the server's loop

    # -- the shard, warm ---------------------------------------------------------------------

    def shard(self, frontend: str) -> Shard:
        """The shard as the network's input, computed once per (file version, frontend)."""
        try:
            st = os.stat(self.data_path)
        except OSError as exc:
            raise ShardError(f"data shard {self.data_path}: {exc.strerror}") from exc
        key = (str(self.data_path), st.st_mtime_ns, st.st_size, frontend)
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            self._cache.move_to_end(key)
            return cached
        self.cache_misses += 1
        from edgefleet.fl.partition import load_shard

        try:
            shard = load_shard(self.data_path)
        except (OSError, KeyError, ValueError) as exc:
            raise ShardError(f"data shard {self.data_path}: {exc}") from exc
        if frontend:  # raw audio -> the network's features, by the serving frontend's code
            from edgefleet.fl.features import featurize_shard
            from edgefleet.frontend import FrontendSpec

            try:
                spec = FrontendSpec.from_dict(json.loads(frontend))
            except (KeyError, TypeError, ValueError) as exc:
                raise WireError(f"model.frontend is not a frontend spec: {exc}") from exc
            shard = featurize_shard(shard, spec)
        self._cache[key] = shard
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return shard

    # -- the work (in a thread) ----------------------------------------------------------------

    def _fit(self, request: pb.FitRequest) -> pb.FitResponse:
        t0 = time.perf_counter()
        _check_fit(request)
        params = _float32(decode_arrays(request.params))
        spec = request.model
        config = _config(spec.arch_config, "model.arch_config")
        _config(spec.frontend, "model.frontend")
        _check_params(spec.arch, config, params)
        shard = self.shard(spec.frontend)
        from edgefleet.agent.fl.torch_train import fit

        fitted = fit(
            spec.arch, config, params, shard, epochs=int(request.epochs),
            batch_size=int(request.batch_size), lr=float(request.lr),
            proximal_mu=float(request.proximal_mu), seed=int(request.seed),
            budget=int(request.budget_bytes),
        )  # fmt: skip
        return pb.FitResponse(
            trained=encode_arrays(fitted.params),
            train_loss=fitted.train_loss,
            before_loss=fitted.before[0],
            before_acc=fitted.before[1],
            after_loss=fitted.after[0],
            after_acc=fitted.after[1],
            scope=fitted.scope,
            batch_size=fitted.batch_size,
            trained_params=fitted.trained_params,
            num_examples=len(shard.y_train),
            eval_examples=len(shard.y_eval),
            worker_seconds=time.perf_counter() - t0,
        )

    def _evaluate(self, request: pb.EvaluateRequest) -> pb.EvaluateResponse:
        params = _float32(decode_arrays(request.params))
        spec = request.model
        config = _config(spec.arch_config, "model.arch_config")
        _config(spec.frontend, "model.frontend")
        _check_params(spec.arch, config, params)
        shard = self.shard(spec.frontend)
        from edgefleet.agent.fl.torch_train import score

        loss, acc = score(spec.arch, config, params, shard)
        return pb.EvaluateResponse(loss=loss, accuracy=acc, num_examples=len(shard.y_eval))

    async def _run(
        self, work: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """``work(request)`` in a thread under the one lock; refusals become one-line statuses."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self.busy = True
            try:
                return await asyncio.to_thread(work, request)
            except WireError as exc:
                self.rejected += 1
                status, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except ShardError as exc:
                status, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            except MemoryError as exc:
                status, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc) or "out of memory"
            except Exception as exc:  # training itself failed: INTERNAL, traceback to the log
                log.exception("%s failed", getattr(work, "__name__", "work"))
                first = str(exc).splitlines()[0] if str(exc) else ""
                status, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {first}"
            finally:
                self.busy = False
        await _abort(context, status, message.splitlines()[0] if message else status.name)

    async def Fit(
        self, request: pb.FitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FitResponse:
        reply: pb.FitResponse = await self._run(self._fit, request, context)
        self.fits += 1
        return reply

    async def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EvaluateResponse:
        reply: pb.EvaluateResponse = await self._run(self._evaluate, request, context)
        self.evaluates += 1
        return reply

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            pid=os.getpid(),
            data_path=str(self.data_path),
            fits=self.fits,
            evaluates=self.evaluates,
            rejected=self.rejected,
            shard_cache_hits=self.cache_hits,
            shard_cache_misses=self.cache_misses,
            torch_loaded="torch" in sys.modules,
            busy=self.busy,
            uptime_seconds=time.monotonic() - self.started,
        )


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], status: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(status, message)
    raise AssertionError("unreachable: context.abort raises")


async def serve(socket_path: Path, data_path: Path) -> None:
    """Serve until SIGTERM/SIGINT; the socket is created 0600 and removed on the way out."""
    worker = TrainWorker(data_path)
    server = grpc.aio.server(
        interceptors=[ValidationInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_TrainWorkerServiceServicer_to_server(worker, server)  # type: ignore[no-untyped-call]
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o177)  # the socket file is born 0600: no window where others may connect
    try:
        if not server.add_insecure_port(f"unix:{socket_path}"):
            raise OSError(f"cannot listen on unix:{socket_path}")
        await server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    log.info("training worker on unix:%s for %s (pid %d)", socket_path, data_path, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.agent.fl.train_worker",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to serve on")
    parser.add_argument("--data-path", type=Path, required=True, help="the device's shard (.npz)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    socket_path = args.socket.absolute()
    if len(str(socket_path).encode()) > SOCKET_PATH_MAX:
        print(
            f"error: socket path is {len(str(socket_path).encode())} bytes; a Unix socket's "
            f"path must be at most {SOCKET_PATH_MAX}",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(socket_path, args.data_path.absolute()))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

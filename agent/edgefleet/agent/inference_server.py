"""The device-local inference endpoint: ``edgefleet.v1.InferenceService`` on 127.0.0.1.

Why gRPC on loopback: applications on the device get a typed contract (``protos/``) and any
language's stubs, and binding only to 127.0.0.1 keeps the endpoint off the network without an
authentication scheme. It runs on the agent's own asyncio loop (one process, no extra
thread pool to size); each batch runs in a worker thread so a slow inference never delays a
heartbeat. Status codes: a malformed input is the caller's to fix (INVALID_ARGUMENT, also for
bytes that are not an InferRequest and shapes of absurd rank), no active variant yet is a
state to wait out (FAILED_PRECONDITION), and so is a classifier active when ``Generate``
asks for a language model. ``Generate`` streams: a worker thread decodes and hands each token
to the loop as it is sampled, so the first byte reaches the caller after the prefill, not
after the whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from edgefleet.agent.runtimes import InferenceError, InputError, NotLoadedError
from edgefleet.agent.serving import LATENCY_BOUNDS_MS, Serving
from edgefleet.interceptors import ValidationInterceptor
from edgefleet.v1 import inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from edgefleet.agent.generation import GenerateParams

__all__ = ["InferenceServer", "decode_input", "generate_params"]

log = logging.getLogger("edgefleet.agent.inference")

_DTYPES = ("float32",)  # what variants take today; the runtime checks the variant's own dtype
# Dimensions a shape may have: numpy refuses more than 64 (an error escaping as UNKNOWN), and
# no variant takes more than a handful; checked before anything is computed from the shape.
MAX_DIMS = 32
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a batch for a small device, not a dataset


def decode_input(request: inference_pb2.InferRequest, variant_shape: list[int]) -> Any:
    """The request's batch as a numpy array, or ``InputError`` saying what is wrong."""
    import numpy as np

    which = request.WhichOneof("input")
    if which == "tensor":
        t = request.tensor
        dtype = t.dtype or "float32"
        if dtype not in _DTYPES:
            raise InputError(f"tensor dtype {dtype!r} is not supported (use float32)")
        shape = _checked_shape(t.shape, "tensor shape")
        if not shape or any(d < 1 for d in shape):
            raise InputError(f"tensor shape {shape} must be non-empty with positive dims")
        want = math.prod(shape) * np.dtype(dtype).itemsize
        if len(t.data) != want:
            raise InputError(
                f"tensor data is {len(t.data)} bytes but shape {shape} of {dtype} needs {want}"
            )
        return np.frombuffer(t.data, dtype="<f4").reshape(shape).astype(np.float32)
    if which == "values":
        values = np.asarray(request.values.values, dtype=np.float32)
        shape = _checked_shape(request.values.shape, "values shape")
        if not shape:
            per = math.prod(variant_shape[1:])
            if per == 0 or values.size == 0 or values.size % per:
                raise InputError(
                    f"{values.size} values are not a whole number of inputs of shape "
                    f"{variant_shape[1:]} ({per} values each)"
                )
            shape = [values.size // per, *variant_shape[1:]]
        if math.prod(shape) != values.size or any(d < 1 for d in shape):
            raise InputError(f"{values.size} values do not fill shape {shape}")
        return values.reshape(shape)
    raise InputError("the request carries no input (set tensor or values)")


def generate_params(request: inference_pb2.GenerateRequest) -> GenerateParams:
    """The request's fields as :class:`GenerateParams` (checked against the model later)."""
    from edgefleet.agent.generation import GenerateParams

    which = request.WhichOneof("prompt")
    prompt = request.text.encode("utf-8") if which == "text" else bytes(request.data)
    return GenerateParams(
        prompt=prompt,
        max_tokens=int(request.max_tokens),
        temperature=float(request.temperature),
        top_k=int(request.top_k),
        top_p=float(request.top_p),
        stop=tuple(bytes(s) for s in request.stop),
        seed=int(request.seed) if request.HasField("seed") else None,
    )


def _checked_shape(dims: Sequence[int], what: str) -> list[int]:
    if len(dims) > MAX_DIMS:
        raise InputError(f"{what} has {len(dims)} dimensions (at most {MAX_DIMS})")
    return [int(d) for d in dims]


class _Servicer(inference_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    async def Infer(
        self, request: inference_pb2.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.InferResponse:
        labels = list(request.labels) or None

        def run() -> inference_pb2.InferResponse:
            batch = decode_input(request, self.serving.input_shape())
            if labels is not None and len(labels) != batch.shape[0]:
                raise InputError(f"{len(labels)} labels for a batch of {batch.shape[0]}")
            result = self.serving.infer(batch, labels)
            return inference_pb2.InferResponse(
                predictions=[
                    inference_pb2.Prediction(logits=row.tolist(), argmax=a)
                    for row, a in zip(result.logits, result.argmax, strict=True)
                ],
                latency_ms=result.latency_ms,
                latency_source=result.latency_source,
                variant_id=result.variant_id,
                runtime=result.runtime,
            )

        try:
            return await asyncio.to_thread(run)
        except NotLoadedError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except InferenceError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        raise AssertionError("unreachable: context.abort raises")

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Stream tokens as a worker thread decodes them (the loop never waits on the model)."""
        from edgefleet.agent.generation import NotLanguageModelError

        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[inference_pb2.GenerateChunk | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        serving = self.serving

        def run() -> None:
            try:
                params = generate_params(request)
                variant = serving.variant_id
                for t in serving.generate(params, stop.is_set):
                    chunk = inference_pb2.GenerateChunk(data=t.data, index=t.index)
                    if t.finish_reason:
                        chunk.finish_reason = t.finish_reason
                        chunk.time_to_first_token_ms = t.time_to_first_token_ms
                        chunk.tokens_per_second = t.tokens_per_second
                        chunk.prompt_tokens = len(params.prompt)
                        chunk.variant_id = variant
                        chunk.context_limit = serving.context_limit()
                    loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except BaseException as exc:  # handed to the loop, which maps it to a status
                loop.call_soon_threadsafe(chunks.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, NotLoadedError | NotLanguageModelError):
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(item))
                if isinstance(item, InputError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item))
                if isinstance(item, BaseException):
                    await context.abort(grpc.StatusCode.INTERNAL, str(item))
                assert isinstance(item, inference_pb2.GenerateChunk)
                yield item
        finally:
            stop.set()  # a caller that went away stops the decode at the next token

    async def GetServingStatus(
        self,
        request: inference_pb2.GetServingStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_pb2.GetServingStatusResponse:
        s = self.serving
        cumulative, total = [], 0
        for n in s.histogram:
            total += n
            cumulative.append(total)
        return inference_pb2.GetServingStatusResponse(
            variant_id=s.variant_id,
            runtime=s.runtime_name,
            requests=s.total_requests,
            errors=s.total_errors,
            rejected=s.total_rejected,
            latency_bounds_ms=list(LATENCY_BOUNDS_MS),
            latency_counts=cumulative,
            last_refusal=s.last_refusal,
        )


class InferenceServer:
    """Owns the loopback gRPC server; ``port`` 0 picks a free one (see ``bound_port``)."""

    def __init__(self, serving: Serving, port: int, host: str = "127.0.0.1") -> None:
        self.serving = serving
        self.host = host
        self.port = port
        self.bound_port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        server = grpc.aio.server(
            # undecodable request bytes: INVALID_ARGUMENT, like every malformed input
            interceptors=[ValidationInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(_Servicer(self.serving), server)
        self.bound_port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.bound_port:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        await server.start()
        self._server = server
        log.info("inference endpoint on %s:%d", self.host, self.bound_port)
        return self.bound_port

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

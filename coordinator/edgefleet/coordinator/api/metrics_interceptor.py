"""The RPC metrics interceptor: every unary and server-streaming call counted and timed.

One interceptor, one concern: request validation is :mod:`edgefleet.interceptors`' job.
A server stream (DownloadArtifact) is timed from its start to its last message or its
status, so a stream cancelled for not reading shows up with its code like any other call.
Services and methods are the finite set this server registers, and codes are gRPC's, so
the label cardinality is bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.interceptors import Behavior, Continuation, drive, rewrap

__all__ = ["MetricsInterceptor"]


def _split_method(full: str) -> tuple[str, str]:
    """'/edgefleet.v1.DeviceService/Register' -> ('edgefleet.v1.DeviceService', 'Register')."""
    _, service, method = [*full.split("/"), "", ""][:3]
    return service or "unknown", method or "unknown"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts (by status code) and times every unary-unary and unary-stream call."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        metrics = self._metrics

        def record(
            context: grpc.aio.ServicerContext[Any, Any], start: float, exc: BaseException | None
        ) -> None:
            code = "OK"
            if exc is not None:
                found = context.code()
                if isinstance(found, grpc.StatusCode):
                    code = found.name
                else:  # no status set: the client went away, or the body raised
                    code = "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"
            metrics.rpc_seconds.labels(service, method).observe(time.perf_counter() - start)
            metrics.rpcs.labels(service, method, code).inc()

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            if stream:

                async def timed_stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> None:
                    start = time.perf_counter()
                    try:
                        await drive(behavior(request, context), context)
                    except BaseException as exc:
                        record(context, start, exc)
                        raise
                    record(context, start, None)

                return timed_stream

            async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                try:
                    reply = await behavior(request, context)
                except BaseException as exc:
                    record(context, start, exc)
                    raise
                record(context, start, None)
                return reply

            return timed

        return rewrap(handler, wrap)

"""Server interceptors shared by the coordinator and the agent, one concern each.

gRPC's Python server lets an interceptor replace a method's handler; doing it right for
both unary-unary and unary-stream methods takes the same few lines every time, so they
live here (:func:`rewrap`, :func:`drive`) and each interceptor only says what it adds:

- :class:`ValidationInterceptor`: bytes that do not decode as the method's request
  message are answered with INVALID_ARGUMENT. Left to grpc.aio, a malformed message
  surfaces as UNKNOWN with an ERROR traceback in the server's log per call, which tells
  the client nothing and lets anyone fill the log.
- :class:`WriteDeadlineInterceptor`: a server stream whose client stops reading is
  cancelled after a while instead of holding its buffers, file and slot for as long as
  the client lives.

Stream-stream and stream-unary methods (reflection) pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

__all__ = [
    "Behavior",
    "Continuation",
    "ValidationInterceptor",
    "WriteDeadlineInterceptor",
    "drive",
    "rewrap",
]

Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
#: A method body: ``(request, context)`` -> a response (unary), or an async iterator of
#: responses, or a coroutine writing them with ``context.write`` (unary-stream).
Behavior = Callable[..., Any]
Wrap = Callable[[Behavior, bool], Behavior]


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Wrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its unary-unary or unary-stream body replaced by ``wrap(body, stream)``.

    Other kinds are returned unchanged. ``request_deserializer`` replaces the handler's
    own when given.
    """
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


async def drive(
    result: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    write_timeout: float | None = None,
) -> None:
    """Run a unary-stream body's ``result`` to the end, writing what it yields.

    A body is either an async generator (its items are written here, each within
    ``write_timeout`` seconds if given) or a coroutine that writes for itself. The
    generator is always closed, so its ``finally`` blocks (a stream slot, an open file)
    run when the call is cancelled, not whenever the garbage collector gets to it.
    """
    if inspect.isasyncgen(result):
        stream: AsyncIterator[Any] = result
        try:
            async for message in stream:
                if write_timeout is None:
                    await _write_or_end(context, context.write(message))
                    continue
                await _write_within(context, message, write_timeout)
        finally:
            await result.aclose()
    elif inspect.isawaitable(result):
        await result


async def _write_within(
    context: grpc.aio.ServicerContext[Any, Any], message: Any, seconds: float
) -> None:
    """``context.write(message)``; if it is not taken within ``seconds``, end the call.

    A write blocked on flow control completes only when the client reads or the call ends,
    and so would a status sent after it: neither can be awaited here. The status (with
    why) is queued behind the data for a client that reads on, and this handler ends
    now, so what it holds (a stream slot, an open file) is released at once.
    """
    write = asyncio.ensure_future(context.write(message))
    try:
        done, _ = await asyncio.wait({write}, timeout=seconds)
    except BaseException:  # the call was cancelled meanwhile: do not leave the write behind
        write.cancel()
        write.add_done_callback(_consume)
        raise
    if done:
        await _write_or_end(context, write)
        return
    write.add_done_callback(_consume)
    status = asyncio.ensure_future(
        context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"stream cancelled: the client read nothing for {seconds:g} s",
        )
    )
    status.add_done_callback(_consume)
    await asyncio.sleep(0)  # let the abort mark the status sent before this handler ends
    raise asyncio.CancelledError("the client stopped reading")


async def _write_or_end(
    context: grpc.aio.ServicerContext[Any, Any], write: Awaitable[None]
) -> None:
    """Await a stream write; if it fails because the client already cancelled the call,
    end this handler as cancelled (routine, logged by nobody) instead of failing it.

    A write racing the client's cancel fails inside grpc's core ("execute_batch"), which
    grpc.aio would log with a traceback for every download a device abandons.
    """
    try:
        await write
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _call_ended(context) or type(exc).__name__ == "ExecuteBatchError":
            raise asyncio.CancelledError("the client ended the call") from exc
        raise


def _call_ended(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    try:
        return bool(context.cancelled() or context.done())
    except Exception:  # an older context without these: judge by the error alone
        return False


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned operation's outcome: its failure is expected, not news."""
    if not task.cancelled():
        task.exception()


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            return _Undecodable(exc)

    return decode


def _method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1] or "unknown"


class ValidationInterceptor(grpc.aio.ServerInterceptor):
    """Undecodable request bytes -> INVALID_ARGUMENT, for unary and streaming methods alike."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)

        async def refuse(
            request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any]
        ) -> NoReturn:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request: not a valid {method} message ({request.error})",
            )
            raise AssertionError("unreachable: context.abort raises")

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            if stream:

                async def checked_stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> None:
                    if isinstance(request, _Undecodable):
                        await refuse(request, context)
                    await drive(behavior(request, context), context)

                return checked_stream

            async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(request, context)
                return await behavior(request, context)

            return checked

        return rewrap(handler, wrap, _tolerant(handler.request_deserializer))


class WriteDeadlineInterceptor(grpc.aio.ServerInterceptor):
    """Cancel a server stream when one message waits ``seconds`` to be taken by the client.

    A stream's sender blocks once HTTP/2 flow control is full, i.e. when the client stops
    reading; a slow but live reader makes progress well within the deadline. Only
    streams whose body is an async generator are covered (their writes happen here);
    a body that calls ``context.write`` itself keeps its own pace.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("the stream write deadline must be > 0 seconds")
        self.seconds = seconds

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_stream is None:
            return handler
        seconds = self.seconds

        def wrap(behavior: Behavior, stream: bool) -> Behavior:
            async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await drive(behavior(request, context), context, write_timeout=seconds)

            return bounded

        return rewrap(handler, wrap)

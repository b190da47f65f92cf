"""Who is calling, and how a failure leaves: the part every service shares.

The caller's identity comes from ``authorization: Bearer`` metadata and, on the device
endpoint, from the verified client certificate. :func:`guard` runs an RPC body so that
every core error (``edgefleet.coordinator.errors``) reaches the client as a status with a
message naming the problem, never as an internal error, and counts authentication
failures in one place for all RPCs; :func:`admin_rpc` adds the admin role check.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from edgefleet.coordinator.errors import (
    AUTH_FAILURE_REASONS,
    CoordinatorError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.tokens import Tokens
from edgefleet.pki import DEVICE_URI_PREFIX
from edgefleet.profiles import ProfileError

__all__ = ["AdminRpcHost", "admin_rpc", "bearer_token", "guard", "peer_device_id"]

T = TypeVar("T")

_CODES: list[tuple[type[CoordinatorError], grpc.StatusCode]] = [
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The secret from ``authorization: Bearer <secret>`` metadata, or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


def peer_device_id(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The device id of the caller's verified client certificate (mutual TLS), else None.

    gRPC only fills the x509 fields after verifying the chain against our CA, so
    this is an identity the request body cannot forge.
    """
    auth = context.auth_context() or {}
    for value in auth.get("x509_subject_alternative_name", []):
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.startswith(DEVICE_URI_PREFIX):
            return text.removeprefix(DEVICE_URI_PREFIX)
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: CoordinatorError) -> NoReturn:
    for kind, code in _CODES:
        if isinstance(err, kind):
            await context.abort(code, str(err))
    await context.abort(grpc.StatusCode.INTERNAL, str(err))
    raise AssertionError("unreachable")  # context.abort always raises


def _auth_failure_reason(err: CoordinatorError) -> str:
    """The ``edgefleet_auth_failures_total`` reason of an error, "" if it is not one."""
    if isinstance(err, Unauthenticated | PermissionDenied):
        return err.reason if err.reason in AUTH_FAILURE_REASONS else ""
    return ""


async def guard(
    context: grpc.aio.ServicerContext[Any, Any],
    call: Callable[[], Awaitable[T]],
    metrics: CoordinatorMetrics | None = None,
) -> T:
    """Run an RPC body; every core error leaves as its status code, and every
    authentication failure is counted on the way (one place for all RPCs)."""
    try:
        return await call()
    except ProfileError as err:
        await _abort(context, InvalidArgument(f"profile.{err.field}", err.reason))
    except CoordinatorError as err:
        reason = _auth_failure_reason(err)
        if reason and metrics is not None:
            metrics.auth_failures.labels(reason).inc()
        await _abort(context, err)


class AdminRpcHost(Protocol):
    """A servicer :func:`admin_rpc` can guard: it checks tokens and counts failures."""

    _tokens: Tokens
    _metrics: CoordinatorMetrics | None


Host = TypeVar("Host", bound=AdminRpcHost)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
AdminHandler = Callable[[Host, Req, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Resp]]


def admin_rpc(
    *, write: bool
) -> Callable[[AdminHandler[Host, Req, Resp]], AdminHandler[Host, Req, Resp]]:
    """An admin RPC: the caller's token must carry the role (``write`` needs admin, reads
    accept read-only too), and every failure leaves as a gRPC status (:func:`guard`)."""

    def wrap(body: AdminHandler[Host, Req, Resp]) -> AdminHandler[Host, Req, Resp]:
        @functools.wraps(body)
        async def rpc(
            self: Host, request: Req, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Resp:
            async def call() -> Resp:
                self._tokens.check_admin(bearer_token(context), write=write)
                return await body(self, request, context)

            return await guard(context, call, self._metrics)

        return rpc

    return wrap

"""Errors of the coordinator's core logic, each mapping to one gRPC status code.

Core logic raises these with a message meant for the caller; the gRPC API
(``edgefleet.coordinator.api.guard``) translates them (UNAUTHENTICATED, PERMISSION_DENIED,
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE) at the edge.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class: ``str(err)`` is the message returned to the client."""


# Why an authentication failed: the label values of edgefleet_auth_failures_total
# (a fixed set, so the metric's cardinality is bounded whatever callers send).
AUTH_FAILURE_REASONS = (
    "enroll_token",
    "credential",
    "revoked",
    "admin_token",
    "certificate",
)


class Unauthenticated(CoordinatorError):
    """Missing or wrong token or credential. ``reason`` is one of ``AUTH_FAILURE_REASONS``."""

    def __init__(self, message: str, reason: str = "credential") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(CoordinatorError):
    """A request field is malformed; the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class NotFound(CoordinatorError):
    """An id that the coordinator does not know."""


class Unavailable(CoordinatorError):
    """A dependency (Redis) is away; the client should retry later."""


class FailedPrecondition(CoordinatorError):
    """The request is valid but the fleet is not in a state to accept it."""


class PermissionDenied(CoordinatorError):
    """The caller is known but may not do this (another device's id, a read-only token).

    ``reason`` is set (one of ``AUTH_FAILURE_REASONS``) when the refusal is an
    authentication failure worth counting (a revoked device, a foreign certificate),
    and "" for a role check such as the read-only token.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason

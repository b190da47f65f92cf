"""Errors of the coordinator's core logic, each mapping to one gRPC status code.

Core logic raises these with a message meant for the caller; the servicers
translate them (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE) at
the edge.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class: ``str(err)`` is the message returned to the client."""


class Unauthenticated(CoordinatorError):
    """Missing or wrong token or credential."""


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
    """The caller is known but may not do this (another device's id, a read-only token)."""

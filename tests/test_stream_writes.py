"""A server stream whose client cancels mid-write ends as cancelled, not as an error.

The race itself (grpc core failing a send because the peer just cancelled) cannot be
forced through a real channel on demand, so these drive :func:`edgefleet.interceptors.drive`
with a stand-in context whose ``write`` fails the way grpc's does (an exception named
``ExecuteBatchError``); the real-channel path is covered by test_limits.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgefleet.interceptors import drive


class ExecuteBatchError(Exception):
    """Same name as grpc's cygrpc error for a send on a call that has ended."""


class _Context:
    def __init__(self, fail_with: Exception, ended: bool) -> None:
        self.fail_with = fail_with
        self.ended = ended
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        if self.written:
            raise self.fail_with
        self.written.append(message)

    def cancelled(self) -> bool:
        return self.ended

    def done(self) -> bool:
        return self.ended


async def _two() -> AsyncIterator[int]:
    yield 1
    yield 2


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_write_failing_after_the_client_cancelled_ends_as_cancelled(
    timeout: float | None,
) -> None:
    context = _Context(ExecuteBatchError("execute_batch"), ended=True)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(drive(_two(), context, write_timeout=timeout))  # type: ignore[arg-type]
    assert context.written == [1]


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_another_write_failure_on_a_live_call_still_fails(timeout: float | None) -> None:
    context = _Context(TypeError("not a message"), ended=False)
    with pytest.raises(TypeError):
        asyncio.run(drive(_two(), context, write_timeout=timeout))  # type: ignore[arg-type]

"""What every part of ``FleetStore`` shares: the Redis client, the key names, and the rule that a
lost Redis connection surfaces as ``StoreError`` (UNAVAILABLE), never as a Redis exception.

Why a base class: ``FleetStore`` is composed of one mixin per concept (devices, liveness,
telemetry, rollouts, leases, federated rounds, revocation); each derives from ``StateBase`` and
registers its own Lua scripts in a cooperative ``__init__``, so a concept's keys, scripts and
methods sit in one module and the facade only lists the parts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException

from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import StoreError

P = ParamSpec("P")
R = TypeVar("R")


def unavailable_on_redis_error(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn a lost Redis connection into ``StoreError`` so callers answer UNAVAILABLE."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (aioredis.RedisError, RedisClusterException) as exc:
            raise StoreError(f"state store unavailable: {exc}") from exc

    return wrapper


class StateBase:
    """The client and key names every concept's mixin works with."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        """``client`` must be created with ``decode_responses=True`` (we store text only):
        one server or Sentinel's master (``redis.asyncio.Redis``) or a ``RedisCluster``."""
        self._redis = client
        self.keys = keys or Keys()

    async def close(self) -> None:
        await self._redis.aclose()

"""Federated runs and the fleet's SuperLink: records every replica (and the ServerApp) shares.

Why a module of its own: a run's record used to be files in the CLI's run directory, readable
only on the host whose disk the ServerApp wrote to (issue 18). Here it is one hash per run in the
fleet's Redis, written by two parties that never overwrite each other's fields: the replica that
submitted the run (``meta``: model, SuperLink, Flower's run id) and the ServerApp itself
(``progress``: its record, rewritten whole after every round, plus a short-lived ``alive`` key it
renews while it runs -- a liveness check that works from any host, unlike a pid). The fleet's
SuperLink address lives here too, so every replica tells its agents the same one.

Values are JSON text (the store keeps text only); a run's name is validated by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys

# KEYS: run hash, runs index. ARGV: name, meta JSON, created (unix s). Create once.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class StoredRun:
    """A run's record as stored: what each party wrote, and whether its ServerApp lives."""

    name: str
    meta: dict[str, Any]
    progress: dict[str, Any]
    stopped: bool
    alive: bool


class FederatedRunState(StateBase):
    """Create, update and read federated runs; publish and read the fleet's SuperLink."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._create_run = client.register_script(_CREATE)

    @unavailable_on_redis_error
    async def create_run(self, name: str, meta: dict[str, Any], created: float) -> bool:
        """Record a new run; False if a run of that name exists (names are never reused)."""
        k = self.keys
        result = await self._create_run(
            keys=[k.fl_run(name), k.fl_runs], args=[name, json.dumps(meta), repr(created)]
        )
        return int(cast(int, result)) == 1

    @unavailable_on_redis_error
    async def update_run_meta(self, name: str, meta: dict[str, Any]) -> None:
        await self._redis.hset(self.keys.fl_run(name), "meta", json.dumps(meta))

    @unavailable_on_redis_error
    async def put_run_progress(self, name: str, progress: dict[str, Any], alive_ttl: float) -> None:
        """The ServerApp's record (whole) and its liveness, in one transaction."""
        k = self.keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.fl_run(name), "progress", json.dumps(progress, default=str))
            pipe.set(k.fl_run_alive(name), "1", px=int(alive_ttl * 1000))
            await pipe.execute()

    @unavailable_on_redis_error
    async def renew_run_alive(self, name: str, alive_ttl: float) -> None:
        await self._redis.set(self.keys.fl_run_alive(name), "1", px=int(alive_ttl * 1000))

    @unavailable_on_redis_error
    async def mark_run_stopped(self, name: str) -> None:
        await self._redis.hset(self.keys.fl_run(name), "stopped", "1")

    @unavailable_on_redis_error
    async def put_run_blob(self, name: str, field: str, text: str) -> None:
        """A text blob of the run (e.g. initial weights, base64), read by the ServerApp."""
        await self._redis.hset(self.keys.fl_run(name), f"blob:{field}", text)

    @unavailable_on_redis_error
    async def run_blob(self, name: str, field: str) -> str | None:
        return cast(str | None, await self._redis.hget(self.keys.fl_run(name), f"blob:{field}"))

    @unavailable_on_redis_error
    async def get_run(self, name: str) -> StoredRun | None:
        k = self.keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(k.fl_run(name), ["meta", "progress", "stopped"])
            pipe.exists(k.fl_run_alive(name))
            (meta, progress, stopped), alive = await pipe.execute()
        if meta is None:
            return None
        return StoredRun(
            name, json.loads(meta), json.loads(progress) if progress else {}, bool(stopped),
            bool(alive),
        )  # fmt: skip

    @unavailable_on_redis_error
    async def run_names(self, limit: int = 200) -> list[str]:
        """Run names, oldest first (the newest ``limit``)."""
        names = await self._redis.zrange(self.keys.fl_runs, -limit, -1)
        return [str(n) for n in names]

    @unavailable_on_redis_error
    async def publish_superlink(self, record: dict[str, Any]) -> None:
        """Name the fleet's SuperLink (kept until the next holder overwrites it: agents must
        not leave the federation while the lease moves)."""
        await self._redis.set(self.keys.fl_superlink, json.dumps(record))

    @unavailable_on_redis_error
    async def fleet_superlink(self) -> dict[str, Any] | None:
        raw = await self._redis.get(self.keys.fl_superlink)
        return None if raw is None else cast(dict[str, Any], json.loads(raw))

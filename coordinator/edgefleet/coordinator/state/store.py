"""``FleetStore``: async access to fleet state in Redis, composed of one part per concept.

Why a thin facade: callers (registry, rollouts, the rollout controller, the server, the train
verbs) want one object with one connection; each concept's keys, Lua scripts and methods live in
their own module (``devices``, ``liveness``, ``telemetry``, ``rollouts``, ``leases``,
``fl_rounds``, ``revocation``), and this class only lists them and checks, at start, that Redis
is there and holds a schema this build reads (upgrading an older one: renaming a store from before
hash tags, then rebuilding indexes a schema-1 store lacks), and whether Redis persists it.
"""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException

from edgefleet.coordinator.state.devices import DeviceState
from edgefleet.coordinator.state.fl_rounds import FederatedRoundState
from edgefleet.coordinator.state.fl_runs import FederatedRunState
from edgefleet.coordinator.state.keys import SCHEMA_VERSION, UPGRADABLE_SCHEMAS
from edgefleet.coordinator.state.leases import LeaseState
from edgefleet.coordinator.state.liveness import LivenessState
from edgefleet.coordinator.state.model import StoreError
from edgefleet.coordinator.state.revocation import RevocationState
from edgefleet.coordinator.state.rollouts import RolloutState
from edgefleet.coordinator.state.telemetry import TelemetryState


class FleetStore(
    DeviceState,
    LivenessState,
    TelemetryState,
    RolloutState,
    LeaseState,
    FederatedRoundState,
    FederatedRunState,
    RevocationState,
):
    """Async access to fleet state in Redis. The only code that talks to Redis.

    ``FleetStore(client, keys=None)``: ``client`` must be created with ``decode_responses=True``
    (we store text only); each part registers its Lua scripts on it.
    """

    async def check(self) -> None:
        """Fail early, with a clear error, if Redis is away or written by an incompatible version.

        A store written by an older, upgradable schema (or with no schema key) is
        upgraded here, before the coordinator serves: a store under the untagged prefix
        is renamed (``migrate_untagged_keys``), a schema-1 store gets its fleet indexes
        (``rebuild_fleet_indexes``).
        """
        try:
            await self._redis.ping()
            found = await self._redis.get(self.keys.schema_version)
            if found is None and isinstance(self._redis, aioredis.Redis):
                found = await self.migrate_untagged_keys()
        except (aioredis.RedisError, RedisClusterException) as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc
        if found == SCHEMA_VERSION:
            return
        if found is not None and found not in UPGRADABLE_SCHEMAS:
            raise StoreError(
                f"Redis holds edgefleet schema {found!s}, this build reads {SCHEMA_VERSION}"
            )
        if found != "2":  # schema 2 has the fleet indexes already
            await self.rebuild_fleet_indexes()
        try:
            await self._redis.set(self.keys.schema_version, SCHEMA_VERSION)
        except (aioredis.RedisError, RedisClusterException) as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc

    async def migrate_untagged_keys(self, batch: int = 1000) -> str | None:
        """Rename every key of a store from before hash tags (``edgefleet:*``) under the
        tagged prefix; returns the schema it had (None: there was none, nothing done).

        One standalone Redis only (Cluster never ran the untagged layout: its scripts
        failed with CROSSSLOT). The schema key moves last, so a start interrupted half way
        finds the old schema key and renames the rest. Pipelined, without a transaction:
        each RENAME is atomic, and a key another starting replica renamed first is skipped.
        """
        client = cast(aioredis.Redis, self._redis)
        legacy, prefix = self.keys.legacy_prefix, self.keys.prefix
        old_schema = legacy + self.keys.schema_version[len(prefix) :]
        schema = cast(str | None, await client.get(old_schema))
        if schema is None:
            return None
        names: list[str] = []
        async for name in client.scan_iter(match=f"{legacy}*", count=batch):
            if name != old_schema:
                names.append(name)
        for i in range(0, len(names), batch):
            async with client.pipeline(transaction=False) as pipe:
                for name in names[i : i + batch]:
                    pipe.rename(name, prefix + name[len(legacy) :])
                await pipe.execute(raise_on_error=False)
        async with client.pipeline(transaction=False) as pipe:
            pipe.rename(old_schema, self.keys.schema_version)
            await pipe.execute(raise_on_error=False)
        return schema

    async def ping(self, timeout: float) -> bool:
        """True if Redis answers within ``timeout`` seconds (a stopped or frozen server does
        not: the health probe must not hang with it)."""
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout))
        except (TimeoutError, OSError, aioredis.RedisError, RedisClusterException):
            return False

    async def persistence(self) -> str | None:
        """How Redis keeps the fleet across its own restart: ``"aof"``, ``"rdb"``,
        ``"aof+rdb"``, ``""`` (nothing: a restart loses every device), or None when the
        server refuses CONFIG (managed services often do) and nobody can tell.

        Why it matters: a Redis restarted without persistence comes back empty and every
        agent re-enrols under a new id, with rollouts and revocations gone (issue 18).
        """
        try:
            appendonly = await self._redis.config_get("appendonly")
            save = await self._redis.config_get("save")
        except (aioredis.RedisError, RedisClusterException):
            return None
        aof = _config_value(appendonly, "appendonly") == "yes"
        rdb = _config_value(save, "save").strip() != ""
        return "+".join(name for name, on in (("aof", aof), ("rdb", rdb)) if on)


def _config_value(reply: object, name: str) -> str:
    """CONFIG GET's value from one server (``{name: value}``) or, on a cluster, the first
    primary's (``{node: {name: value}}``)."""
    if isinstance(reply, dict):
        if name in reply:
            return str(reply[name])
        for value in reply.values():
            if isinstance(value, dict) and name in value:
                return str(value[name])
    return ""

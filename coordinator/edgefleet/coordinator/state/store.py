"""``FleetStore``: async access to fleet state in Redis, composed of one part per concept.

Why a thin facade: callers (registry, rollouts, the rollout controller, the server, the train
verbs) want one object with one connection; each concept's keys, Lua scripts and methods live in
their own module (``devices``, ``liveness``, ``telemetry``, ``rollouts``, ``leases``,
``fl_rounds``, ``revocation``), and this class only lists them and checks, at start, that Redis
is there and holds a schema this build reads (upgrading an older one).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from edgefleet.coordinator.state.devices import DeviceState
from edgefleet.coordinator.state.fl_rounds import FederatedRoundState
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
    RevocationState,
):
    """Async access to fleet state in Redis. The only code that talks to Redis.

    ``FleetStore(client, keys=None)``: ``client`` must be created with ``decode_responses=True``
    (we store text only); each part registers its Lua scripts on it.
    """

    async def check(self) -> None:
        """Fail early, with a clear error, if Redis is away or written by an incompatible version.

        A store written by an older, upgradable schema (or with no schema key) is
        upgraded here, before the coordinator serves: see ``rebuild_fleet_indexes``.
        """
        try:
            await self._redis.ping()
            found = await self._redis.get(self.keys.schema_version)
        except aioredis.RedisError as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc
        if found == SCHEMA_VERSION:
            return
        if found is not None and found not in UPGRADABLE_SCHEMAS:
            raise StoreError(
                f"Redis holds edgefleet schema {found!s}, this build reads {SCHEMA_VERSION}"
            )
        await self.rebuild_fleet_indexes()
        try:
            await self._redis.set(self.keys.schema_version, SCHEMA_VERSION)
        except aioredis.RedisError as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc

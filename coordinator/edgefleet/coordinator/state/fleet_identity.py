"""The fleet's identity record and the replicas' advertised device endpoints, in Redis.

Why in the state: every replica of a fleet reads and writes the same Redis, so it is the one
place that can tell a replica "your CA or signing key is not this fleet's" before it serves a
device a certificate or a bundle the rest of the fleet cannot verify. The first replica to start
records the fleet (``SET NX``: the first writer wins, every later one compares); a deliberate
signing-key rotation replaces it with a compare-and-set script. Each replica also advertises its
device endpoint (a sorted set scored by the time it last said so), so Register and every
heartbeat reply can hand agents the list of live replicas to fail over to.

Every operation touches exactly one key (declared in ``keys=`` for the one script), so it works
unchanged on Redis Cluster.
"""

from __future__ import annotations

import json
from typing import cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys

# KEYS: the identity record. ARGV: the record we expect, the record to put in its place.
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _encode(record: dict[str, str]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


class FleetIdentityState(StateBase):
    """The fleet record (``ca_sha256``, ``signing_key``) and the live device endpoints."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._replace = client.register_script(_REPLACE)

    @property
    def identity_key(self) -> str:
        """String: the fleet identity record (JSON)."""
        return f"{self.keys.prefix}fleet:identity"

    @property
    def endpoints_key(self) -> str:
        """Sorted set: member = a replica's advertised device endpoint, score = last said."""
        return f"{self.keys.prefix}fleet:device-endpoints"

    @unavailable_on_redis_error
    async def claim_fleet_identity(self, record: dict[str, str]) -> dict[str, str]:
        """Record ``record`` if the fleet has none yet; return the fleet's record either way."""
        await self._redis.set(self.identity_key, _encode(record), nx=True)
        found = await self._redis.get(self.identity_key)
        try:
            data = json.loads(cast(str, found))
        except (TypeError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    @unavailable_on_redis_error
    async def replace_fleet_identity(self, expected: dict[str, str], new: dict[str, str]) -> bool:
        """Replace the record if it still is ``expected`` (False: another replica changed it)."""
        done = await self._replace(keys=[self.identity_key], args=[_encode(expected), _encode(new)])
        return int(cast(int, done)) == 1

    @unavailable_on_redis_error
    async def advertise_endpoint(self, endpoint: str, now: float) -> None:
        await self._redis.zadd(self.endpoints_key, {endpoint: now})

    @unavailable_on_redis_error
    async def withdraw_endpoint(self, endpoint: str) -> None:
        await self._redis.zrem(self.endpoints_key, endpoint)

    @unavailable_on_redis_error
    async def live_endpoints(self, since: float) -> list[str]:
        """Endpoints advertised at or after ``since``, most recently refreshed first.

        Stale members are dropped on the way (a replica killed -9 never withdraws its own).
        """
        await self._redis.zremrangebyscore(self.endpoints_key, "-inf", f"({since}")
        found = await self._redis.zrevrange(self.endpoints_key, 0, 63)
        return [str(e) for e in found]

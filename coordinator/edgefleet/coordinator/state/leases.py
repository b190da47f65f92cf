"""Leases: which replica runs a singleton task (e.g. the rollout controller).

Why a module of its own: a lease is a key with an owner and a TTL, taken or renewed in one Lua
script so two replicas never both believe they hold it; it belongs to no other concept.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.keys import Keys

# KEYS: lease key. ARGV: owner, ttl ms. Take a free lease or renew our own.
_LEASE = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class LeaseState(StateBase):
    """Take and renew named leases."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._lease = client.register_script(_LEASE)

    @unavailable_on_redis_error
    async def hold_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a lease; True while ``owner`` holds it."""
        result = await self._lease(
            keys=[self.keys.lease(name)], args=[owner, str(int(ttl_seconds * 1000))]
        )
        return int(cast(int, result)) == 1

"""Leases: which replica runs a singleton task (e.g. the rollout controller).

Why a module of its own: a lease is a key with an owner and a TTL, taken or renewed in one Lua
script so two replicas never both believe they hold it; it belongs to no other concept. A
replica stopping cleanly releases its lease (compare-and-delete), so the next holder does not
wait out the TTL.
"""

from __future__ import annotations

from typing import cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
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

# KEYS: lease key. ARGV: owner. Give the lease up only if we still hold it (a
# replica that lost it must never delete the new holder's). Returns 1 if released.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseState(StateBase):
    """Take and renew named leases."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)

    @unavailable_on_redis_error
    async def hold_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a lease; True while ``owner`` holds it."""
        result = await self._lease(
            keys=[self.keys.lease(name)], args=[owner, str(int(ttl_seconds * 1000))]
        )
        return int(cast(int, result)) == 1

    @unavailable_on_redis_error
    async def release_lease(self, name: str, owner: str) -> bool:
        """Give a lease up at once (a clean stop), so another replica takes it on its next
        tick instead of waiting out the TTL; False if ``owner`` did not hold it."""
        result = await self._release(keys=[self.keys.lease(name)], args=[owner])
        return int(cast(int, result)) == 1

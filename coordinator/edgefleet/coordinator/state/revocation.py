"""Who may enrol: limited-use enrollment tokens and device revocation.

Why together: both decide whether a Register is refused. A token's uses are spent, and revoked
identities refused, inside the register script (``devices``); this module creates tokens and
revokes devices. Revocation is one Lua script: the credential stops matching, the record
remembers it, and the identities the device enrolled with are refused from then on.
"""

from __future__ import annotations

from typing import cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys

# KEYS: device hash, revoked set, revoked identities set. ARGV: device id. The
# credential stops matching anything, the record remembers the revocation, and
# the identities the device enrolled with (instance key, public key) are refused
# by Register from now on, whatever id a new enrolment would get.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local rec = redis.call('HMGET', KEYS[1], 'instance_key', 'key_sha256')
redis.call('HSET', KEYS[1], 'revoked', '1', 'credential_sha256', '!revoked')
redis.call('SADD', KEYS[2], ARGV[1])
if rec[1] then redis.call('SADD', KEYS[3], 'instance:' .. rec[1]) end
if rec[2] and rec[2] ~= '' then redis.call('SADD', KEYS[3], 'key:' .. rec[2]) end
return 1
"""


class RevocationState(StateBase):
    """Create enrollment tokens; revoke devices."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._revoke = client.register_script(_REVOKE)

    @unavailable_on_redis_error
    async def create_enroll_token(self, token_sha256: str, uses: int, ttl_seconds: float) -> None:
        key = self.keys.enroll_token(token_sha256)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "uses", str(uses))
            pipe.pexpire(key, int(ttl_seconds * 1000))
            await pipe.execute()

    @unavailable_on_redis_error
    async def revoke(self, device_id: str) -> bool:
        result = await self._revoke(
            keys=[self.keys.device(device_id), self.keys.revoked, self.keys.revoked_identities],
            args=[device_id],
        )
        return int(cast(int, result)) == 1

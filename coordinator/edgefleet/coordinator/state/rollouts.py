"""Desired state and rollouts: what each device should run, rollout documents and device claims.

Why together: a rollout claims its devices when it is created and releases them when it ends,
and sets their desired state as it goes; the claim check-and-set and the document's
compare-and-set are single Lua scripts, so of two replicas (or two concurrent rollouts over a
device) exactly one wins. The rollout logic itself is ``edgefleet.coordinator.rollouts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.codec import DESIRED_FIELDS
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import Desired, RolloutClash, StoreError

# KEYS: device hash. ARGV: desired_* values in DESIRED_FIELDS order (generation ignored).
# Level-triggered writes: nothing changes (and the generation does not bump)
# when the device already has exactly this desired state. Returns the
# generation after the call, or -1 for an unknown device.
_SET_DESIRED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local names = {'desired_variant', 'desired_model', 'desired_runtime', 'desired_rollout',
  'desired_variant_bytes', 'desired_context_limit'}
local current = redis.call('HMGET', KEYS[1], unpack(names))
local changed = false
for i = 1, #names do
  if (current[i] or '') ~= ARGV[i + 1] then changed = true end
end
if not changed then
  return tonumber(redis.call('HGET', KEYS[1], 'desired_generation') or '0')
end
for i = 1, #names do redis.call('HSET', KEYS[1], names[i], ARGV[i + 1]) end
return redis.call('HINCRBY', KEYS[1], 'desired_generation', 1)
"""

# KEYS: rollout key, rollout claims hash. ARGV: expected version, new document
# (whose version is expected + 1). Compare-and-set so two replicas never
# overwrite each other's transition. A rollout that ends releases its devices'
# claims. Returns 1 on success, 0 on a version conflict, -1 if missing.
_UPDATE_ROLLOUT = """
local doc = redis.call('GET', KEYS[1])
if not doc then return -1 end
if tostring(cjson.decode(doc)['version']) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
local new = cjson.decode(ARGV[2])
if new['state'] ~= 'running' and new['state'] ~= 'paused' then
  for _, d in ipairs(new['devices']) do
    if redis.call('HGET', KEYS[2], d['device_id']) == new['id'] then
      redis.call('HDEL', KEYS[2], d['device_id'])
    end
  end
end
return 1
"""

# KEYS: new rollout key, rollouts zset, rollout claims hash, then the document key
# of every rollout that held a claim on one of the devices when the caller read
# the claims. ARGV: rollout id, document, created at, how many such rollouts (m),
# their ids (in KEYS order), then the device ids.
# Checking that no device is in an active rollout and claiming them for this one
# is one atomic step: of concurrent creations over a device exactly one wins. A
# claim counts only while the rollout holding it is running or paused (a claim
# left by a rollout that has since ended is simply overwritten). Every key comes
# through KEYS (Redis Cluster, see keys.py): a claim by a rollout the caller did
# not pass writes nothing and returns {"", "", "retry"} (read the claims again).
# Returns {"", ""} when created, {device id, rollout id} of a clash, {"", id} if
# the id is taken.
_CREATE_ROLLOUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'', ARGV[1]} end
local m = tonumber(ARGV[4])
local doc_key = {}
for j = 1, m do doc_key[ARGV[4 + j]] = KEYS[3 + j] end
local active = {}
for i = 5 + m, #ARGV do
  local owner = redis.call('HGET', KEYS[3], ARGV[i])
  if owner then
    if doc_key[owner] == nil then return {'', '', 'retry'} end
    if active[owner] == nil then
      local doc = redis.call('GET', doc_key[owner])
      local state = doc and cjson.decode(doc)['state'] or ''
      active[owner] = state == 'running' or state == 'paused'
    end
    if active[owner] then return {ARGV[i], owner} end
  end
end
for i = 5 + m, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {'', ''}
"""

# How often creation is retried when claims changed between the read and the script.
RETRIES = 8


class RolloutState(StateBase):
    """Set desired states; create, read and update rollouts."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._set_desired = client.register_script(_SET_DESIRED)
        self._update_rollout = client.register_script(_UPDATE_ROLLOUT)
        self._create_rollout = client.register_script(_CREATE_ROLLOUT)

    @unavailable_on_redis_error
    async def set_desired(self, device_id: str, desired: Desired) -> int | None:
        """Make ``desired`` the device's desired state (generation bumps only on change).

        Returns the generation now in force, or None if the device is unknown.
        """
        args = [str(getattr(desired, name)) for name in DESIRED_FIELDS]
        result = int(
            cast(int, await self._set_desired(keys=[self.keys.device(device_id)], args=args))
        )
        return None if result < 0 else result

    @unavailable_on_redis_error
    async def create_rollout(
        self, rollout_id: str, document: str, created_at: float, device_ids: Sequence[str]
    ) -> RolloutClash | None:
        """Store a new rollout and claim its devices in one atomic step; the clash if a
        device is already in an active rollout (or the id is taken), else None."""
        k = self.keys
        for _ in range(RETRIES):
            claims = (
                cast(list[str | None], await self._redis.hmget(k.rollout_claims, list(device_ids)))
                if device_ids
                else []
            )
            owners = sorted({c for c in claims if c})
            result = cast(
                Sequence[Any],
                await self._create_rollout(
                    keys=[
                        k.rollout(rollout_id),
                        k.rollouts,
                        k.rollout_claims,
                        *(k.rollout(o) for o in owners),
                    ],
                    args=[
                        rollout_id,
                        document,
                        repr(created_at),
                        str(len(owners)),
                        *owners,
                        *device_ids,
                    ],
                ),
            )
            if len(result) == 2:
                device_id, owner = (str(x) for x in result)
                return RolloutClash(device_id, owner) if owner else None
        raise StoreError("rollout creation raced other rollouts; try again")

    @unavailable_on_redis_error
    async def get_rollout(self, rollout_id: str) -> str | None:
        return cast(str | None, await self._redis.get(self.keys.rollout(rollout_id)))

    @unavailable_on_redis_error
    async def list_rollout_ids(self) -> list[str]:
        """Rollout ids, newest first."""
        return cast(list[str], await self._redis.zrevrange(self.keys.rollouts, 0, -1))

    @unavailable_on_redis_error
    async def update_rollout(self, rollout_id: str, expected_version: int, document: str) -> bool:
        """Replace the document if its version is still ``expected_version`` (else False)."""
        result = await self._update_rollout(
            keys=[self.keys.rollout(rollout_id), self.keys.rollout_claims],
            args=[str(expected_version), document],
        )
        return int(cast(int, result)) == 1

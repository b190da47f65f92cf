"""Liveness: heartbeats, and the fleet counts kept on write.

Why apart from devices: the heartbeat is the hot path of a large fleet (one round trip checks
the credential, records the report and returns the desired state), and the per-profile liveness
indexes it maintains are what make fleet summaries cheap. Fleet counts are kept on write, not
computed by reading every record: each profile has a set of its devices and a sorted set of its
*live* devices (those whose last report was not ``stopping``) scored by last heartbeat time, both
maintained by the register, heartbeat and remove scripts. Online devices of a profile are then one
``ZCOUNT`` over a score range, so a fleet summary costs O(profiles x log N) whatever the fleet size
(``fleet_counts``). ``rebuild_fleet_indexes`` is the one O(N) pass, for a store from before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.codec import desired_from, flatten
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import HeartbeatOutcome, ProfileLiveness

# KEYS: device hash, last_seen zset. ARGV: device id, now, credential sha256,
# profile key prefix, "1" if the device reports "stopping" else "0", then
# field/value pairs. Checks the credential and records the heartbeat in one
# round trip (the hot path of a large fleet), keeping the profile's liveness
# index in step (O(log N)): a device that says goodbye leaves it at once.
# Returns {0} for an unknown device (so a heartbeat never resurrects a
# half-record), {-1} for a wrong credential, {-2} for a revoked device, else
# {1, desired_* values in DESIRED_FIELDS order}.
_HEARTBEAT = """
local rec = redis.call('HMGET', KEYS[1], 'credential_sha256', 'desired_generation',
  'desired_variant', 'desired_model', 'desired_runtime', 'desired_rollout', 'desired_variant_bytes',
  'profile_name')
if not rec[1] then return {0} end
if rec[1] == '!revoked' then return {-2} end
if rec[1] ~= ARGV[3] then return {-1} end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if rec[8] then
  local live = ARGV[4] .. rec[8] .. ':live'
  if ARGV[5] == '1' then
    redis.call('ZREM', live, ARGV[1])
  else
    redis.call('ZADD', live, ARGV[2], ARGV[1])
  end
end
return {1, rec[2] or '0', rec[3] or '', rec[4] or '', rec[5] or '', rec[6] or '', rec[7] or '0'}
"""


# KEYS: profiles set. ARGV: profile key prefix, the lowest last-seen time that
# is still fresh (exclusive, a ZCOUNT bound such as "(1800000000.5").
# Returns {profile, devices, live and fresh, ...} for every profile with devices:
# O(profiles x log N), however large the fleet.
_FLEET_COUNTS = """
local out = {}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local total = redis.call('SCARD', ARGV[1] .. p .. ':devices')
  if total > 0 then
    out[#out + 1] = p
    out[#out + 1] = total
    out[#out + 1] = redis.call('ZCOUNT', ARGV[1] .. p .. ':live', ARGV[2], '+inf')
  end
end
return out
"""

# KEYS: profiles set. ARGV: device key prefix, profile key prefix, then device ids.
# Rebuilds the fleet-count indexes of these devices from their records (the
# upgrade from schema 1, which had none). Each device is read and indexed in
# the same atomic script, so a heartbeat racing the upgrade is never undone.
# Returns how many devices were indexed.
_INDEX_DEVICES = """
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HMGET', ARGV[1] .. id, 'profile_name', 'last_seen', 'reported_state')
  if rec[1] and rec[2] then
    redis.call('SADD', ARGV[2] .. rec[1] .. ':devices', id)
    redis.call('SADD', KEYS[1], rec[1])
    if rec[3] == 'stopping' then
      redis.call('ZREM', ARGV[2] .. rec[1] .. ':live', id)
    else
      redis.call('ZADD', ARGV[2] .. rec[1] .. ':live', rec[2], id)
    end
    n = n + 1
  end
end
return n
"""


class LivenessState(StateBase):
    """Heartbeats, fleet counts and the rebuild of their indexes."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._fleet_counts = client.register_script(_FLEET_COUNTS)
        self._index_devices = client.register_script(_INDEX_DEVICES)

    @unavailable_on_redis_error
    async def record_heartbeat(
        self,
        device_id: str,
        *,
        now: float,
        state: str,
        sequence: int,
        uptime_seconds: float,
        active_variant: str,
        credential_sha256: str,
        previous_variant: str = "",
        failed_variant: str = "",
        failure_reason: str = "",
    ) -> HeartbeatOutcome:
        """Check the credential, then update liveness and reported status, atomically."""
        fields = {
            "last_seen": repr(now),
            "reported_state": state,
            "last_sequence": str(sequence),
            "uptime_seconds": repr(uptime_seconds),
            "active_variant": active_variant,
            "previous_variant": previous_variant,
            "failed_variant": failed_variant,
            "failure_reason": failure_reason,
        }
        result = cast(
            Sequence[Any],
            await self._heartbeat(
                keys=[self.keys.device(device_id), self.keys.last_seen],
                args=[
                    device_id,
                    repr(now),
                    credential_sha256,
                    self.keys.profile_prefix,
                    "1" if state == "stopping" else "0",
                    *flatten(fields),
                ],
            ),
        )
        status = int(result[0])
        if status <= 0:
            return HeartbeatOutcome(found=status < 0, authorized=False, revoked=status == -2)
        return HeartbeatOutcome(True, True, desired_from([str(x) for x in result[1:]]))

    @unavailable_on_redis_error
    async def rebuild_fleet_indexes(self, batch: int = 500) -> int:
        """Index every stored device for ``fleet_counts`` (idempotent); returns how many.

        The one O(N) pass: run once when a store from before the per-profile
        liveness indexes is first opened. Batches keep each script short, so
        heartbeats are not held up behind it.
        """
        k = self.keys
        ids = cast(list[str], await self._redis.zrange(k.last_seen, 0, -1))
        indexed = 0
        for i in range(0, len(ids), batch):
            indexed += int(
                cast(
                    int,
                    await self._index_devices(
                        keys=[k.profiles],
                        args=[k.device(""), k.profile_prefix, *ids[i : i + batch]],
                    ),
                )
            )
        return indexed

    @unavailable_on_redis_error
    async def fleet_counts(self, fresh_after: float) -> list[ProfileLiveness]:
        """Per profile with devices: how many, and how many are live with a heartbeat
        strictly after ``fresh_after`` (unix time). O(profiles x log N), one round trip."""
        result = cast(
            Sequence[Any],
            await self._fleet_counts(
                keys=[self.keys.profiles], args=[self.keys.profile_prefix, f"({fresh_after!r}"]
            ),
        )
        counts = [
            ProfileLiveness(str(result[i]), int(result[i + 1]), int(result[i + 2]))
            for i in range(0, len(result), 3)
        ]
        return sorted(counts, key=lambda c: c.profile)

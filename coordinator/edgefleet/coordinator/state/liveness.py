"""Liveness: heartbeats, and the fleet counts kept on write.

Why apart from devices: the heartbeat is the hot path of a large fleet (one round trip checks
the credential, records the report and returns the desired state), and the per-profile liveness
indexes it maintains are what make fleet summaries cheap. Fleet counts are kept on write, not
computed by reading every record: each profile has a set of its devices and a sorted set of its
*live* devices (those whose last report was not ``stopping``) scored by last heartbeat time, both
maintained by the register, heartbeat and remove scripts. Online devices of a profile are then one
``ZCOUNT`` over a score range, so a fleet summary costs O(profiles x log N) whatever the fleet size
(``fleet_counts``: the profiles set, then one MULTI of counts). ``rebuild_fleet_indexes`` is the
one O(N) pass, for a store from before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.codec import desired_from, flatten
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import HeartbeatOutcome, ProfileLiveness, StoreError

# KEYS: device hash, last_seen zset, live zset of the device's profile as the
# caller believes it. ARGV: device id, now, credential sha256, that profile name,
# "1" if the device reports "stopping" else "0", then field/value pairs. Checks
# the credential and records the heartbeat in one round trip (the hot path of a
# large fleet), keeping the profile's liveness index in step (O(log N)): a device
# that says goodbye leaves it at once. The profile's key comes through KEYS
# (Redis Cluster, see keys.py): the caller caches each device's profile, and a
# wrong guess (first heartbeat seen here, or the device re-registered with
# another profile) writes nothing and returns {-3, profile} to retry with.
# Returns {0} for an unknown device (so a heartbeat never resurrects a
# half-record), {-1} for a wrong credential, {-2} for a revoked device, else
# {1, desired_* values in DESIRED_FIELDS order}.
_HEARTBEAT = """
local rec = redis.call('HMGET', KEYS[1], 'credential_sha256', 'desired_generation',
  'desired_variant', 'desired_model', 'desired_runtime', 'desired_rollout', 'desired_variant_bytes',
  'profile_name', 'desired_context_limit')
if not rec[1] then return {0} end
if rec[1] == '!revoked' then return {-2} end
if rec[1] ~= ARGV[3] then return {-1} end
if (rec[8] or '') ~= ARGV[4] then return {-3, rec[8] or ''} end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if rec[8] then
  if ARGV[5] == '1' then
    redis.call('ZREM', KEYS[3], ARGV[1])
  else
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  end
end
return {1, rec[2] or '0', rec[3] or '', rec[4] or '', rec[5] or '', rec[6] or '', rec[7] or '0',
  rec[9] or '0'}
"""

# KEYS: profiles set, then per device: its hash, its profile's set and live zset
# (as read by the caller). ARGV: per device, its id and the profile read.
# Rebuilds the fleet-count indexes of these devices from their records (the
# upgrade from schema 1, which had none). Each device is read and indexed in
# the same atomic script, so a heartbeat racing the upgrade is never undone; a
# device whose profile changed since it was read was re-registered, which indexed
# it. Returns how many devices were indexed.
_INDEX_DEVICES = """
local n = 0
for j = 1, #ARGV / 2 do
  local id, profile = ARGV[2 * j - 1], ARGV[2 * j]
  local device, members, live = KEYS[3 * j - 1], KEYS[3 * j], KEYS[3 * j + 1]
  local rec = redis.call('HMGET', device, 'profile_name', 'last_seen', 'reported_state')
  if rec[1] and rec[2] and rec[1] == profile then
    redis.call('SADD', members, id)
    redis.call('SADD', KEYS[1], rec[1])
    if rec[3] == 'stopping' then
      redis.call('ZREM', live, id)
    else
      redis.call('ZADD', live, rec[2], id)
    end
    n = n + 1
  end
end
return n
"""

# Devices whose profile a replica remembers for the heartbeat script; past this
# the cache starts over (a miss costs one retried round trip, never a wrong write).
PROFILE_CACHE_SIZE = 200_000


class LivenessState(StateBase):
    """Heartbeats, fleet counts and the rebuild of their indexes."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._index_devices = client.register_script(_INDEX_DEVICES)
        self._profile_of: dict[str, str] = {}

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
        k = self.keys
        profile = self._profile_of.get(device_id, "")
        for _ in range(2):  # a wrong guess of the profile answers the right one
            result = cast(
                Sequence[Any],
                await self._heartbeat(
                    keys=[k.device(device_id), k.last_seen, k.profile_live(profile)],
                    args=[
                        device_id,
                        repr(now),
                        credential_sha256,
                        profile,
                        "1" if state == "stopping" else "0",
                        *flatten(fields),
                    ],
                ),
            )
            if int(result[0]) != -3:
                break
            profile = str(result[1])
            if len(self._profile_of) >= PROFILE_CACHE_SIZE:
                self._profile_of.clear()
            self._profile_of[device_id] = profile
        status = int(result[0])
        if status == -3:  # re-registered twice in between: the next heartbeat lands
            raise StoreError("the device changed profile during its heartbeat; try again")
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
            chunk = ids[i : i + batch]
            async with self._redis.pipeline(transaction=False) as pipe:
                for device_id in chunk:
                    pipe.hget(k.device(device_id), "profile_name")
                profiles = [p or "" for p in await pipe.execute()]
            keys, args = [k.profiles], []
            for device_id, profile in zip(chunk, profiles, strict=True):
                keys += [k.device(device_id), k.profile_members(profile), k.profile_live(profile)]
                args += [device_id, profile]
            indexed += int(cast(int, await self._index_devices(keys=keys, args=args)))
        return indexed

    @unavailable_on_redis_error
    async def fleet_counts(self, fresh_after: float) -> list[ProfileLiveness]:
        """Per profile with devices: how many, and how many are live with a heartbeat
        strictly after ``fresh_after`` (unix time). O(profiles x log N), two round trips."""
        k = self.keys
        profiles = sorted(cast(set[str], await self._redis.smembers(k.profiles)))
        if not profiles:
            return []
        # One MULTI: the counts of all profiles are one consistent snapshot (a profile that
        # lost its last device in between counts 0 and is left out).
        async with self._redis.pipeline(transaction=True) as pipe:
            for p in profiles:
                pipe.scard(k.profile_members(p))
                pipe.zcount(k.profile_live(p), f"({fresh_after!r}", "+inf")
            result = await pipe.execute()
        counts = [
            ProfileLiveness(p, int(result[2 * i]), int(result[2 * i + 1]))
            for i, p in enumerate(profiles)
            if int(result[2 * i]) > 0
        ]
        return counts

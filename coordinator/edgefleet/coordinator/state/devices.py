"""Devices: registration (with the enrollment key, token and revoked identities), records, removal.

Why these together: a device is either fully registered (hash + liveness indexes + profile index +
enrollment key) or absent, and the register and remove scripts are what keep that true when
several coordinator replicas update the same device at once. Each is one Lua script, atomic on the
server. Callers get plain ``DeviceRecord`` objects and never see Redis types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.codec import flatten, record_fields, record_from_hash
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import (
    DeviceRecord,
    DeviceRevoked,
    EnrollTokenRefused,
    StoreError,
)

# KEYS: new device hash, last_seen zset, enrollment key, profile set of the new
#   profile, live zset of the new profile, profiles set, revoked identities set,
#   limited-use enrollment token hash, then what the caller read before the call:
#   the hash of the device the instance key is enrolled as (else KEYS[1]), and the
#   profile set and live zset of that device's profile (else KEYS[4], KEYS[5]).
# ARGV: device id (used only when new), the enrolled device id read before ("" =
#   none), that device's profile read before ("" = none), last seen, new profile
#   name, instance key, public key sha256 ("" = none), "1" to spend one use of the
#   token in KEYS[8] ("0": the static token was used), then field/value pairs.
# Every key comes through KEYS (Redis Cluster, see keys.py): if the enrolment or
# the old profile changed since the caller read them, nothing is written and
# {"", -3} asks the caller to read again and retry.
# Every refusal comes before the first write, and spending the token is part of
# the same atomic script: a refused enrolment changes nothing, not even the
# token's uses. The token is checked first, so only a caller holding one learns
# that an identity was revoked. An identity (instance key or device key) that
# was revoked stays refused, even after the revoked device was removed.
# The enrollment key decides: an instance key already enrolled as a live device
# re-registers that device (fresh credential, profile and name) instead of
# creating a twin. A (re-)registered device reports "starting", so it is live.
# Returns {device id, 1 if created else 0}, {device id or "", -1} for a revoked
# identity, {"", -2} for an unknown, expired or used-up token.
_REGISTER = """
if ARGV[8] == '1' and tonumber(redis.call('HGET', KEYS[8], 'uses') or '0') <= 0 then
  return {'', -2}
end
local existing = redis.call('GET', KEYS[3]) or ''
if existing ~= ARGV[2] then return {'', -3} end
local live = existing ~= '' and redis.call('EXISTS', KEYS[9]) == 1
local old_profile = ''
if live then old_profile = redis.call('HGET', KEYS[9], 'profile_name') or '' end
if old_profile ~= ARGV[3] then return {'', -3} end
if redis.call('SISMEMBER', KEYS[7], 'instance:' .. ARGV[6]) == 1
    or (ARGV[7] ~= '' and redis.call('SISMEMBER', KEYS[7], 'key:' .. ARGV[7]) == 1) then
  return {existing, -1}
end
local id = ARGV[1]
local created = 1
local device_key = KEYS[1]
if live then
  if redis.call('HGET', KEYS[9], 'revoked') == '1' then return {existing, -1} end
  id = existing
  created = 0
  device_key = KEYS[9]
end
if ARGV[8] == '1' and redis.call('HINCRBY', KEYS[8], 'uses', -1) <= 0 then
  redis.call('DEL', KEYS[8])
end
if created == 0 and old_profile ~= '' then
  redis.call('SREM', KEYS[10], id)
  redis.call('ZREM', KEYS[11], id)
end
local keep = {id = true, registered_at = true}
local fields = {}
for i = 9, #ARGV, 2 do
  -- a re-registration keeps what identifies the device over time and what
  -- the operator wants of it; everything the agent reports is overwritten
  local name = ARGV[i]
  if created == 1 or not (keep[name] or string.sub(name, 1, 8) == 'desired_') then
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
end
redis.call('HSET', device_key, unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[4], id)
redis.call('SET', KEYS[3], id)
redis.call('SADD', KEYS[4], id)
redis.call('ZADD', KEYS[5], ARGV[4], id)
redis.call('SADD', KEYS[6], ARGV[5])
if old_profile ~= '' and old_profile ~= ARGV[5] and redis.call('SCARD', KEYS[10]) == 0 then
  redis.call('SREM', KEYS[6], old_profile)
end
return {id, created}
"""


# KEYS: device hash, last_seen zset, device metrics hash, profiles set, revoked
# identities set, then what the caller read before the call: the enrollment key
# of the device's instance key, the profile set and live zset of its profile.
# ARGV: device id, the instance key and profile name read before ("" = none).
# Returns 0 if the device is not there, -3 if its instance key or profile changed
# since they were read (the caller reads again and retries), else 1.
# Removing a revoked device keeps its revocation: its identities stay refused.
_REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local rec = redis.call('HMGET', KEYS[1], 'instance_key', 'profile_name', 'revoked', 'key_sha256')
if (rec[1] or '') ~= ARGV[2] or (rec[2] or '') ~= ARGV[3] then return -3 end
if rec[3] == '1' then
  if rec[1] then redis.call('SADD', KEYS[5], 'instance:' .. rec[1]) end
  if rec[4] and rec[4] ~= '' then redis.call('SADD', KEYS[5], 'key:' .. rec[4]) end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if rec[1] and redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
if rec[2] then
  redis.call('SREM', KEYS[7], ARGV[1])
  redis.call('ZREM', KEYS[8], ARGV[1])
  if redis.call('SCARD', KEYS[7]) == 0 then redis.call('SREM', KEYS[4], rec[2]) end
end
return 1
"""

# How often a script answering "read again" (-3) is retried before giving up: each
# retry means another writer changed the same device in between, which is rare.
RETRIES = 8


class DeviceState(StateBase):
    """Register, read, list and remove devices."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._register = client.register_script(_REGISTER)
        self._remove = client.register_script(_REMOVE)

    @unavailable_on_redis_error
    async def register(
        self, record: DeviceRecord, spend_token_sha256: str | None = None
    ) -> tuple[str, bool]:
        """Store a new device, or re-register the device already enrolled with its instance key.

        ``spend_token_sha256``: a limited-use enrollment token to spend one use of,
        in the same atomic script (None: the static token was presented). Returns
        the device id that holds the record and whether it was created; raises
        ``DeviceRevoked`` or ``EnrollTokenRefused`` having changed nothing.
        """
        k = self.keys
        for _ in range(RETRIES):
            existing = cast(str | None, await self._redis.get(k.enrollment(record.instance_key)))
            old_profile = ""
            if existing:
                old_profile = (
                    cast(str | None, await self._redis.hget(k.device(existing), "profile_name"))
                    or ""
                )
            result = await self._register(
                keys=[
                    k.device(record.id),
                    k.last_seen,
                    k.enrollment(record.instance_key),
                    k.profile_members(record.profile.name),
                    k.profile_live(record.profile.name),
                    k.profiles,
                    k.revoked_identities,
                    k.enroll_token(spend_token_sha256 or ""),
                    k.device(existing or record.id),
                    k.profile_members(old_profile or record.profile.name),
                    k.profile_live(old_profile or record.profile.name),
                ],
                args=[
                    record.id,
                    existing or "",
                    old_profile,
                    repr(record.last_seen),
                    record.profile.name,
                    record.instance_key,
                    record.key_sha256,
                    "0" if spend_token_sha256 is None else "1",
                    *flatten(record_fields(record)),
                ],
            )
            if int(cast(Sequence[Any], result)[1]) != -3:
                break
        else:
            raise StoreError("registration raced other writers of this device; try again")
        device_id, created = cast(Sequence[Any], result)
        if int(created) == -2:
            raise EnrollTokenRefused(
                "enrollment token missing, wrong, expired or used up", reason="enroll_token"
            )
        if int(created) < 0:
            was = f" (it was {device_id})" if device_id else ""
            raise DeviceRevoked(
                f"this device was revoked{was}; it cannot enrol again "
                "(an operator must enrol it as a new instance with a new key)",
                reason="revoked",
            )
        return str(device_id), bool(int(created))

    @unavailable_on_redis_error
    async def get(self, device_id: str) -> DeviceRecord | None:
        raw = cast(dict[str, str], await self._redis.hgetall(self.keys.device(device_id)))
        return record_from_hash(raw) if raw else None

    @unavailable_on_redis_error
    async def list_ids(self, profile: str | None = None) -> list[str]:
        """Device ids, most recently seen first."""
        if profile:
            members = await self._redis.smembers(self.keys.profile_members(profile))
            return sorted(cast(set[str], members))
        return cast(list[str], await self._redis.zrevrange(self.keys.last_seen, 0, -1))

    @unavailable_on_redis_error
    async def get_many(self, device_ids: Sequence[str]) -> list[DeviceRecord]:
        """Records for the given ids in one round trip; ids removed meanwhile are skipped."""
        if not device_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                pipe.hgetall(self.keys.device(device_id))
            raws = await pipe.execute()
        return [record_from_hash(raw) for raw in raws if raw]

    @unavailable_on_redis_error
    async def remove(self, device_id: str) -> bool:
        """Delete a device and every index entry pointing at it. False if it was not there."""
        k = self.keys
        for _ in range(RETRIES):
            instance_key, profile = cast(
                list[str | None],
                await self._redis.hmget(k.device(device_id), ["instance_key", "profile_name"]),
            )
            done = int(
                cast(
                    int,
                    await self._remove(
                        keys=[
                            k.device(device_id),
                            k.last_seen,
                            k.device_metrics(device_id),
                            k.profiles,
                            k.revoked_identities,
                            k.enrollment(instance_key or ""),
                            k.profile_members(profile or ""),
                            k.profile_live(profile or ""),
                        ],
                        args=[device_id, instance_key or "", profile or ""],
                    ),
                )
            )
            if done != -3:
                return done == 1
        raise StoreError("removal raced other writers of this device; try again")

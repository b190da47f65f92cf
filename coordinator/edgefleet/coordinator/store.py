"""Every Redis key and every multi-key update of the coordinator lives here.

Why one module: the coordinator is stateless beyond Redis, so several replicas
may update the same device at once. Keeping every key name and every
multi-key write in one place (each write a single Lua script, atomic on the
server) is what guarantees that state never tears: a device is either fully
registered (hash + liveness indexes + profile index + enrollment key) or absent.
Callers get plain ``DeviceRecord`` objects and never see Redis types.

Fleet counts are kept on write, not computed by reading every record: each
profile has a set of its devices and a sorted set of its *live* devices (those
whose last report was not ``stopping``) scored by last heartbeat time, both
maintained by the register, heartbeat and remove scripts. Online devices of a
profile are then one ``ZCOUNT`` over a score range, so a fleet summary costs
O(profiles x log N) whatever the fleet size (``fleet_counts``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis

from edgefleet.coordinator.errors import PermissionDenied, Unauthenticated, Unavailable
from edgefleet.profiles import DeviceProfile

DEFAULT_PREFIX = "edgefleet:"


@dataclass(frozen=True)
class Keys:
    """Names of every key the coordinator uses, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def device(self, device_id: str) -> str:
        """Hash with the device's record (see ``DeviceRecord``)."""
        return f"{self.prefix}device:{device_id}"

    @property
    def last_seen(self) -> str:
        """Sorted set: member = device id, score = unix time of the last heartbeat."""
        return f"{self.prefix}devices:last_seen"

    def enrollment(self, instance_key: str) -> str:
        """String: the device id an agent instance key was enrolled as (makes Register idempotent)."""
        return f"{self.prefix}enrollment:{instance_key}"

    def profile_members(self, profile: str) -> str:
        """Set of device ids with a given profile name."""
        return f"{self.prefix}profile:{profile}:devices"

    def profile_live(self, profile: str) -> str:
        """Sorted set: devices of a profile whose last report was not ``stopping``,
        score = unix time of the last heartbeat (the fleet counts' liveness index)."""
        return f"{self.prefix}profile:{profile}:live"

    @property
    def profile_prefix(self) -> str:
        """What ``profile_members``/``profile_live`` start with (Lua scripts build them)."""
        return f"{self.prefix}profile:"

    @property
    def profiles(self) -> str:
        """Set: profile names that have at least one device."""
        return f"{self.prefix}profiles"

    def device_metrics(self, device_id: str) -> str:
        """Hash: metric name -> last value the device reported."""
        return f"{self.prefix}device:{device_id}:metrics"

    @property
    def events(self) -> str:
        """Stream of device events (capped), newest last."""
        return f"{self.prefix}events"

    def rollout(self, rollout_id: str) -> str:
        """String: the rollout's JSON document (with a ``version`` for compare-and-set)."""
        return f"{self.prefix}rollout:{rollout_id}"

    @property
    def rollouts(self) -> str:
        """Sorted set: rollout ids by creation time."""
        return f"{self.prefix}rollouts"

    @property
    def rollout_claims(self) -> str:
        """Hash: device id -> the rollout that last claimed it (active while that rollout is)."""
        return f"{self.prefix}rollout-claims"

    def fl_rounds(self, model: str) -> str:
        """Hash: the latest federated round of a model (round, loss, accuracy, participants...)."""
        return f"{self.prefix}fl:{model}:latest"

    @property
    def fl_models(self) -> str:
        """Set: models that ever ran federated rounds."""
        return f"{self.prefix}fl:models"

    @property
    def fl_outcomes(self) -> str:
        """Hash: outcome (completed, failed) -> rounds, over all models."""
        return f"{self.prefix}fl:outcomes"

    def enroll_token(self, token_sha256: str) -> str:
        """Hash: a limited-use enrollment token (uses left); expires with the token."""
        return f"{self.prefix}enroll-token:{token_sha256}"

    @property
    def revoked(self) -> str:
        """Set: revoked device ids."""
        return f"{self.prefix}devices:revoked"

    @property
    def revoked_identities(self) -> str:
        """Set: what a revoked device enrolled with, ``instance:<instance key>`` and
        ``key:<sha256 of its public key>``. Register refuses them; removal keeps them."""
        return f"{self.prefix}revoked:identities"

    def lease(self, name: str) -> str:
        """String: owner of a lease (e.g. which replica runs the rollout controller)."""
        return f"{self.prefix}lease:{name}"

    @property
    def schema_version(self) -> str:
        return f"{self.prefix}schema"


# 2: per-profile liveness sorted sets and the profiles set (fleet counts kept on
# write). A schema-1 store is upgraded at start by ``FleetStore.check`` (one pass
# over the devices); a schema-1 coordinator refuses a schema-2 store.
SCHEMA_VERSION = "2"
UPGRADABLE_SCHEMAS = ("1",)


@dataclass(frozen=True)
class Desired:
    """What the coordinator wants a device to run. ``generation`` bumps on every change."""

    generation: int = 0
    variant: str = ""
    model: str = ""
    runtime: str = ""
    rollout: str = ""
    variant_bytes: int = 0


DESIRED_FIELDS = ("generation", "variant", "model", "runtime", "rollout", "variant_bytes")


def _desired_from(values: Sequence[str | None]) -> Desired:
    g, variant, model, runtime, rollout, nbytes = (v or "" for v in values)
    return Desired(int(g or 0), variant, model, runtime, rollout, int(nbytes or 0))


@dataclass(frozen=True)
class DeviceRecord:
    """A device as stored: identity, resources, and the last thing it reported."""

    id: str
    name: str
    profile: DeviceProfile
    instance_key: str
    credential_sha256: str
    registered_at: float
    last_seen: float
    agent_version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    reported_state: str = "starting"
    uptime_seconds: float = 0.0
    active_variant: str = ""
    last_sequence: int = 0
    previous_variant: str = ""
    failed_variant: str = ""
    failure_reason: str = ""
    desired: Desired = field(default_factory=Desired)
    telemetry_records: int = 0
    telemetry_sequence: int = 0
    benchmark_macs_per_second: float = 0.0
    benchmark_method: str = ""
    revoked: bool = False
    cert_serial: str = ""
    key_sha256: str = ""  # of the device's public key (TLS mode), "" without one


# KEYS: device hash, last_seen zset, enrollment key, profile set of the new profile,
#   live zset of the new profile, profiles set, revoked identities set,
#   limited-use enrollment token hash.
# ARGV: device id (used only when new), device key prefix, profile key prefix,
#   last seen, new profile name, instance key, public key sha256 ("" = none),
#   "1" to spend one use of the token in KEYS[8] ("0": the static token was used),
#   then field/value pairs of the record.
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
local existing = redis.call('GET', KEYS[3])
if redis.call('SISMEMBER', KEYS[7], 'instance:' .. ARGV[6]) == 1
    or (ARGV[7] ~= '' and redis.call('SISMEMBER', KEYS[7], 'key:' .. ARGV[7]) == 1) then
  return {existing or '', -1}
end
local id = ARGV[1]
local created = 1
local device_key = KEYS[1]
local old_profile = nil
if existing and redis.call('EXISTS', ARGV[2] .. existing) == 1 then
  if redis.call('HGET', ARGV[2] .. existing, 'revoked') == '1' then return {existing, -1} end
  id = existing
  created = 0
  device_key = ARGV[2] .. existing
end
if ARGV[8] == '1' and redis.call('HINCRBY', KEYS[8], 'uses', -1) <= 0 then
  redis.call('DEL', KEYS[8])
end
if created == 0 then
  old_profile = redis.call('HGET', device_key, 'profile_name')
  if old_profile then
    redis.call('SREM', ARGV[3] .. old_profile .. ':devices', id)
    redis.call('ZREM', ARGV[3] .. old_profile .. ':live', id)
  end
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
if old_profile and old_profile ~= ARGV[5]
    and redis.call('SCARD', ARGV[3] .. old_profile .. ':devices') == 0 then
  redis.call('SREM', KEYS[6], old_profile)
end
return {id, created}
"""

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

# KEYS: device hash, last_seen zset, device metrics hash, profiles set,
# revoked identities set. ARGV: device id, enrollment prefix, profile prefix.
# Removing a revoked device keeps its revocation: its identities stay refused.
_REMOVE = """
local rec = redis.call('HMGET', KEYS[1], 'instance_key', 'profile_name', 'revoked', 'key_sha256')
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if rec[3] == '1' then
  if rec[1] then redis.call('SADD', KEYS[5], 'instance:' .. rec[1]) end
  if rec[4] and rec[4] ~= '' then redis.call('SADD', KEYS[5], 'key:' .. rec[4]) end
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if rec[1] then
  local enrolled = ARGV[2] .. rec[1]
  if redis.call('GET', enrolled) == ARGV[1] then redis.call('DEL', enrolled) end
end
if rec[2] then
  local members = ARGV[3] .. rec[2] .. ':devices'
  redis.call('SREM', members, ARGV[1])
  redis.call('ZREM', ARGV[3] .. rec[2] .. ':live', ARGV[1])
  if redis.call('SCARD', members) == 0 then redis.call('SREM', KEYS[4], rec[2]) end
end
return 1
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


# KEYS: device hash, device metrics hash, events stream.
# ARGV: device id, max events kept, then 6 values per record:
#   sequence, time, kind ("m" metric | "e" event), name, value or message, labels JSON.
# Deduplication by (device, sequence) happens here, atomically with applying
# the records: a record at or below the device's high-water mark is a resend
# and is counted as a duplicate, never applied twice. Returns
# {high-water mark, accepted, duplicates}, or {-1, 0, 0} for an unknown device.
_TELEMETRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local hw = tonumber(redis.call('HGET', KEYS[1], 'telemetry_sequence') or '0')
local accepted, duplicates = 0, 0
for i = 3, #ARGV, 6 do
  local seq = tonumber(ARGV[i])
  if seq <= hw then
    duplicates = duplicates + 1
  else
    hw = seq
    accepted = accepted + 1
    if ARGV[i + 2] == 'm' then
      redis.call('HSET', KEYS[2], ARGV[i + 3], ARGV[i + 4])
    else
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
        'device', ARGV[1], 'sequence', ARGV[i], 'time', ARGV[i + 1],
        'kind', ARGV[i + 3], 'message', ARGV[i + 4], 'attributes', ARGV[i + 5])
    end
  end
end
redis.call('HSET', KEYS[1], 'telemetry_sequence', string.format('%d', hw))
redis.call('HINCRBY', KEYS[1], 'telemetry_records', accepted)
return {hw, accepted, duplicates}
"""

MAX_EVENTS = 100_000

# KEYS: device hash. ARGV: desired_* values in DESIRED_FIELDS order (generation ignored).
# Level-triggered writes: nothing changes (and the generation does not bump)
# when the device already has exactly this desired state. Returns the
# generation after the call, or -1 for an unknown device.
_SET_DESIRED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local names = {'desired_variant', 'desired_model', 'desired_runtime', 'desired_rollout',
  'desired_variant_bytes'}
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

# KEYS: new rollout key, rollouts zset, rollout claims hash.
# ARGV: rollout id, document, created at, rollout key prefix, then its device ids.
# Checking that no device is in an active rollout and claiming them for this one
# is one atomic step: of concurrent creations over a device exactly one wins. A
# claim counts only while the rollout holding it is running or paused (a claim
# left by a rollout that has since ended is simply overwritten). Returns {"", ""}
# when created, {device id, rollout id} of a clash, {"", id} if the id is taken.
_CREATE_ROLLOUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'', ARGV[1]} end
local active = {}
for i = 5, #ARGV do
  local owner = redis.call('HGET', KEYS[3], ARGV[i])
  if owner then
    if active[owner] == nil then
      local doc = redis.call('GET', ARGV[4] .. owner)
      local state = doc and cjson.decode(doc)['state'] or ''
      active[owner] = state == 'running' or state == 'paused'
    end
    if active[owner] then return {ARGV[i], owner} end
  end
end
for i = 5, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {'', ''}
"""

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


@dataclass(frozen=True)
class TelemetryIn:
    """One validated telemetry record: a metric (value) or an event (message)."""

    sequence: int
    time_unix: float
    name: str  # metric name or event kind
    value: float | None = None  # set for metrics
    message: str = ""  # set for events
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def is_metric(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class FederatedRound:
    """One federated round as the ServerApp reports it."""

    model: str
    run_id: str
    round: int
    outcome: str  # "completed" | "failed"
    loss: float
    accuracy: float
    participants: int
    time_unix: float


@dataclass(frozen=True)
class RolloutClash:
    """Why a rollout could not be created: ``device_id`` is in active rollout ``rollout_id``
    (``device_id`` is "" when the rollout id itself is taken)."""

    device_id: str
    rollout_id: str


@dataclass(frozen=True)
class HeartbeatOutcome:
    found: bool
    authorized: bool
    desired: Desired = field(default_factory=Desired)
    revoked: bool = False


@dataclass(frozen=True)
class TelemetryOutcome:
    acked_sequence: int
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class ProfileLiveness:
    """Devices of one profile, and how many of them are live and fresh."""

    profile: str
    devices: int
    fresh: int  # last report not "stopping" and last heartbeat after the bound asked for


def _flatten(mapping: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in mapping.items():
        out += [k, v]
    return out


def _record_fields(record: DeviceRecord) -> dict[str, str]:
    return {
        "id": record.id,
        "name": record.name,
        "profile_name": record.profile.name,
        "profile": record.profile.model_dump_json(),
        "instance_key": record.instance_key,
        "credential_sha256": record.credential_sha256,
        "registered_at": repr(record.registered_at),
        "last_seen": repr(record.last_seen),
        "agent_version": record.agent_version,
        "labels": json.dumps(record.labels, sort_keys=True),
        "reported_state": record.reported_state,
        "uptime_seconds": repr(record.uptime_seconds),
        "active_variant": record.active_variant,
        "last_sequence": str(record.last_sequence),
        **{f"desired_{name}": str(getattr(record.desired, name)) for name in DESIRED_FIELDS},
        "benchmark_macs_per_second": repr(record.benchmark_macs_per_second),
        "benchmark_method": record.benchmark_method,
        "cert_serial": record.cert_serial,
        "key_sha256": record.key_sha256,
    }


@functools.lru_cache(maxsize=1024)
def _profile_from_json(text: str) -> DeviceProfile:
    """Parse a stored profile once: a fleet has a handful of distinct profiles, and
    validating the same JSON for every one of 10k records dominated fleet reads."""
    return DeviceProfile.model_validate_json(text)


def _record_from_hash(raw: dict[str, str]) -> DeviceRecord:
    return DeviceRecord(
        id=raw["id"],
        name=raw["name"],
        profile=_profile_from_json(raw["profile"]),
        instance_key=raw.get("instance_key", ""),
        credential_sha256=raw.get("credential_sha256", ""),
        registered_at=float(raw["registered_at"]),
        last_seen=float(raw["last_seen"]),
        agent_version=raw.get("agent_version", ""),
        labels=json.loads(raw.get("labels") or "{}"),
        reported_state=raw.get("reported_state", "starting"),
        uptime_seconds=_finite(raw.get("uptime_seconds")),
        active_variant=raw.get("active_variant", ""),
        last_sequence=_count(raw.get("last_sequence")),
        previous_variant=raw.get("previous_variant", ""),
        failed_variant=raw.get("failed_variant", ""),
        failure_reason=raw.get("failure_reason", ""),
        desired=_desired_from([raw.get(f"desired_{name}") for name in DESIRED_FIELDS]),
        telemetry_records=_count(raw.get("telemetry_records")),
        telemetry_sequence=_count(raw.get("telemetry_sequence")),
        benchmark_macs_per_second=_finite(raw.get("benchmark_macs_per_second")),
        benchmark_method=raw.get("benchmark_method", ""),
        revoked=raw.get("revoked") == "1",
        cert_serial=raw.get("cert_serial", ""),
        key_sha256=raw.get("key_sha256", ""),
    )


def _finite(text: str | None) -> float:
    """A stored reading, or 0.0 if it is not finite (a NaN stored before validation refused it):
    no listing, JSON output or dashboard downstream can hold one."""
    value = float(text or 0.0)
    return value if math.isfinite(value) else 0.0


def _count(text: str | None) -> int:
    """A stored counter, or 0 if it is out of the range the wire's uint64 holds.

    Validation keeps every counter below 2**53 now; this only keeps a store
    written before that (a sequence of 2**63 wrapped to a negative number by
    Lua) from breaking every fleet listing.
    """
    value = int(text or 0)
    return value if 0 <= value < 2**64 else 0


class DeviceRevoked(PermissionDenied):
    """An enrolment attempt by an identity (instance key, device key) an operator revoked."""


class EnrollTokenRefused(Unauthenticated):
    """A limited-use enrollment token that is unknown, expired or used up."""


class StoreError(Unavailable):
    """Redis is unreachable or holds data this version cannot read."""


P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_on_redis_error(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn a lost Redis connection into ``StoreError`` so callers answer UNAVAILABLE."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except aioredis.RedisError as exc:
            raise StoreError(f"state store unavailable: {exc}") from exc

    return wrapper


class FleetStore:
    """Async access to fleet state in Redis. The only code that talks to Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None) -> None:
        """``client`` must be created with ``decode_responses=True`` (we store text only)."""
        self._redis = client
        self.keys = keys or Keys()
        self._register = client.register_script(_REGISTER)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._remove = client.register_script(_REMOVE)
        self._telemetry = client.register_script(_TELEMETRY)
        self._set_desired = client.register_script(_SET_DESIRED)
        self._update_rollout = client.register_script(_UPDATE_ROLLOUT)
        self._create_rollout = client.register_script(_CREATE_ROLLOUT)
        self._lease = client.register_script(_LEASE)
        self._revoke = client.register_script(_REVOKE)
        self._fleet_counts = client.register_script(_FLEET_COUNTS)
        self._index_devices = client.register_script(_INDEX_DEVICES)

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

    @_unavailable_on_redis_error
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

    @_unavailable_on_redis_error
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

    async def close(self) -> None:
        await self._redis.aclose()

    @_unavailable_on_redis_error
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
            ],
            args=[
                record.id,
                k.device(""),
                k.profile_prefix,
                repr(record.last_seen),
                record.profile.name,
                record.instance_key,
                record.key_sha256,
                "0" if spend_token_sha256 is None else "1",
                *_flatten(_record_fields(record)),
            ],
        )
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

    @_unavailable_on_redis_error
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
                    *_flatten(fields),
                ],
            ),
        )
        status = int(result[0])
        if status <= 0:
            return HeartbeatOutcome(found=status < 0, authorized=False, revoked=status == -2)
        return HeartbeatOutcome(True, True, _desired_from([str(x) for x in result[1:]]))

    @_unavailable_on_redis_error
    async def get(self, device_id: str) -> DeviceRecord | None:
        raw = cast(dict[str, str], await self._redis.hgetall(self.keys.device(device_id)))
        return _record_from_hash(raw) if raw else None

    @_unavailable_on_redis_error
    async def list_ids(self, profile: str | None = None) -> list[str]:
        """Device ids, most recently seen first."""
        if profile:
            members = await self._redis.smembers(self.keys.profile_members(profile))
            return sorted(cast(set[str], members))
        return cast(list[str], await self._redis.zrevrange(self.keys.last_seen, 0, -1))

    @_unavailable_on_redis_error
    async def get_many(self, device_ids: Sequence[str]) -> list[DeviceRecord]:
        """Records for the given ids in one round trip; ids removed meanwhile are skipped."""
        if not device_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                pipe.hgetall(self.keys.device(device_id))
            raws = await pipe.execute()
        return [_record_from_hash(raw) for raw in raws if raw]

    @_unavailable_on_redis_error
    async def remove(self, device_id: str) -> bool:
        """Delete a device and every index entry pointing at it. False if it was not there."""
        k = self.keys
        done = await self._remove(
            keys=[
                k.device(device_id),
                k.last_seen,
                k.device_metrics(device_id),
                k.profiles,
                k.revoked_identities,
            ],
            args=[device_id, k.enrollment(""), k.profile_prefix],
        )
        return bool(int(cast(int, done)))

    @_unavailable_on_redis_error
    async def record_telemetry(
        self, device_id: str, records: Sequence[TelemetryIn]
    ) -> TelemetryOutcome | None:
        """Apply new records and skip resent ones, atomically. None if the device is unknown."""
        k = self.keys
        args: list[str] = [device_id, str(MAX_EVENTS)]
        for r in records:
            kind, payload = ("m", repr(r.value)) if r.value is not None else ("e", r.message)
            args += [
                str(r.sequence),
                repr(r.time_unix),
                kind,
                r.name,
                payload,
                json.dumps(r.labels, sort_keys=True),
            ]
        result = await self._telemetry(
            keys=[k.device(device_id), k.device_metrics(device_id), k.events], args=args
        )
        hw, accepted, duplicates = (int(x) for x in cast(Sequence[Any], result))
        if hw < 0:
            return None
        return TelemetryOutcome(hw, accepted, duplicates)

    @_unavailable_on_redis_error
    async def latest_metrics(self, device_id: str) -> dict[str, float]:
        raw = cast(dict[str, str], await self._redis.hgetall(self.keys.device_metrics(device_id)))
        return {name: float(v) for name, v in raw.items()}

    # --- desired state and rollouts ---------------------------------------------------

    @_unavailable_on_redis_error
    async def set_desired(self, device_id: str, desired: Desired) -> int | None:
        """Make ``desired`` the device's desired state (generation bumps only on change).

        Returns the generation now in force, or None if the device is unknown.
        """
        args = [str(getattr(desired, name)) for name in DESIRED_FIELDS]
        result = int(
            cast(int, await self._set_desired(keys=[self.keys.device(device_id)], args=args))
        )
        return None if result < 0 else result

    @_unavailable_on_redis_error
    async def create_rollout(
        self, rollout_id: str, document: str, created_at: float, device_ids: Sequence[str]
    ) -> RolloutClash | None:
        """Store a new rollout and claim its devices in one atomic step; the clash if a
        device is already in an active rollout (or the id is taken), else None."""
        k = self.keys
        result = await self._create_rollout(
            keys=[k.rollout(rollout_id), k.rollouts, k.rollout_claims],
            args=[rollout_id, document, repr(created_at), k.rollout(""), *device_ids],
        )
        device_id, owner = (str(x) for x in cast(Sequence[Any], result))
        return RolloutClash(device_id, owner) if owner else None

    @_unavailable_on_redis_error
    async def get_rollout(self, rollout_id: str) -> str | None:
        return cast(str | None, await self._redis.get(self.keys.rollout(rollout_id)))

    @_unavailable_on_redis_error
    async def list_rollout_ids(self) -> list[str]:
        """Rollout ids, newest first."""
        return cast(list[str], await self._redis.zrevrange(self.keys.rollouts, 0, -1))

    @_unavailable_on_redis_error
    async def update_rollout(self, rollout_id: str, expected_version: int, document: str) -> bool:
        """Replace the document if its version is still ``expected_version`` (else False)."""
        result = await self._update_rollout(
            keys=[self.keys.rollout(rollout_id), self.keys.rollout_claims],
            args=[str(expected_version), document],
        )
        return int(cast(int, result)) == 1

    @_unavailable_on_redis_error
    async def hold_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a lease; True while ``owner`` holds it."""
        result = await self._lease(
            keys=[self.keys.lease(name)], args=[owner, str(int(ttl_seconds * 1000))]
        )
        return int(cast(int, result)) == 1

    # --- federated rounds --------------------------------------------------------------

    @_unavailable_on_redis_error
    async def record_fl_round(self, round_: FederatedRound) -> None:
        """Record one finished (or failed) round; the coordinator exports it as metrics."""
        k = self.keys
        fields = {
            "run_id": round_.run_id,
            "round": str(round_.round),
            "outcome": round_.outcome,
            "loss": repr(round_.loss),
            "accuracy": repr(round_.accuracy),
            "participants": str(round_.participants),
            "time": repr(round_.time_unix),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.fl_rounds(round_.model), mapping=dict(fields.items()))
            pipe.sadd(k.fl_models, round_.model)
            pipe.hincrby(k.fl_outcomes, round_.outcome, 1)
            await pipe.execute()

    @_unavailable_on_redis_error
    async def fl_snapshot(self) -> tuple[list[FederatedRound], dict[str, int]]:
        """The latest round of every model, and round counts by outcome."""
        k = self.keys
        models = sorted(cast(set[str], await self._redis.smembers(k.fl_models)))
        latest = []
        for model in models:
            raw = cast(dict[str, str], await self._redis.hgetall(k.fl_rounds(model)))
            if raw:
                latest.append(
                    FederatedRound(
                        model=model,
                        run_id=raw.get("run_id", ""),
                        round=int(raw.get("round") or 0),
                        outcome=raw.get("outcome", ""),
                        loss=float(raw.get("loss") or "nan"),
                        accuracy=float(raw.get("accuracy") or "nan"),
                        participants=int(raw.get("participants") or 0),
                        time_unix=float(raw.get("time") or 0.0),
                    )
                )
        outcomes = cast(dict[str, str], await self._redis.hgetall(k.fl_outcomes))
        return latest, {name: int(n) for name, n in outcomes.items()}

    # --- enrollment tokens and revocation ------------------------------------------------

    @_unavailable_on_redis_error
    async def create_enroll_token(self, token_sha256: str, uses: int, ttl_seconds: float) -> None:
        key = self.keys.enroll_token(token_sha256)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "uses", str(uses))
            pipe.pexpire(key, int(ttl_seconds * 1000))
            await pipe.execute()

    @_unavailable_on_redis_error
    async def revoke(self, device_id: str) -> bool:
        result = await self._revoke(
            keys=[self.keys.device(device_id), self.keys.revoked, self.keys.revoked_identities],
            args=[device_id],
        )
        return int(cast(int, result)) == 1

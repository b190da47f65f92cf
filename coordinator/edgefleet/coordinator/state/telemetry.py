"""Telemetry: a device's metrics (last value each) and events (a capped stream), deduplicated.

Why a module of its own: telemetry is at-least-once from the agent, so deduplication by (device,
sequence) must be atomic with applying the records; the telemetry script owns the device's
high-water mark, its metrics hash and the events stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import TelemetryIn, TelemetryOutcome

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


class TelemetryState(StateBase):
    """Record and read device telemetry."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._telemetry = client.register_script(_TELEMETRY)

    @unavailable_on_redis_error
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

    @unavailable_on_redis_error
    async def latest_metrics(self, device_id: str) -> dict[str, float]:
        raw = cast(dict[str, str], await self._redis.hgetall(self.keys.device_metrics(device_id)))
        return {name: float(v) for name, v in raw.items()}

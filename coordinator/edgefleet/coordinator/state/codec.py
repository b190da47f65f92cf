"""How a device is laid out in its Redis hash: ``DeviceRecord`` to field/value pairs and back.

Why a module of its own: registration writes the whole record, the heartbeat script reads the
desired state back, and every fleet read parses records; all three must agree on the field names
(``DESIRED_FIELDS`` is also the order the Lua scripts return the desired state in). Reading is
forgiving of what older versions stored (non-finite readings, wrapped counters).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence

from edgefleet.coordinator.state.model import Desired, DeviceRecord
from edgefleet.profiles import DeviceProfile

DESIRED_FIELDS = (
    "generation",
    "variant",
    "model",
    "runtime",
    "rollout",
    "variant_bytes",
    "context_limit",
)


def desired_from(values: Sequence[str | None]) -> Desired:
    """A desired state from its stored values, in ``DESIRED_FIELDS`` order (missing: defaults)."""
    padded = [*values, *[None] * (len(DESIRED_FIELDS) - len(values))]
    g, variant, model, runtime, rollout, nbytes, context = (v or "" for v in padded)
    return Desired(
        int(g or 0), variant, model, runtime, rollout, int(nbytes or 0), int(context or 0)
    )


def flatten(mapping: dict[str, str]) -> list[str]:
    """Field/value pairs as one list, the way HSET and the scripts' ARGV take them."""
    out: list[str] = []
    for k, v in mapping.items():
        out += [k, v]
    return out


def record_fields(record: DeviceRecord) -> dict[str, str]:
    """The hash fields a registration writes (the register script keeps some on re-registration)."""
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


def record_from_hash(raw: dict[str, str]) -> DeviceRecord:
    """A stored device hash as a record."""
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
        desired=desired_from([raw.get(f"desired_{name}") for name in DESIRED_FIELDS]),
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

"""Turn wire messages into what the CLI prints: JSON objects and rich tables.

``--json`` output is the stable interface for scripts: plain objects with
snake_case keys and ISO-8601 UTC times. Tables are for people.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from edgefleet.v1 import admin_pb2, device_pb2, profile_pb2


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _enum_name(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def status_name(status: int) -> str:
    return _enum_name(status, admin_pb2.DeviceStatus, "DEVICE_STATUS_")


def profile_to_dict(p: profile_pb2.DeviceProfile) -> dict[str, Any]:
    return {
        "name": p.name,
        "device_class": _enum_name(p.device_class, profile_pb2.DeviceClass, "DEVICE_CLASS_"),
        "arch": p.arch,
        "cpu": p.cpu,
        "cpu_cores": p.cpu_cores,
        "cpu_mhz": p.cpu_mhz,
        "ram_bytes": p.ram_bytes,
        "storage_bytes": p.storage_bytes,
        "accelerators": list(p.accelerators),
        "precisions": list(p.precisions),
        "runtimes": list(p.runtimes),
        "battery_mah": p.battery_mah,
        "link_kbps": p.link_kbps,
        "simulated": p.simulated,
    }


def device_to_dict(d: admin_pb2.Device, *, with_profile: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "name": d.name,
        "profile": d.profile.name,
        "status": status_name(d.status),
        "last_seen": iso(d.last_seen),
        "registered_at": iso(d.registered_at),
        "agent_version": d.agent_version,
        "reported_state": _enum_name(d.reported_state, device_pb2.AgentState, "AGENT_STATE_"),
        "uptime_seconds": round(d.uptime_seconds, 1),
        "variant": d.active_variant or None,
        "active_variant": d.active_variant,
        "previous_variant": d.previous_variant,
        "failed_variant": d.failed_variant,
        "failure_reason": d.failure_reason,
        "desired": {"generation": d.desired.generation, "variant_id": d.desired.variant_id},
        "labels": dict(d.labels),
        "telemetry": {"records": d.telemetry_records, "sequence": d.telemetry_sequence},
    }
    if with_profile:
        out["resources"] = profile_to_dict(d.profile)
        out["latest_metrics"] = dict(sorted(d.latest_metrics.items()))
    return out


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def ago(ts: Timestamp, now: float | None = None) -> str:
    seconds = max(0.0, (now or time.time()) - ts.ToNanoseconds() / 1e9)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def devices_table(devices: list[admin_pb2.Device]) -> Table:
    table = Table(title=f"{len(devices)} device(s)", title_justify="left")
    for col in ("ID", "NAME", "PROFILE", "STATUS", "LAST SEEN", "RAM", "STORAGE", "PRECISIONS"):
        table.add_column(col)
    now = time.time()
    for d in devices:
        status = status_name(d.status)
        style = "green" if status == "online" else "red"
        table.add_row(
            d.id,
            d.name,
            d.profile.name,
            f"[{style}]{status}[/{style}]",
            ago(d.last_seen, now),
            human_bytes(d.profile.ram_bytes),
            human_bytes(d.profile.storage_bytes),
            ",".join(d.profile.precisions),
        )
    return table


def summary_to_dict(s: admin_pb2.GetFleetSummaryResponse) -> dict[str, Any]:
    return {
        "total": s.total,
        "online": s.online,
        "offline": s.offline,
        "offline_after_seconds": s.offline_after_seconds,
        "by_profile": [
            {"profile": p.profile, "online": p.online, "offline": p.offline} for p in s.by_profile
        ],
    }


def summary_table(s: admin_pb2.GetFleetSummaryResponse) -> Table:
    table = Table(
        title=f"fleet: {s.total} devices, {s.online} online, {s.offline} offline",
        title_justify="left",
    )
    for col in ("PROFILE", "ONLINE", "OFFLINE"):
        table.add_column(col, justify="left" if col == "PROFILE" else "right")
    for p in s.by_profile:
        table.add_row(p.profile, str(p.online), str(p.offline))
    return table


def rollout_to_dict(r: admin_pb2.Rollout) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for d in r.devices:
        counts[d.status] = counts.get(d.status, 0) + 1
    return {
        "id": r.id,
        "model": r.model,
        "selector": r.selector,
        "strategy": r.strategy,
        "state": r.state,
        "current_wave": r.current_wave,
        "waves": [round(w, 4) for w in r.waves],
        "message": r.message,
        "counts": counts,
        "devices": [
            {
                "device_id": d.device_id,
                "name": d.name,
                "profile": d.profile,
                "wave": d.wave,
                "variant_id": d.variant_id,
                "recipe": d.recipe,
                "runtime": d.runtime,
                "predicted_latency_ms": round(d.predicted_latency_ms, 6),
                "status": d.status,
                "detail": d.detail,
                **({"context_limit": d.context_limit} if d.context_limit else {}),
            }
            for d in r.devices
        ],
        "skipped": [
            {"device_id": s.device_id, "name": s.name, "reason": s.reason} for s in r.skipped
        ],
    }

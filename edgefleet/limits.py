"""Bounds on every number, string and list a request may carry (the "Limits" in the README).

Why bounds at the boundary rather than wherever a value is used: a value that
passes validation is stored, indexed, relayed and listed to every operator. An
integer beyond 2**53 is silently rounded by Redis' Lua (its numbers are
doubles), one beyond 2**63 wraps negative and then cannot be sent as a uint64;
a NaN makes JSON output invalid; a list of 100k strings makes every later
listing of the fleet exceed gRPC's message limit. Refusing them on arrival,
with the field named, keeps all of that from ever being stored.
"""

from __future__ import annotations

import math

# Largest integer Lua (a double) and JSON consumers hold exactly: sequences, counters.
MAX_SAFE_INT = 2**53
# Ids (device, rollout) in requests: longer ones are refused and never echoed back.
MAX_ID_CHARS = 64
# Names and free text in admin requests (model, selector, rollout action) and waves.
MAX_NAME_CHARS = 128
MAX_SELECTOR_CHARS = 1024
MAX_WAVES = 16
# Device profile lists and strings.
MAX_ACCELERATORS = 16
MAX_PRECISIONS = 8
MAX_RUNTIMES = 8
MAX_PROFILE_STRING = 64  # one accelerator name
# Heartbeat: seconds an agent may report as uptime (a century).
MAX_UPTIME_SECONDS = 100 * 365 * 86400.0
# ListDevices pages: a device is at most ~15 KB on the wire (32 labels of 256
# characters, capped profile lists), so the largest page stays under 4 MiB.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 200


def finite_problem(value: float, *, low: float = -math.inf, high: float = math.inf) -> str | None:
    """Why ``value`` is not a finite number in [low, high], or None if it is."""
    if not math.isfinite(value):
        return "must be a finite number (not NaN or infinity)"
    if value < low or value > high:
        return f"must be between {low:g} and {high:g}"
    return None


def int_problem(value: int, *, low: int = 0, high: int = MAX_SAFE_INT) -> str | None:
    """Why ``value`` is not an integer in [low, high], or None if it is."""
    if value < low or value > high:
        return f"must be between {low} and {high}"
    return None


def shown_id(value: str) -> str:
    """An id as it may appear in an error message: never more than MAX_ID_CHARS characters."""
    return repr(value) if len(value) <= MAX_ID_CHARS else repr(value[:MAX_ID_CHARS] + "...")

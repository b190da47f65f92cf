"""Request validation: the bounds on what devices and operators send, checked before
anything reaches the store or an error message echoes it.

Plain objects in, ``InvalidArgument`` out, no gRPC and no state: the registry checks
enrolments, heartbeats and telemetry batches here, and the API checks ids, names and
numbers of admin requests. Keeping the bounds apart from the registry keeps each module
about one thing (the registry is enrolment, liveness and fleet views) and puts every
limit a caller can hit in one place to read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.state.model import TelemetryIn
from edgefleet.coordinator.variant_selection import Policy
from edgefleet.limits import MAX_ID_CHARS, MAX_UPTIME_SECONDS, finite_problem, int_problem, shown_id

DEVICE_ID_RE = re.compile(r"^dev-[0-9a-f]{12}$")
_ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_INSTANCE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,62}[a-z0-9])?$")
_MAX_LABELS = 32
_MAX_LABEL_VALUE = 256
_METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_TELEMETRY_BATCH = 500
_MAX_TELEMETRY_LABELS = 8
_MAX_EVENT_MESSAGE = 1024
MAX_SAFE_TIME = 2.0**40  # unix seconds: year ~36812, far beyond any real clock
AGENT_STATES = ("starting", "ready", "degraded", "stopping")


# --- ids, numbers and names ---------------------------------------------------------------


def validate_device_id(device_id: str, field: str = "device_id") -> None:
    if not device_id:
        raise InvalidArgument(field, "required")
    if not DEVICE_ID_RE.match(device_id):
        raise InvalidArgument(field, f"malformed id {shown_id(device_id)} (expected dev-<12 hex>)")


def validate_rollout_id(rollout_id: str) -> None:
    """Refuse a malformed rollout id before it reaches the store or an error message."""
    if not rollout_id:
        raise InvalidArgument("rollout_id", "required")
    if len(rollout_id) > MAX_ID_CHARS or not _ROLLOUT_ID_RE.match(rollout_id):
        raise InvalidArgument(
            "rollout_id",
            f"malformed id {shown_id(rollout_id)} (at most {MAX_ID_CHARS} of [A-Za-z0-9._-])",
        )


def check_int(field: str, value: int, low: int = 0) -> None:
    problem = int_problem(value, low=low)
    if problem:
        raise InvalidArgument(field, problem)


def check_finite(field: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    problem = finite_problem(value, low=low, high=high)
    if problem:
        raise InvalidArgument(field, problem)
    return value


def check_text(field: str, value: str, limit: int, *, required: bool = False) -> None:
    """Refuse a missing or over-long name before any error message could echo it."""
    if required and not value:
        raise InvalidArgument(field, "required")
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")


def checked_policy(tolerance: float, slo_ms: float) -> Policy:
    """The selection policy of a request (0 for either: the default)."""
    check_finite("accuracy_tolerance", tolerance)
    check_finite("latency_slo_ms", slo_ms)
    if tolerance < 0 or tolerance > 1:
        raise InvalidArgument("accuracy_tolerance", "must be a fraction in [0, 1]")
    if slo_ms < 0:
        raise InvalidArgument("latency_slo_ms", "must be >= 0")
    return Policy(
        accuracy_tolerance=tolerance or Policy().accuracy_tolerance,
        latency_slo_ms=slo_ms or None,
    )


# --- what a device sends ------------------------------------------------------------------


class RegistrationFields(Protocol):
    """The checked fields of a ``registry.Registration``."""

    @property
    def instance_key(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def agent_version(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def benchmark_macs_per_second(self) -> float: ...
    @property
    def benchmark_method(self) -> str: ...


class HeartbeatFields(Protocol):
    """The checked fields of a ``registry.HeartbeatReport``."""

    @property
    def state(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def uptime_seconds(self) -> float: ...
    @property
    def active_variant(self) -> str: ...
    @property
    def previous_variant(self) -> str: ...
    @property
    def failed_variant(self) -> str: ...
    @property
    def failure_reason(self) -> str: ...


def validate_registration(reg: RegistrationFields) -> None:
    if not _INSTANCE_KEY_RE.match(reg.instance_key):
        raise InvalidArgument("instance_key", "must be 8-128 characters of [A-Za-z0-9_-]")
    if not reg.name or len(reg.name) > 64 or not reg.name.isprintable():
        raise InvalidArgument("name", "must be 1-64 printable characters")
    if len(reg.agent_version) > 64:
        raise InvalidArgument("agent_version", "longer than 64 characters")
    mps = reg.benchmark_macs_per_second
    if not math.isfinite(mps) or mps < 0 or mps > 1e16:
        raise InvalidArgument("benchmark.macs_per_second", "must be a finite rate >= 0")
    if len(reg.benchmark_method) > 128:
        raise InvalidArgument("benchmark.method", "longer than 128 characters")
    if len(reg.labels) > _MAX_LABELS:
        raise InvalidArgument("labels", f"at most {_MAX_LABELS} labels")
    for key, value in reg.labels.items():
        if not _LABEL_KEY_RE.match(key):
            raise InvalidArgument(f"labels[{key[:40]!r}]", "key must be lowercase [a-z0-9._/-]")
        if len(value) > _MAX_LABEL_VALUE or not value.isprintable():
            raise InvalidArgument(f"labels[{key}]", "value must be <= 256 printable characters")


def validate_heartbeat(report: HeartbeatFields) -> None:
    if report.state not in AGENT_STATES:
        raise InvalidArgument("state", f"must be one of {', '.join(AGENT_STATES)}")
    check_int("sequence", report.sequence)
    check_finite("uptime_seconds", report.uptime_seconds, low=0, high=MAX_UPTIME_SECONDS)
    for name in ("active_variant", "previous_variant", "failed_variant"):
        if len(getattr(report, name)) > 128:
            raise InvalidArgument(name, "longer than 128 characters")
    if len(report.failure_reason) > 1024:
        raise InvalidArgument("failure_reason", "longer than 1024 characters")


def validate_telemetry(records: Sequence[TelemetryIn]) -> None:
    if len(records) > MAX_TELEMETRY_BATCH:
        raise InvalidArgument("records", f"at most {MAX_TELEMETRY_BATCH} records per call")
    previous = 0
    for i, r in enumerate(records):
        where = f"records[{i}]"
        if r.sequence <= previous:
            raise InvalidArgument(f"{where}.sequence", "must be > 0 and strictly ascending")
        check_int(f"{where}.sequence", r.sequence)
        previous = r.sequence
        if not _METRIC_NAME_RE.match(r.name):
            raise InvalidArgument(f"{where}.name", "must match [a-z][a-z0-9_]{0,62}")
        if r.value is not None:
            check_finite(f"{where}.value", r.value)
        check_finite(f"{where}.time_unix", r.time_unix, low=0, high=MAX_SAFE_TIME)
        if len(r.message) > _MAX_EVENT_MESSAGE:
            raise InvalidArgument(f"{where}.message", f"longer than {_MAX_EVENT_MESSAGE}")
        if len(r.labels) > _MAX_TELEMETRY_LABELS:
            raise InvalidArgument(f"{where}.labels", f"at most {_MAX_TELEMETRY_LABELS} labels")
        for key, value in r.labels.items():
            if not _LABEL_KEY_RE.match(key) or len(value) > _MAX_LABEL_VALUE:
                raise InvalidArgument(f"{where}.labels", f"bad label {key[:40]!r}")

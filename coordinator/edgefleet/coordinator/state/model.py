"""The coordinator's state as plain objects: what the store returns and takes, and its errors.

Why apart from the Redis code: servicers, rollouts, metrics, the latency model and the CLI
work with devices, desired states, telemetry and federated rounds, not with Redis. They import
these types from here, which imports no redis (see the import contract in pyproject.toml), so core
logic and its tests depend on the data, not on how ``FleetStore`` keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.coordinator.errors import PermissionDenied, Unauthenticated, Unavailable
from edgefleet.profiles import DeviceProfile


@dataclass(frozen=True)
class Desired:
    """What the coordinator wants a device to run. ``generation`` bumps on every change."""

    generation: int = 0
    variant: str = ""
    model: str = ""
    runtime: str = ""
    rollout: str = ""
    variant_bytes: int = 0
    #: a language model's context limit from LM selection (0: the manifest's / not an LM)
    context_limit: int = 0


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
    #: what the round's updates weighed on the wire, devices to server (0: not reported)
    update_bytes: int = 0


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


class DeviceRevoked(PermissionDenied):
    """An enrolment attempt by an identity (instance key, device key) an operator revoked."""


class EnrollTokenRefused(Unauthenticated):
    """A limited-use enrollment token that is unknown, expired or used up."""


class StoreError(Unavailable):
    """Redis is unreachable or holds data this version cannot read."""

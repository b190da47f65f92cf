"""The device registry: enrolment, heartbeats, liveness and fleet views.

Core logic only: it takes and returns plain objects, raises ``edgefleet.coordinator.errors``
and reaches state through ``FleetStore``, so it can be tested without gRPC. The bounds on
what a device sends (fields, labels, telemetry batches) are ``coordinator.validation``'s.

Liveness is derived, not stored: a device is ``online`` while its last heartbeat
is younger than ``offline_after`` and its last report was not a clean shutdown.
Deriving it on read (level-triggered) means no sweeper has to run for the
status to be right, and a coordinator restart cannot leave a stale status.
"""

from __future__ import annotations

import bisect
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from edgefleet.coordinator.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from edgefleet.coordinator.state.model import Desired, DeviceRecord, TelemetryIn, TelemetryOutcome
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens, new_secret, secrets_match, sha256_hex
from edgefleet.coordinator.validation import (
    validate_device_id,
    validate_heartbeat,
    validate_registration,
    validate_telemetry,
)
from edgefleet.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from edgefleet.pki import (
    MAX_CSR_BYTES,
    CertificateAuthority,
    CheckedCsr,
    PkiError,
    check_csr,
    new_serial,
)
from edgefleet.profiles import DeviceProfile


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class RegistrySettings:
    offline_after: float = 15.0
    heartbeat_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat interval must be > 0")
        if self.offline_after <= self.heartbeat_interval:
            raise ValueError(
                f"offline-after ({self.offline_after}s) must exceed the heartbeat interval "
                f"({self.heartbeat_interval}s), or healthy devices would flap offline"
            )


@dataclass(frozen=True)
class Registration:
    instance_key: str
    name: str
    profile: DeviceProfile
    agent_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    benchmark_macs_per_second: float = 0.0
    benchmark_method: str = ""


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    credential: str
    created: bool
    heartbeat_interval: float
    certificate_pem: bytes = b""
    ca_certificate_pem: bytes = b""


@dataclass(frozen=True)
class HeartbeatReport:
    state: str
    sequence: int
    uptime_seconds: float = 0.0
    active_variant: str = ""
    previous_variant: str = ""
    failed_variant: str = ""
    failure_reason: str = ""


@dataclass(frozen=True)
class DeviceView:
    """A device as operators see it: the record plus derived status."""

    record: DeviceRecord
    status: DeviceStatus
    latest_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DevicePage:
    """One page of a fleet listing; ``next_page_token`` is "" on the last page."""

    views: list[DeviceView]
    next_page_token: str


@dataclass(frozen=True)
class ProfileCount:
    profile: str
    online: int
    offline: int


@dataclass(frozen=True)
class FleetSummary:
    total: int
    online: int
    offline: int
    by_profile: list[ProfileCount]
    offline_after: float


class Registry:
    """Enrols devices, records heartbeats, and answers fleet queries."""

    def __init__(
        self,
        store: FleetStore,
        tokens: Tokens,
        settings: RegistrySettings | None = None,
        clock: Callable[[], float] = time.time,
        ca: CertificateAuthority | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self.settings = settings or RegistrySettings()
        self._clock = clock
        self._ca = ca

    @property
    def requires_client_certificates(self) -> bool:
        """TLS mode: device calls must come with the device's own certificate."""
        return self._ca is not None

    def _enroll_token_to_spend(self, token: str) -> str | None:
        """None for the static token; else the hash of the limited-use token that the
        store's register script spends atomically with the write (refused: nothing spent)."""
        if self._tokens.is_static_enroll(token):
            return None
        if not token:
            raise Unauthenticated("enrollment token missing", reason="enroll_token")
        return sha256_hex(token)

    def _check_peer(self, device_id: str, peer_device_id: str | None) -> None:
        if not self.requires_client_certificates:
            return
        if peer_device_id is None:
            raise Unauthenticated(
                "a device client certificate is required (use the device endpoint with mutual TLS)",
                reason="certificate",
            )
        if peer_device_id != device_id:
            raise PermissionDenied(
                f"this certificate belongs to {peer_device_id[:40]}, not {device_id[:40]}",
                reason="certificate",
            )

    def _check_csr(self, csr_pem: bytes) -> CheckedCsr | None:
        """The device's CSR, fully checked, or None when this coordinator issues no certificates."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument("csr_pem", f"larger than {MAX_CSR_BYTES // 1024} KiB")
        if self._ca is None:
            return None
        if not csr_pem:
            raise InvalidArgument(
                "csr_pem", "required: this coordinator issues device certificates"
            )
        try:
            return check_csr(csr_pem)
        except PkiError as exc:
            raise InvalidArgument("csr_pem", str(exc)) from None

    async def register(
        self, enroll_token: str, reg: Registration, csr_pem: bytes = b""
    ) -> Enrollment:
        """Enrol (or re-enrol) a device.

        Everything that can refuse the call (fields, CSR, token, revocation) is
        decided before or inside the store's one atomic register script, so a
        refused enrolment stores nothing and spends no token use. The certificate
        is signed after the write, from a CSR already proven signable, with the
        serial the record already holds.
        """
        validate_registration(reg)
        csr = self._check_csr(csr_pem)
        spend = self._enroll_token_to_spend(enroll_token)
        now = self._clock()
        credential = new_secret()
        serial = new_serial() if csr is not None else None
        record = DeviceRecord(
            id=f"dev-{uuid.uuid4().hex[:12]}",
            name=reg.name,
            profile=reg.profile,
            instance_key=reg.instance_key,
            credential_sha256=sha256_hex(credential),
            registered_at=now,
            last_seen=now,
            agent_version=reg.agent_version,
            labels=dict(reg.labels),
            benchmark_macs_per_second=reg.benchmark_macs_per_second,
            benchmark_method=reg.benchmark_method,
            cert_serial=format(serial, "x") if serial is not None else "",
            key_sha256=csr.key_sha256 if csr is not None else "",
        )
        device_id, created = await self._store.register(record, spend)
        if self._ca is None or csr is None or serial is None:
            return Enrollment(device_id, credential, created, self.settings.heartbeat_interval)
        return Enrollment(
            device_id,
            credential,
            created,
            self.settings.heartbeat_interval,
            certificate_pem=self._ca.sign_device(csr, device_id, serial),
            ca_certificate_pem=self._ca.cert_pem,
        )

    async def create_enrollment_token(self, uses: int, ttl_seconds: float) -> tuple[str, float]:
        """A token good for ``uses`` registrations within ``ttl_seconds``: (token, expiry)."""
        if not 1 <= uses <= 1_000_000:
            raise InvalidArgument("uses", "must be between 1 and 1,000,000")
        if not 0 < ttl_seconds <= 366 * 86400:
            raise InvalidArgument("ttl_seconds", "must be > 0 and at most a year")
        token = new_secret()
        await self._store.create_enroll_token(sha256_hex(token), uses, ttl_seconds)
        return token, self._clock() + ttl_seconds

    async def revoke_device(self, device_id: str) -> None:
        validate_device_id(device_id)
        if not await self._store.revoke(device_id):
            raise NotFound(f"device {device_id} is not registered")

    async def authenticate_device(
        self, device_id: str, credential: str, peer_device_id: str | None = None
    ) -> DeviceRecord:
        """The device's record if the caller is that device: in TLS mode its certificate
        names this id, and ``credential`` is its current one. For every device RPC."""
        validate_device_id(device_id)
        self._check_peer(device_id, peer_device_id)
        record = await self._store.get(device_id)
        if record is None:
            raise NotFound(f"device {device_id} is not registered")
        if record.revoked:
            raise Unauthenticated(f"device {device_id} was revoked", reason="revoked")
        if not credential or not secrets_match(sha256_hex(credential), record.credential_sha256):
            raise Unauthenticated(f"credential rejected for device {device_id}")
        return record

    async def heartbeat(
        self,
        device_id: str,
        credential: str,
        report: HeartbeatReport,
        peer_device_id: str | None = None,
    ) -> Desired:
        validate_heartbeat(report)
        validate_device_id(device_id)
        self._check_peer(device_id, peer_device_id)
        if not credential:
            raise Unauthenticated(f"credential missing for device {device_id}")
        outcome = await self._store.record_heartbeat(
            device_id,
            now=self._clock(),
            state=report.state,
            sequence=report.sequence,
            uptime_seconds=report.uptime_seconds,
            active_variant=report.active_variant,
            credential_sha256=sha256_hex(credential),
            previous_variant=report.previous_variant,
            failed_variant=report.failed_variant,
            failure_reason=report.failure_reason,
        )
        if not outcome.found:
            raise NotFound(f"device {device_id} is not registered")
        if outcome.revoked:
            raise Unauthenticated(f"device {device_id} was revoked", reason="revoked")
        if not outcome.authorized:
            raise Unauthenticated(f"credential rejected for device {device_id}")
        return outcome.desired

    async def report_telemetry(
        self,
        device_id: str,
        credential: str,
        records: list[TelemetryIn],
        peer_device_id: str | None = None,
    ) -> tuple[TelemetryOutcome, DeviceRecord, list[TelemetryIn]]:
        """Apply a batch of telemetry exactly once per (device, sequence); resends are no-ops.

        Returns the outcome, the device, and the records that were new (the
        batch is ascending and deduplication is by high-water mark, so those
        are its last ``accepted`` records): only they may feed fleet metrics.
        """
        validate_telemetry(records)
        record = await self.authenticate_device(device_id, credential, peer_device_id)
        outcome = await self._store.record_telemetry(device_id, records)
        if outcome is None:  # removed between the two calls
            raise NotFound(f"device {device_id} is not registered")
        new = records[len(records) - outcome.accepted :] if outcome.accepted else []
        return outcome, record, new

    def status_of(self, record: DeviceRecord, now: float | None = None) -> DeviceStatus:
        now = self._clock() if now is None else now
        # the same bound, computed the same way, as fleet_summary's liveness index query
        fresh = record.last_seen > now - self.settings.offline_after
        alive = fresh and record.reported_state != "stopping"
        return DeviceStatus.ONLINE if alive else DeviceStatus.OFFLINE

    async def list_devices(
        self, *, profile: str | None = None, status: DeviceStatus | None = None
    ) -> list[DeviceView]:
        records = await self._store.get_many(await self._store.list_ids(profile))
        now = self._clock()
        views = [DeviceView(r, self.status_of(r, now)) for r in records]
        if status is not None:
            views = [v for v in views if v.status is status]
        return sorted(views, key=lambda v: (v.record.profile.name, v.record.name, v.record.id))

    async def list_devices_page(
        self,
        *,
        profile: str | None = None,
        status: DeviceStatus | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> DevicePage:
        """One page of devices, ordered by id; pass ``next_page_token`` back for the next.

        Why by id and keyed on the last id (not an offset): a page is then stable
        while devices register or leave, and reading it costs the ids (one cheap
        read) plus only the records the page needs, not the whole fleet.
        """
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        if page_token:
            validate_device_id(page_token, "page_token")
        size = page_size or DEFAULT_PAGE_SIZE
        ids = sorted(await self._store.list_ids(profile))
        start = bisect.bisect_right(ids, page_token) if page_token else 0
        now = self._clock()
        views: list[DeviceView] = []
        cursor = start
        while cursor < len(ids) and len(views) < size:
            chunk = ids[cursor : cursor + size]
            cursor += len(chunk)
            for record in await self._store.get_many(chunk):
                view = DeviceView(record, self.status_of(record, now))
                if status is None or view.status is status:
                    views.append(view)
                if len(views) == size:
                    cursor = bisect.bisect_right(ids, record.id)
                    break
        more = cursor < len(ids)
        return DevicePage(views, views[-1].record.id if more and views else "")

    async def get_device(self, device_id: str) -> DeviceView:
        validate_device_id(device_id)
        record = await self._store.get(device_id)
        if record is None:
            raise NotFound(f"device {device_id} is not registered")
        metrics = await self._store.latest_metrics(device_id)
        return DeviceView(record, self.status_of(record), metrics)

    async def remove_device(self, device_id: str) -> None:
        validate_device_id(device_id)
        if not await self._store.remove(device_id):
            raise NotFound(f"device {device_id} is not registered")

    async def fleet_summary(self) -> FleetSummary:
        """Devices by profile and status, from the store's liveness indexes.

        Same answer as applying ``status_of`` to every record (``scan_fleet_summary``,
        kept for tests and audits), but O(profiles x log N) instead of reading
        all N records: online = live (last report not ``stopping``) with a
        heartbeat younger than ``offline_after``, offline = the rest.
        """
        fresh_after = self._clock() - self.settings.offline_after
        by_profile = [
            ProfileCount(c.profile, c.fresh, c.devices - c.fresh)
            for c in await self._store.fleet_counts(fresh_after)
        ]
        return self._summary(by_profile)

    async def scan_fleet_summary(self) -> FleetSummary:
        """``fleet_summary`` by reading every record (O(N)): the reference it must match."""
        views = await self.list_devices()
        counts: Counter[tuple[str, DeviceStatus]] = Counter(
            (v.record.profile.name, v.status) for v in views
        )
        profiles = sorted({p for p, _ in counts})
        return self._summary(
            [
                ProfileCount(p, counts[(p, DeviceStatus.ONLINE)], counts[(p, DeviceStatus.OFFLINE)])
                for p in profiles
            ]
        )

    def _summary(self, by_profile: list[ProfileCount]) -> FleetSummary:
        online = sum(pc.online for pc in by_profile)
        offline = sum(pc.offline for pc in by_profile)
        return FleetSummary(
            total=online + offline,
            online=online,
            offline=offline,
            by_profile=by_profile,
            offline_after=self.settings.offline_after,
        )

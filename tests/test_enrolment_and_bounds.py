"""Issue 14's audit findings, one test each, against the registry and a real redis-server.

Each would fail on the code before the fix: a refused CSR that still stored the
device and spent a token use, a 2**63 sequence that broke every listing, lists
of 100k strings, a revocation that `devices rm` forgot, a 70 KB id echoed back,
authentication failures nobody counted.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgefleet.catalog import get_profile
from edgefleet.coordinator.api.admin_service import AdminServicer, gate_from_proto
from edgefleet.coordinator.api.artifact_service import ArtifactServicer
from edgefleet.coordinator.api.convert import device_to_proto
from edgefleet.coordinator.api.device_service import DeviceServicer
from edgefleet.coordinator.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from edgefleet.coordinator.limits import StreamSlots
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import (
    DeviceStatus,
    HeartbeatReport,
    Registration,
    Registry,
    RegistrySettings,
)
from edgefleet.coordinator.state.model import TelemetryIn
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.coordinator.tokens import Tokens
from edgefleet.coordinator.validation import checked_policy, validate_rollout_id
from edgefleet.limits import MAX_PAGE_SIZE
from edgefleet.pki import CertificateAuthority, device_id_of, make_csr, new_key
from edgefleet.profiles import ProfileError
from edgefleet.v1 import admin_pb2, artifact_pb2, device_pb2
from edgefleet.variant_store import VariantStore
from edgefleet.wire import profile_from_proto, profile_to_proto

T = TypeVar("T")
TOKEN = "enroll-secret"
TOKENS = Tokens(admin="a", enroll=TOKEN, admin_source="test", enroll_source="test")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def run(
    redis_url: str,
    body: Callable[[Registry, FleetStore], Awaitable[T]],
    ca: CertificateAuthority | None = None,
) -> T:
    async def main() -> T:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        await store.check()
        registry = Registry(
            store, TOKENS, RegistrySettings(offline_after=10, heartbeat_interval=2), Clock(), ca
        )
        try:
            return await body(registry, store)
        finally:
            await store.close()

    return asyncio.run(main())


def reg(key: str = "instance-key-0001", name: str = "pi") -> Registration:
    return Registration(instance_key=key, name=name, profile=get_profile("rpi4"))


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + lines + b"\n-----END CERTIFICATE REQUEST-----\n"
    )


P256_OID = bytes.fromhex("06082a8648ce3d030107")


def bad_csrs() -> dict[str, bytes]:
    """CSRs that parse as far as PEM/DER but cannot be signed, and one that is not PEM."""
    der = x509.load_pem_x509_csr(make_csr(new_key(), "x")).public_bytes(serialization.Encoding.DER)
    point = der.index(b"\x03\x42\x00\x04") + 4  # the BIT STRING of the uncompressed point
    return {
        "not-pem": b"hello, I am not a CSR",
        "off-curve": _pem(der[:point] + bytes([der[point] ^ 1]) + der[point + 1 :]),
        "unknown-curve": _pem(der.replace(P256_OID, bytes.fromhex("06082a8648ce3d030109"))),
        "bad-signature": _pem(der[:-1] + bytes([der[-1] ^ 1])),
        # version 2 instead of 1: cryptography raises InvalidVersion, not a ValueError
        # (found by the -m slow fuzzer: it reached the client as UNKNOWN)
        "bad-version": _pem(der.replace(b"\x02\x01\x00", b"\x02\x01\x01", 1)),
    }


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


# --- 1. a CSR is checked before anything is written or spent --------------------------


@pytest.mark.parametrize("kind", sorted(bad_csrs()))
def test_a_bad_csr_stores_nothing_and_spends_no_token_use(
    redis_url: str, ca: CertificateAuthority, kind: str
) -> None:
    csr = bad_csrs()[kind]

    async def body(r: Registry, store: FleetStore) -> None:
        token, _ = await r.create_enrollment_token(uses=2, ttl_seconds=60)
        for _ in range(3):  # more refusals than the token has uses
            with pytest.raises(InvalidArgument) as info:
                await r.register(token, reg(), csr)
            assert info.value.field == "csr_pem" and "\n" not in str(info.value)
        assert await store.list_ids() == []  # no device without a certificate
        # both uses are still there
        for n in range(2):
            e = await r.register(token, reg(f"instance-key-000{n}"), make_csr(new_key(), "ok"))
            assert device_id_of(e.certificate_pem) == e.device_id
        with pytest.raises(Unauthenticated):
            await r.register(token, reg("instance-key-0009"), make_csr(new_key(), "ok"))

    run(redis_url, body, ca)


def test_the_certificate_serial_is_stored_with_the_device(
    redis_url: str, ca: CertificateAuthority
) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg(), make_csr(new_key(), "pi"))
        cert = x509.load_pem_x509_certificate(e.certificate_pem)
        record = (await r.get_device(e.device_id)).record
        assert record.cert_serial == format(cert.serial_number, "x")
        assert len(record.key_sha256) == 64

    run(redis_url, body, ca)


# --- 2. integers and floats are bounded at validation --------------------------------------


def metric(seq: int, value: float = 1.0, time_unix: float = 1.0) -> TelemetryIn:
    return TelemetryIn(sequence=seq, time_unix=time_unix, name="x_total", value=value)


@pytest.mark.parametrize(
    "records",
    [
        [metric(2**63)],
        [metric(2**53 + 1)],
        [metric(1), metric(2**64 - 1)],
        [metric(1, value=math.nan)],
        [metric(1, value=math.inf)],
        [metric(1, time_unix=math.nan)],
    ],
)
def test_out_of_range_telemetry_is_refused_and_the_fleet_still_lists(
    redis_url: str, records: list[TelemetryIn]
) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg())
        with pytest.raises(InvalidArgument) as info:
            await r.report_telemetry(e.device_id, e.credential, records)
        assert "records[" in str(info.value)
        view = await r.get_device(e.device_id)
        assert view.record.telemetry_records == 0
        device_to_proto(view)  # still encodable: uint64 fields hold what is stored
        # and the device's dedup still works from where it was
        outcome, _, _ = await r.report_telemetry(e.device_id, e.credential, [metric(2**53)])
        assert (outcome.acked_sequence, outcome.accepted) == (2**53, 1)
        device_to_proto(await r.get_device(e.device_id))

    run(redis_url, body)


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (HeartbeatReport("ready", 2**63), "sequence"),
        (HeartbeatReport("ready", 2**64 - 1), "sequence"),
        (HeartbeatReport("ready", 1, uptime_seconds=math.nan), "uptime_seconds"),
        (HeartbeatReport("ready", 1, uptime_seconds=math.inf), "uptime_seconds"),
        (HeartbeatReport("ready", 1, uptime_seconds=-1.0), "uptime_seconds"),
    ],
)
def test_out_of_range_heartbeats_are_refused(
    redis_url: str, report: HeartbeatReport, field: str
) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg())
        with pytest.raises(InvalidArgument) as info:
            await r.heartbeat(e.device_id, e.credential, report)
        assert info.value.field == field
        record = (await r.get_device(e.device_id)).record
        assert math.isfinite(record.uptime_seconds) and record.last_sequence == 0

    run(redis_url, body)


def test_a_store_written_before_the_bounds_still_lists(redis_url: str) -> None:
    """A sequence Lua wrapped to -2**63 (the old bug) reads back as 0, not as a crash, and a
    NaN uptime stored before validation refused it reads back as 0, not as NaN."""

    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg())
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        await client.hset(
            f"{{edgefleet}}:device:{e.device_id}",
            mapping={"telemetry_sequence": "-9223372036854775808", "uptime_seconds": "nan"},
        )
        await client.aclose()
        device = device_to_proto(await r.get_device(e.device_id))
        assert device.telemetry_sequence == 0 and device.uptime_seconds == 0.0

    run(redis_url, body)


def test_non_finite_rollout_and_policy_numbers_are_refused() -> None:
    for name in ("soak_seconds", "max_error_rate", "max_latency_ratio", "min_accuracy"):
        gate = admin_pb2.RolloutGate()
        setattr(gate, name, math.nan)
        with pytest.raises(InvalidArgument) as info:
            gate_from_proto(gate)
        assert info.value.field == f"gate.{name}"
    with pytest.raises(InvalidArgument):
        checked_policy(math.nan, 0.0)
    with pytest.raises(InvalidArgument):
        checked_policy(0.0, math.inf)


# --- 3. repeated fields are capped, listings are paged ------------------------------------


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("accelerators", ["npu:x"] * 110_000),
        ("accelerators", ["x" * 65]),
        ("precisions", ["int8"] * 10_000),
        ("runtimes", ["torch"] * 100),
    ],
)
def test_oversized_profile_lists_are_refused(field: str, values: list[str]) -> None:
    msg = profile_to_proto(get_profile("rpi4"))
    getattr(msg, field).extend(values)
    with pytest.raises(ProfileError) as info:
        profile_from_proto(msg)
    assert info.value.field == field and len(str(info.value)) < 200


def test_list_devices_pages_cover_the_fleet_once(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        ids = {(await r.register(TOKEN, reg(f"instance-key-{n:04d}"))).device_id for n in range(7)}
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await r.list_devices_page(page_size=3, page_token=token)
            assert len(page.views) <= 3
            seen += [v.record.id for v in page.views]
            pages += 1
            if not page.next_page_token:
                break
            token = page.next_page_token
        assert sorted(seen) == sorted(ids) and pages == 3
        assert (await r.list_devices_page()).next_page_token == ""  # default size: one page
        offline = await r.list_devices_page(status=DeviceStatus.OFFLINE, page_size=2)
        assert offline.views == [] and offline.next_page_token == ""
        for bad in ({"page_size": MAX_PAGE_SIZE + 1}, {"page_size": -1}, {"page_token": "x"}):
            with pytest.raises(InvalidArgument):
                await r.list_devices_page(**bad)

    run(redis_url, body)


# --- 4. revocation sticks to the identity; ids in errors are bounded -----------------------


def test_revocation_survives_removal_and_refuses_the_same_instance(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg())
        await r.revoke_device(e.device_id)
        with pytest.raises(Unauthenticated, match="revoked"):
            await r.heartbeat(e.device_id, e.credential, HeartbeatReport("ready", 1))
        with pytest.raises(PermissionDenied, match="revoked"):
            await r.register(TOKEN, reg())
        await r.remove_device(e.device_id)  # `devices rm` must not forget the revocation
        with pytest.raises(PermissionDenied, match="revoked"):
            await r.register(TOKEN, reg())
        assert await store.list_ids() == []
        # a wrong token learns nothing about revocations
        with pytest.raises(Unauthenticated):
            await r.register("wrong", reg())

    run(redis_url, body)


def test_revocation_sticks_to_the_device_key_under_a_new_instance_key(
    redis_url: str, ca: CertificateAuthority
) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        key = new_key()
        e = await r.register(TOKEN, reg(), make_csr(key, "pi"))
        await r.revoke_device(e.device_id)
        await r.remove_device(e.device_id)
        with pytest.raises(PermissionDenied):
            await r.register(TOKEN, reg("another-instance-key"), make_csr(key, "pi"))
        token, _ = await r.create_enrollment_token(uses=1, ttl_seconds=60)
        with pytest.raises(PermissionDenied):  # refused before the token is spent
            await r.register(token, reg("another-instance-key"), make_csr(key, "pi"))
        fresh = await r.register(token, reg("another-instance-key"), make_csr(new_key(), "pi"))
        assert fresh.created

    run(redis_url, body, ca)


def test_long_ids_are_refused_without_being_echoed() -> None:
    for bad in ("r" * 70_000, "ro-../../x", ""):
        with pytest.raises(InvalidArgument) as info:
            validate_rollout_id(bad)
        assert len(str(info.value)) < 200


def test_long_names_in_admin_requests_are_refused_before_any_echo() -> None:
    """A 70 KB model or selector used to come back in NOT_FOUND/FAILED_PRECONDITION."""

    class Abort(Exception):
        pass

    class Context:
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("authorization", "Bearer a"),)

        async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
            raise Abort(code, details)

    servicer = AdminServicer(None, TOKENS, None)  # type: ignore[arg-type]
    huge = "m" * 70_000
    calls = [
        servicer.CreateRollout(admin_pb2.CreateRolloutRequest(model=huge), Context()),
        servicer.CreateRollout(admin_pb2.CreateRolloutRequest(model="m", selector=huge), Context()),
        servicer.CreateRollout(
            admin_pb2.CreateRolloutRequest(model="m", waves=[0.5] * 1000), Context()
        ),
        servicer.ExplainDevice(
            admin_pb2.ExplainDeviceRequest(device_id="dev-0123456789ab", model=huge), Context()
        ),
        servicer.ControlRollout(
            admin_pb2.ControlRolloutRequest(rollout_id="ro-1", action=huge), Context()
        ),
    ]
    for call in calls:
        with pytest.raises(Abort) as info:
            asyncio.run(call)  # type: ignore[arg-type]
        code, details = info.value.args
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200


def test_long_device_ids_are_not_echoed(redis_url: str) -> None:
    async def body(r: Registry, store: FleetStore) -> None:
        with pytest.raises(InvalidArgument) as info:
            await r.get_device("dev-" + "a" * 70_000)
        assert len(str(info.value)) < 200
        with pytest.raises(NotFound):
            await r.get_device("dev-0123456789ab")

    run(redis_url, body)


# --- 5. authentication failures are counted -------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    """Just enough of a grpc.aio.ServicerContext for a servicer method."""

    def __init__(self, secret: str) -> None:
        self._metadata = (("authorization", f"Bearer {secret}"),)
        self.status: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, Any]:
        return {}

    def code(self) -> grpc.StatusCode | None:
        return self.status

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.status = code
        raise Aborted(details)


def test_auth_failures_are_counted_by_reason(redis_url: str) -> None:
    metrics = CoordinatorMetrics()

    def count(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "edgefleet_auth_failures_total", {"reason": reason}
        )
        assert value is not None  # every reason is exported from the start
        return value

    async def body(r: Registry, store: FleetStore) -> None:
        servicer = DeviceServicer(r, metrics)
        request = device_pb2.RegisterRequest(
            instance_key="instance-key-0001",
            name="pi",
            profile=profile_to_proto(get_profile("rpi4")),
        )
        with pytest.raises(Aborted):
            await servicer.Register(request, FakeContext("wrong"))  # type: ignore[arg-type]
        reply = await servicer.Register(request, FakeContext(TOKEN))  # type: ignore[arg-type]
        beat = device_pb2.HeartbeatRequest(
            device_id=reply.device_id, state=device_pb2.AGENT_STATE_READY
        )
        with pytest.raises(Aborted):
            await servicer.Heartbeat(beat, FakeContext("not-the-credential"))  # type: ignore[arg-type]
        await r.revoke_device(reply.device_id)
        with pytest.raises(Aborted):
            await servicer.Heartbeat(beat, FakeContext(reply.credential))  # type: ignore[arg-type]
        context = FakeContext(TOKEN)
        with pytest.raises(Aborted):
            await servicer.Register(request, context)  # type: ignore[arg-type]
        assert context.status == grpc.StatusCode.PERMISSION_DENIED

    run(redis_url, body)
    assert count("enroll_token") == 1
    assert count("credential") == 1
    assert count("revoked") == 2
    assert count("admin_token") == 0


def test_a_refused_download_is_an_auth_failure_too(redis_url: str, tmp_path: Path) -> None:
    metrics = CoordinatorMetrics()

    async def body(r: Registry, store: FleetStore) -> None:
        e = await r.register(TOKEN, reg())
        variants = VariantStore(tmp_path)
        servicer = ArtifactServicer(r, variants, StreamSlots(2, 8), metrics=metrics)
        request = artifact_pb2.DownloadArtifactRequest(device_id=e.device_id, variant_id="0" * 64)
        with pytest.raises(Aborted):
            async for _ in servicer.DownloadArtifact(request, FakeContext("wrong")):  # type: ignore[arg-type]
                pass

    run(redis_url, body)
    assert (
        metrics.registry.get_sample_value("edgefleet_auth_failures_total", {"reason": "credential"})
        == 1
    )

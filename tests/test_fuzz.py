"""Property-based inputs at every RPC of a real coordinator (seeded, bounded budgets).

Whatever arrives — wrong types coerced into fields, unicode junk, huge numbers,
negative sizes, replayed sequence numbers, random bytes as a whole message — the
coordinator answers with a deliberate status code (never INTERNAL/UNKNOWN), stays
up, and Redis stays consistent. Part of issue 9's input hardening; issue 14 added
the input classes an audit found holes with: certificate signing requests that
are not PEM, off the curve, on another curve or badly signed (a refusal stores
nothing and spends no token use); integers up to 2**64 (nothing above 2**53 is
stored, so every listing still encodes); repeated fields of 100k entries (capped);
NaN and infinity in every float field (refused; no listing ever shows one).

Every property runs twice: a small budget in every run, a large one under
``-m slow``. Both are seeded (``EDGEFLEET_FUZZ_SEED``, default 14), so a failure
reproduces with the same seed; change it to explore further.
"""

from __future__ import annotations

import base64
import math
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.tokens import sha256_hex
from edgefleet.limits import (
    MAX_ACCELERATORS,
    MAX_PRECISIONS,
    MAX_RUNTIMES,
    MAX_SAFE_INT,
    MAX_UPTIME_SECONDS,
)
from edgefleet.pki import make_csr, new_key
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.wire import profile_to_proto
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, CoordinatorProc, free_port, health_status

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SEED = int(os.environ.get("EDGEFLEET_FUZZ_SEED", "14"))
SMALL_BUDGET, LARGE_BUDGET = 60, 1500
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
text = st.text(max_size=80)
big = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# gRPC clients refuse non-ASCII header values before sending, so secrets stay printable ASCII
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
# unsigned integers, weighted to the edges where storage breaks: 2**53 (Lua), 2**63, 2**64
EDGES = [0, 1, MAX_SAFE_INT - 1, MAX_SAFE_INT, MAX_SAFE_INT + 1, 2**63 - 1, 2**63, 2**64 - 1]
u64 = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1))
# floats, weighted to the values no JSON or Lua consumer survives
odd_floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
# lengths of repeated fields: around each cap, and far beyond it (the 110k of the audit)
HUGE = 110_000


def lengths(cap: int) -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, cap - 1, cap, cap + 1, 10 * cap, HUGE])


def fuzz(
    check: Callable[..., None], **strategies: st.SearchStrategy[Any]
) -> tuple[Callable[..., None], Callable[..., None]]:
    """The property ``check`` as two seeded tests: a small budget, and a large one (slow)."""

    def build(examples: int) -> Callable[..., None]:
        budget = settings(max_examples=examples, deadline=None, suppress_health_check=_HEALTH)
        test: Callable[..., None] = seed(SEED)(budget(given(**strategies)(check)))
        return test

    return build(SMALL_BUDGET), pytest.mark.slow(build(LARGE_BUDGET))


@pytest.fixture(scope="module")
def served(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    url = redis_server.rsplit("/", 1)[0] + "/2"
    redis.Redis.from_url(url).flushdb()
    data_dir = Path(tmp_path_factory.mktemp("fuzz")) / "coord"
    c = CoordinatorProc(data_dir, free_port(), ["--redis-url", url]).start()
    yield c.address, url
    c.stop()


@pytest.fixture(scope="module")
def served_tls(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[grpc.Channel, str, str]]:
    """A TLS coordinator (it signs CSRs), a channel to it, its Redis, and a limited-use token."""
    url = redis_server.rsplit("/", 1)[0] + "/3"
    redis.Redis.from_url(url).flushdb()
    data_dir = Path(tmp_path_factory.mktemp("fuzz-tls")) / "coord"
    c = CoordinatorProc(data_dir, free_port(), ["--redis-url", url, "--tls"]).start()
    ca = (data_dir / "tls" / "ca.pem").read_bytes()
    with AdminClient(c.address, ADMIN_TOKEN, ca_cert=ca) as admin:
        token = admin.create_enrollment_token(uses=1_000_000, ttl_seconds=3600).token
    channel = grpc.secure_channel(c.address, grpc.ssl_channel_credentials(ca))
    yield channel, url, token
    channel.close()
    c.stop()


@pytest.fixture(scope="module")
def device(served: tuple[str, str]) -> tuple[str, str]:
    """One enrolled device of the plaintext coordinator: (id, credential)."""
    with grpc.insecure_channel(served[0]) as ch:
        reply = device_pb2_grpc.DeviceServiceStub(ch).Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="fuzz-target",
                profile=profile_to_proto(get_profile("rpi4")),
            ),
            metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
            timeout=10,
        )
    return reply.device_id, reply.credential


def call_code(fn: object, request: object, secret: str) -> grpc.StatusCode:
    assert callable(fn)
    try:
        fn(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def call_details(fn: object, request: object, secret: str) -> tuple[grpc.StatusCode, str]:
    assert callable(fn)
    try:
        fn(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def admin_stub(address: str) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def assert_device_readable(address: str, device_id: str) -> admin_pb2.Device:
    """GetDevice answers, and nothing in the record is out of range or not finite."""
    channel, stub = admin_stub(address)
    with channel:
        reply = stub.GetDevice(
            admin_pb2.GetDeviceRequest(device_id=device_id),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=10,
        )
    d: admin_pb2.Device = reply.device
    assert math.isfinite(d.uptime_seconds) and math.isfinite(d.benchmark.macs_per_second)
    assert all(math.isfinite(v) for v in d.latest_metrics.values())
    assert d.telemetry_sequence <= MAX_SAFE_INT
    return d


# --- Register: profiles, labels, repeated fields, floats --------------------------------


def check_register(
    served: tuple[str, str],
    name: str,
    instance_key: str,
    arch: str,
    cores: int,
    mhz: int,
    ram: int,
    storage: int,
    precisions: list[str],
    runtimes: list[str],
    device_class: int,
    labels: dict[str, str],
    mps: float,
) -> None:
    address, _ = served
    profile = profile_to_proto(get_profile("rpi4"))
    profile.arch = arch
    profile.cpu_cores = max(-(2**31), min(2**31 - 1, cores))
    profile.cpu_mhz = max(-(2**31), min(2**31 - 1, mhz))
    profile.ram_bytes, profile.storage_bytes = ram, storage
    del profile.precisions[:]
    profile.precisions.extend(precisions)
    del profile.runtimes[:]
    profile.runtimes.extend(runtimes)
    profile.device_class = device_class  # type: ignore[assignment]
    request = device_pb2.RegisterRequest(
        instance_key=instance_key,
        name=name,
        profile=profile,
        labels=labels,
        benchmark=device_pb2.DeviceBenchmark(macs_per_second=mps),
    )
    with grpc.insecure_channel(address) as ch:
        code = call_code(device_pb2_grpc.DeviceServiceStub(ch).Register, request, ENROLL_TOKEN)
    assert code in ALLOWED
    if not math.isfinite(mps):
        assert code == grpc.StatusCode.INVALID_ARGUMENT


test_register_never_fails_unexpectedly, test_register_never_fails_unexpectedly_large = fuzz(
    check_register,
    name=text,
    instance_key=text,
    arch=text,
    cores=big,
    mhz=big,
    ram=big,
    storage=big,
    precisions=st.lists(st.sampled_from(["fp32", "fp16", "int8", "bf16", "", "ïnt8"]), max_size=4),
    runtimes=st.lists(st.sampled_from(["torch", "onnxruntime", "mcu-sim", "tflite"]), max_size=3),
    device_class=st.integers(min_value=-3, max_value=9),
    labels=st.dictionaries(text, text, max_size=4),
    mps=odd_floats,
)


def check_repeated_fields(
    served: tuple[str, str],
    n_accelerators: int,
    accelerator_chars: int,
    n_precisions: int,
    n_runtimes: int,
    n_labels: int,
) -> None:
    """Lists far beyond their caps are refused: a stored device never carries more."""
    address, _ = served
    # at most ~8 MiB of accelerator names: past gRPC's 4 MiB limit, but never 110k x 70 KB in RAM
    n_accelerators = min(n_accelerators, 8 * 1024 * 1024 // accelerator_chars)
    profile = profile_to_proto(get_profile("rpi4"))
    profile.accelerators.extend(["a" * accelerator_chars] * n_accelerators)
    del profile.precisions[:]
    profile.precisions.extend(["int8"] * n_precisions)
    del profile.runtimes[:]
    profile.runtimes.extend(["torch"] * n_runtimes)
    request = device_pb2.RegisterRequest(
        instance_key=uuid.uuid4().hex,
        name="lists",
        profile=profile,
        labels={f"k{i}": "v" for i in range(n_labels)},
    )
    with grpc.insecure_channel(address) as ch:
        code, details = call_details(
            device_pb2_grpc.DeviceServiceStub(ch).Register, request, ENROLL_TOKEN
        )
    if request.ByteSize() > MAX_MESSAGE_BYTES:  # gRPC's own limit answers first
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        return
    assert code in ALLOWED and len(details) < 300
    within = (
        n_accelerators <= MAX_ACCELERATORS
        and (accelerator_chars <= 64 or n_accelerators == 0)
        and 1 <= n_precisions <= MAX_PRECISIONS
        and n_runtimes <= MAX_RUNTIMES
        and n_labels <= 32
    )
    assert (code == grpc.StatusCode.OK) == within, (code, details)


test_huge_repeated_fields_are_capped, test_huge_repeated_fields_are_capped_large = fuzz(
    check_repeated_fields,
    n_accelerators=lengths(MAX_ACCELERATORS),
    accelerator_chars=st.sampled_from([1, 64, 65, 70_000]),  # with many: over 4 MiB
    n_precisions=lengths(MAX_PRECISIONS),
    n_runtimes=lengths(MAX_RUNTIMES),
    n_labels=st.sampled_from([0, 32, 33, 5000]),
)


# --- Register over TLS: certificate signing requests --------------------------------------

P256_OID = bytes.fromhex("06082a8648ce3d030107")
OTHER_CURVE_OIDS = [
    bytes.fromhex("06082a8648ce3d030109"),  # no such curve
    bytes.fromhex("06082a8648ce3d030101"),  # prime192v1: real, not P-256
    bytes.fromhex("06082a8648ce3d030100"),
]
# keys made once (RSA generation is slow): the CSR bases a mutation starts from
CSR_KEYS: dict[str, Any] = {
    "p256": new_key(),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "k1": ec.generate_private_key(ec.SECP256K1()),
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=1024),
}


def _csr_der(key: Any) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fuzz")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


CSR_DER = {name: _csr_der(key) for name, key in CSR_KEYS.items()}


def _armor(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + lines + b"\n-----END CERTIFICATE REQUEST-----\n"
    )


@st.composite
def csr_cases(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(CSR bytes, whether a correct coordinator signs it): structure-aware mutations."""
    base = draw(st.sampled_from(sorted(CSR_DER)))
    der = CSR_DER[base]
    kind = draw(
        st.sampled_from(
            [
                "none",
                "flip",
                "truncate",
                "curve",
                "point",
                "version",
                "junk-pem",
                "not-pem",
                "oversize",
                "empty",
            ]
        )
    )
    if kind == "none":
        return _armor(der), base == "p256"
    if kind == "flip":
        i = draw(st.integers(0, len(der) - 1))
        bit = 1 << draw(st.integers(0, 7))
        return _armor(der[:i] + bytes([der[i] ^ bit]) + der[i + 1 :]), False
    if kind == "truncate":
        return _armor(der[: draw(st.integers(0, len(der) - 1))]), False
    if kind == "curve" and P256_OID in der:
        return _armor(der.replace(P256_OID, draw(st.sampled_from(OTHER_CURVE_OIDS)))), False
    if kind == "point" and b"\x03\x42\x00\x04" in der:
        at = der.index(b"\x03\x42\x00\x04") + 4 + draw(st.integers(0, 63))
        return _armor(der[:at] + bytes([der[at] ^ 1]) + der[at + 1 :]), False
    if kind == "version":  # CertificationRequestInfo.version: only 0 (v1) exists
        version = bytes([draw(st.integers(1, 255))])
        return _armor(der.replace(b"\x02\x01\x00", b"\x02\x01" + version, 1)), False
    if kind == "junk-pem":
        return _armor(draw(st.binary(min_size=1, max_size=600))), False
    if kind == "oversize":
        return _armor(der) + b"#" * 9000, False
    if kind == "empty":
        return b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n", False
    return draw(st.binary(min_size=1, max_size=600)), False


def check_csr(served_tls: tuple[grpc.Channel, str, str], case: tuple[bytes, bool]) -> None:
    """A CSR is signed or refused with INVALID_ARGUMENT; a refusal stores no device and
    spends no use of the enrollment token (the audit found both before the fix)."""
    channel, url, token = served_tls
    csr, signable = case
    client = redis.Redis.from_url(url, decode_responses=True)
    token_key = f"{{edgefleet}}:enroll-token:{sha256_hex(token)}"
    uses_before = int(client.hget(token_key, "uses") or 0)
    devices_before = client.zcard("{edgefleet}:devices:last_seen")
    instance_key = uuid.uuid4().hex
    request = device_pb2.RegisterRequest(
        instance_key=instance_key,
        name="csr",
        profile=profile_to_proto(get_profile("rpi4")),
        csr_pem=csr,
    )
    code, details = call_details(
        device_pb2_grpc.DeviceServiceStub(channel).Register, request, token
    )
    if signable:
        assert code == grpc.StatusCode.OK, details
        assert int(client.hget(token_key, "uses") or 0) == uses_before - 1
        return
    # a mutation may leave a CSR that still verifies (a bit flipped in an unsigned
    # part); any other answer must be a clean refusal that changed nothing
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith("csr_pem:") and len(details) < 300
        assert client.get(f"{{edgefleet}}:enrollment:{instance_key}") is None
        assert client.zcard("{edgefleet}:devices:last_seen") == devices_before
        assert int(client.hget(token_key, "uses") or 0) == uses_before


test_bad_csrs_store_nothing_and_spend_nothing, test_bad_csrs_large = fuzz(
    check_csr, case=csr_cases()
)


def test_a_valid_csr_is_signed(served_tls: tuple[grpc.Channel, str, str]) -> None:
    """The fuzzer's baseline: an unmutated P-256 CSR from the agent's own helper passes."""
    channel, _, token = served_tls
    request = device_pb2.RegisterRequest(
        instance_key=uuid.uuid4().hex,
        name="ok",
        profile=profile_to_proto(get_profile("rpi4")),
        csr_pem=make_csr(new_key(), "ok"),
    )
    reply = device_pb2_grpc.DeviceServiceStub(channel).Register(
        request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
    )
    assert reply.certificate_pem


# --- Heartbeat: huge integers and NaN ---------------------------------------------------


def check_heartbeat(
    served: tuple[str, str],
    device_id: str,
    state: int,
    seq: int,
    uptime: float,
    variant: str,
    secret: str,
) -> None:
    address, _ = served
    request = device_pb2.HeartbeatRequest(
        device_id=device_id,
        state=state,  # type: ignore[arg-type]
        sequence=seq,
        uptime_seconds=uptime,
        active_variant=variant,
    )
    with grpc.insecure_channel(address) as ch:
        code = call_code(device_pb2_grpc.DeviceServiceStub(ch).Heartbeat, request, secret)
    assert code in ALLOWED


test_heartbeat_never_fails_unexpectedly, test_heartbeat_never_fails_unexpectedly_large = fuzz(
    check_heartbeat,
    device_id=text,
    state=st.integers(min_value=-2, max_value=9),
    seq=u64,
    uptime=odd_floats,
    variant=text,
    secret=header_text,
)


def check_heartbeat_numbers(
    served: tuple[str, str], device: tuple[str, str], seq: int, uptime: float
) -> None:
    """From the device itself (right credential): only storable numbers are accepted, and the
    record stays readable whatever was sent."""
    address, _ = served
    device_id, credential = device
    request = device_pb2.HeartbeatRequest(
        device_id=device_id,
        state=device_pb2.AGENT_STATE_READY,
        sequence=seq,
        uptime_seconds=uptime,
    )
    with grpc.insecure_channel(address) as ch:
        code = call_code(device_pb2_grpc.DeviceServiceStub(ch).Heartbeat, request, credential)
    storable = seq <= MAX_SAFE_INT and math.isfinite(uptime) and 0 <= uptime <= MAX_UPTIME_SECONDS
    assert code == (grpc.StatusCode.OK if storable else grpc.StatusCode.INVALID_ARGUMENT)
    assert_device_readable(address, device_id)


test_heartbeat_numbers_are_bounded, test_heartbeat_numbers_are_bounded_large = fuzz(
    check_heartbeat_numbers, seq=u64, uptime=odd_floats
)


# --- Telemetry: replays, huge sequences, NaN, oversized batches ------------------------------


def check_telemetry(
    served: tuple[str, str], seqs: list[int], names: list[str], values: list[float]
) -> None:
    address, url = served
    with grpc.insecure_channel(address) as ch:
        stub = device_pb2_grpc.DeviceServiceStub(ch)
        reg = stub.Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="fuzz",
                profile=profile_to_proto(get_profile("rpi4")),
            ),
            metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
            timeout=10,
        )
        records = [
            device_pb2.TelemetryRecord(
                sequence=s,
                time_unix=1.0,
                metric=device_pb2.Metric(name=names[i % len(names)], value=values[i % len(values)]),
            )
            for i, s in enumerate(seqs)
        ]
        request = device_pb2.ReportTelemetryRequest(device_id=reg.device_id, records=records)
        first = call_code(stub.ReportTelemetry, request, reg.credential)
        replay = call_code(stub.ReportTelemetry, request, reg.credential)  # the same batch again
        assert first in ALLOWED and replay == first
    record = redis.Redis.from_url(url, decode_responses=True).hgetall(
        f"{{edgefleet}}:device:{reg.device_id}"
    )
    counted = int(record.get("telemetry_records") or 0)
    if first == grpc.StatusCode.OK:
        assert counted == len(seqs)  # a replay added nothing
        assert all(s <= MAX_SAFE_INT for s in seqs)
        assert all(math.isfinite(values[i % len(values)]) for i in range(len(seqs)))
    else:
        assert counted == 0  # a refused batch applied nothing
    assert_device_readable(address, reg.device_id)


test_telemetry_replays_and_junk_never_double_count, test_telemetry_large = fuzz(
    check_telemetry,
    seqs=st.one_of(
        st.lists(u64, max_size=20),
        st.sampled_from([list(range(1, 502)), list(range(1, 5001))]),  # batches over the cap
    ),
    names=st.lists(text, min_size=1, max_size=3),
    values=st.lists(odd_floats, min_size=1, max_size=3),
)


# --- Admin calls: NaN in rollout and policy numbers, huge ids -----------------------------------


def check_admin_numbers(
    served: tuple[str, str],
    gate_value: float,
    gate_field: str,
    canary: float,
    tolerance: float,
    rollout_id: str,
) -> None:
    address, _ = served
    channel, stub = admin_stub(address)
    with channel:
        gate = admin_pb2.RolloutGate()
        setattr(gate, gate_field, gate_value)
        create = admin_pb2.CreateRolloutRequest(
            model="no-such-model", selector="all", canary_fraction=canary, gate=gate
        )
        code, details = call_details(stub.CreateRollout, create, ADMIN_TOKEN)
        assert code in ALLOWED and len(details) < 300
        if not (math.isfinite(gate_value) and math.isfinite(canary)):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        explain = admin_pb2.ExplainDeviceRequest(
            device_id="dev-0123456789ab", model="m", accuracy_tolerance=tolerance
        )
        code, details = call_details(stub.ExplainDevice, explain, ADMIN_TOKEN)
        assert code in ALLOWED and len(details) < 300
        if not math.isfinite(tolerance):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        get = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        code, details = call_details(stub.GetRollout, get, ADMIN_TOKEN)
        assert code in ALLOWED and len(details) < 300  # a 70 KB id is never echoed
        named = admin_pb2.CreateRolloutRequest(model=rollout_id or "m", selector=rollout_id)
        code, details = call_details(stub.CreateRollout, named, ADMIN_TOKEN)
        assert code in ALLOWED and len(details) < 300  # nor a 70 KB model or selector


test_admin_numbers_and_ids_are_bounded, test_admin_numbers_and_ids_large = fuzz(
    check_admin_numbers,
    gate_value=odd_floats,
    gate_field=st.sampled_from(
        ["soak_seconds", "max_error_rate", "max_latency_ratio", "min_accuracy"]
    ),
    canary=odd_floats,
    tolerance=odd_floats,
    rollout_id=st.one_of(text, st.sampled_from(["r" * 70_000, "ro-" + "0" * 10])),
)


# --- Whole messages of random bytes ---------------------------------------------------------


def check_random_bytes(served: tuple[str, str], data: bytes) -> None:
    address, _ = served
    with grpc.insecure_channel(address) as ch:
        raw = ch.unary_unary(
            "/edgefleet.v1.AdminService/GetDevice",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            raw(data, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),), timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
    # undecodable bytes: INVALID_ARGUMENT; decodable ones reach our validation
    assert code in ALLOWED


test_random_bytes_as_a_message_are_refused_cleanly, test_random_bytes_large = fuzz(
    check_random_bytes, data=st.binary(max_size=512)
)


def check_random_download_bytes(served: tuple[str, str], data: bytes) -> None:
    """A server-streaming RPC goes through the same validation layer as the unary ones:
    undecodable bytes are INVALID_ARGUMENT there too, never UNKNOWN (issue 14)."""
    address, _ = served
    with grpc.insecure_channel(address) as ch:
        raw = ch.unary_stream(
            "/edgefleet.v1.ArtifactService/DownloadArtifact",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            list(raw(data, metadata=(("authorization", "Bearer x"),), timeout=10))
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
    assert code in ALLOWED


test_random_bytes_as_a_download_request_are_refused_cleanly, test_random_download_large = fuzz(
    check_random_download_bytes, data=st.binary(max_size=512)
)


def test_coordinator_still_serving_after_the_fuzzing(served: tuple[str, str]) -> None:
    """Last in the module: still healthy, and every page of the fleet listing encodes
    (no out-of-range integer, no NaN, under the message limit)."""
    address, url = served
    assert health_status(address) == 1
    channel, stub = admin_stub(address)
    seen: list[admin_pb2.Device] = []
    token = ""
    with channel:
        while True:
            page = stub.ListDevices(
                admin_pb2.ListDevicesRequest(page_token=token),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
                timeout=10,
            )
            seen += page.devices
            if not page.next_page_token:
                break
            token = page.next_page_token
    assert all(d.id.startswith("dev-") for d in seen)
    assert all(math.isfinite(d.uptime_seconds) for d in seen)
    assert len(seen) == redis.Redis.from_url(url).zcard("{edgefleet}:devices:last_seen")

"""Property-based inputs at every RPC of a real coordinator (bounded examples).

Whatever arrives — wrong types coerced into fields, unicode junk, huge numbers,
negative sizes, replayed sequence numbers, random bytes as a whole message — the
coordinator answers with a deliberate status code (never INTERNAL/UNKNOWN), stays
up, and Redis stays consistent. Part of issue 9's input hardening.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.catalog import get_profile
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
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
text = st.text(max_size=80)
big = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# gRPC clients refuse non-ASCII header values before sending, so secrets stay printable ASCII
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


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


def call_code(fn: object, request: object, secret: str) -> grpc.StatusCode:
    assert callable(fn)
    try:
        fn(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@FUZZ
@given(
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
    mps=st.floats(allow_nan=True, allow_infinity=True),
)
def test_register_never_fails_unexpectedly(
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


@FUZZ
@given(
    device_id=text,
    state=st.integers(min_value=-2, max_value=9),
    seq=st.integers(0, 2**64 - 1),
    uptime=st.floats(allow_nan=True),
    variant=text,
    secret=header_text,
)
def test_heartbeat_never_fails_unexpectedly(
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
        state=state,
        sequence=seq,  # type: ignore[arg-type]
        uptime_seconds=uptime,
        active_variant=variant,
    )
    with grpc.insecure_channel(address) as ch:
        code = call_code(device_pb2_grpc.DeviceServiceStub(ch).Heartbeat, request, secret)
    assert code in ALLOWED


@FUZZ
@given(
    seqs=st.lists(st.integers(0, 2**53), max_size=20),
    names=st.lists(text, min_size=1, max_size=3),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3),
)
def test_telemetry_replays_and_junk_never_double_count(
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
        f"edgefleet:device:{reg.device_id}"
    )
    counted = int(record.get("telemetry_records") or 0)
    if first == grpc.StatusCode.OK:
        assert counted == len(seqs)  # a replay added nothing
    else:
        assert counted == 0  # a refused batch applied nothing


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_a_message_are_refused_cleanly(
    served: tuple[str, str], data: bytes
) -> None:
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


def test_coordinator_still_serving_after_the_fuzzing(served: tuple[str, str]) -> None:
    address, _ = served
    assert health_status(address) == 1
    with grpc.insecure_channel(address) as ch:
        listed = admin_pb2_grpc.AdminServiceStub(ch).ListDevices(
            admin_pb2.ListDevicesRequest(),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=10,
        )
    assert all(d.id.startswith("dev-") for d in listed.devices)

"""The wire API of a real coordinator process: status codes, health and reflection.

One coordinator (real process, real redis-server) serves every test here; each
test uses its own devices.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.wire import profile_to_proto
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, CoordinatorProc, free_port, health_status


@pytest.fixture(scope="module")
def coordinator(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = redis_server.rsplit("/", 1)[0] + "/1"  # a database of its own: other tests flush db 0
    redis.Redis.from_url(url).flushdb()
    data_dir = Path(tmp_path_factory.mktemp("api")) / "coord"
    c = CoordinatorProc(data_dir, free_port(), ["--redis-url", url]).start()
    yield c.address
    c.stop()


@pytest.fixture(scope="module")
def channel(coordinator: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(coordinator) as ch:
        yield ch


def bearer(secret: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {secret}"),)


def register(channel: grpc.Channel, **profile_changes: object) -> device_pb2.RegisterResponse:
    profile = profile_to_proto(get_profile("rpi4"))
    for key, value in profile_changes.items():
        if isinstance(value, list):
            del getattr(profile, key)[:]
            getattr(profile, key).extend(value)
        else:
            setattr(profile, key, value)
    request = device_pb2.RegisterRequest(
        instance_key=uuid.uuid4().hex, name="api-test", profile=profile
    )
    reply: device_pb2.RegisterResponse = device_pb2_grpc.DeviceServiceStub(channel).Register(
        request, metadata=bearer(ENROLL_TOKEN), timeout=5
    )
    return reply


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def test_reflection_lists_our_services(coordinator: str) -> None:
    with grpc.insecure_channel(coordinator) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {
        "edgefleet.v1.DeviceService",
        "edgefleet.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_reflection_describes_methods(coordinator: str) -> None:
    with grpc.insecure_channel(coordinator) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        service = pool.FindServiceByName("edgefleet.v1.DeviceService")
        assert {m.name for m in service.methods} == {"Register", "Heartbeat", "ReportTelemetry"}


def test_health_reports_serving_per_service(coordinator: str) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(coordinator) == serving
    assert health_status(coordinator, "edgefleet.v1.DeviceService") == serving
    assert health_status(coordinator, "edgefleet.v1.AdminService") == serving


def test_wrong_enrollment_token_is_unauthenticated(channel: grpc.Channel) -> None:
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    request = device_pb2.RegisterRequest(
        instance_key=uuid.uuid4().hex, name="x", profile=profile_to_proto(get_profile("rpi4"))
    )
    code, _ = code_of(lambda: stub.Register(request, metadata=bearer("nope"), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: stub.Register(request, timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ram_bytes": -512}, "profile.ram_bytes"),
        ({"precisions": ["fp32", "bf17"]}, "profile.precisions"),
        ({"cpu_cores": 0}, "profile.cpu_cores"),
        ({"device_class": 0}, "profile.device_class"),
        ({"name": ""}, "profile.name"),
    ],
)
def test_impossible_profiles_are_invalid_and_name_the_field(
    channel: grpc.Channel, changes: dict[str, object], field: str
) -> None:
    code, details = code_of(lambda: register(channel, **changes))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field), details


def test_register_without_profile_is_invalid(channel: grpc.Channel) -> None:
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    request = device_pb2.RegisterRequest(instance_key=uuid.uuid4().hex, name="x")
    code, details = code_of(
        lambda: stub.Register(request, metadata=bearer(ENROLL_TOKEN), timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("profile")


def test_heartbeat_errors(channel: grpc.Channel) -> None:
    stub = device_pb2_grpc.DeviceServiceStub(channel)
    enrolled = register(channel)
    ok = stub.Heartbeat(
        device_pb2.HeartbeatRequest(
            device_id=enrolled.device_id, state=device_pb2.AGENT_STATE_READY
        ),
        metadata=bearer(enrolled.credential),
        timeout=5,
    )
    assert ok.heartbeat_interval_seconds > 0
    cases = [
        (
            enrolled.device_id,
            "forged",
            device_pb2.AGENT_STATE_READY,
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            "dev-0123456789ab",
            enrolled.credential,
            device_pb2.AGENT_STATE_READY,
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "not-an-id",
            enrolled.credential,
            device_pb2.AGENT_STATE_READY,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (enrolled.device_id, enrolled.credential, 42, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for device_id, secret, state, expected in cases:
        request = device_pb2.HeartbeatRequest(device_id=device_id, state=state)  # type: ignore[arg-type]
        code, _ = code_of(
            lambda r=request, s=secret: stub.Heartbeat(r, metadata=bearer(s), timeout=5)
        )  # type: ignore[misc]
        assert code == expected, (device_id, state)


def test_admin_calls_need_the_admin_token(channel: grpc.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.ListDevicesRequest()
    for md in ((), bearer("wrong"), bearer(ENROLL_TOKEN)):
        code, _ = code_of(lambda m=md: admin.ListDevices(request, metadata=m, timeout=5))  # type: ignore[misc]
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert admin.ListDevices(request, metadata=bearer(ADMIN_TOKEN), timeout=5) is not None


def test_admin_unknown_and_malformed_ids(channel: grpc.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    md = bearer(ADMIN_TOKEN)
    code, details = code_of(
        lambda: admin.GetDevice(
            admin_pb2.GetDeviceRequest(device_id="dev-0123456789ab"), metadata=md, timeout=5
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "dev-0123456789ab" in details
    code, _ = code_of(
        lambda: admin.RemoveDevice(
            admin_pb2.RemoveDeviceRequest(device_id="dev-0123456789ab"), metadata=md, timeout=5
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_of(
        lambda: admin.GetDevice(admin_pb2.GetDeviceRequest(device_id=""), metadata=md, timeout=5)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "device_id" in details


def test_admin_views_of_a_registered_device(channel: grpc.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    md = bearer(ADMIN_TOKEN)
    enrolled = register(channel, name="jetson-nano")
    device = admin.GetDevice(
        admin_pb2.GetDeviceRequest(device_id=enrolled.device_id), metadata=md, timeout=5
    ).device
    assert device.status == admin_pb2.DEVICE_STATUS_ONLINE
    assert device.profile.ram_bytes == get_profile("rpi4").ram_bytes
    by_profile = admin.ListDevices(
        admin_pb2.ListDevicesRequest(profile="jetson-nano"), metadata=md, timeout=5
    )
    assert [d.id for d in by_profile.devices] == [enrolled.device_id]
    summary = admin.GetFleetSummary(admin_pb2.GetFleetSummaryRequest(), metadata=md, timeout=5)
    assert summary.total >= 1 and summary.online >= 1
    admin.RemoveDevice(
        admin_pb2.RemoveDeviceRequest(device_id=enrolled.device_id), metadata=md, timeout=5
    )
    after = admin.ListDevices(
        admin_pb2.ListDevicesRequest(profile="jetson-nano"), metadata=md, timeout=5
    )
    assert list(after.devices) == []


def test_list_devices_is_paged_and_the_client_follows_every_page(
    coordinator: str, channel: grpc.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    md = bearer(ADMIN_TOKEN)
    ours = {register(channel, name="pager").device_id for _ in range(DEFAULT_PAGE_SIZE + 5)}
    first = admin.ListDevices(admin_pb2.ListDevicesRequest(), metadata=md, timeout=5)
    assert len(first.devices) == DEFAULT_PAGE_SIZE and first.next_page_token
    code, details = code_of(
        lambda: admin.ListDevices(
            admin_pb2.ListDevicesRequest(page_size=MAX_PAGE_SIZE + 1), metadata=md, timeout=5
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details
    code, details = code_of(
        lambda: admin.ListDevices(
            admin_pb2.ListDevicesRequest(page_token="x" * 70_000), metadata=md, timeout=5
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200
    # what `edgefleet devices ls` uses: every page, so the whole fleet
    with AdminClient(coordinator, ADMIN_TOKEN) as client:
        listed = client.list_devices(profile="pager")
    assert {d.id for d in listed} == ours and len(listed) == len(ours)

"""Issue 14: what hostile or broken clients can make the coordinator (and the agent) hold.

Real coordinator processes (``coordinator_factory``) with small caps and deadlines, so each
mechanism shows in a second: per-device and total caps on DownloadArtifact streams
(RESOURCE_EXHAUSTED, and another device still downloads), an unread stream cancelled after
the write deadline, a download of a variant the device is not desired to run refused
(PERMISSION_DENIED), undecodable bytes on a streaming RPC refused as INVALID_ARGUMENT
without a traceback, and variant labels of relayed metrics bounded whatever devices report.
Gathered here too: the open-file limit raised at start, the handshake timeout closing idle
raw TCP connections, and the agent's InferenceService answering INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis

from edgefleet.agent.inference_server import MAX_DIMS, InferenceServer
from edgefleet.catalog import get_profile
from edgefleet.coordinator.api.artifact_service import ArtifactServicer
from edgefleet.coordinator.errors import PermissionDenied
from edgefleet.coordinator.limits import Limits, StreamSlots, server_options
from edgefleet.coordinator.state.model import Desired, DeviceRecord
from edgefleet.v1 import (
    artifact_pb2,
    artifact_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from edgefleet.variant_store import VariantStore
from edgefleet.wire import profile_to_proto
from tests.conftest import ENROLL_TOKEN, CoordinatorProc, wait_for

# Far more than HTTP/2 flow control lets a client that never reads take in (a few MB), so
# an unread stream stays in flight on the server.
ARCHIVE_WEIGHTS = 24 * 1024 * 1024
DOWNLOAD = "/edgefleet.v1.ArtifactService/DownloadArtifact"
# A client that never reads also never grows its flow-control windows (no BDP probing), so
# how much of an unread stream the server can hand over stays well below the archive.
NO_BDP = [("grpc.http2.bdp_probe", 0)]


def _channel(coord: CoordinatorProc) -> grpc.aio.Channel:
    """A connection of its own per client, as separate devices would have."""
    return grpc.aio.insecure_channel(coord.address, options=NO_BDP)


@dataclass(frozen=True)
class Device:
    device_id: str
    credential: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credential}"),)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _variant(data_dir: Path, seed: int, size: int = ARCHIVE_WEIGHTS) -> str:
    weights = hashlib.shake_256(f"limits-{seed}".encode()).digest(size)
    return VariantStore(data_dir).put(
        {"name": f"limits-{seed}", "recipe": "test"}, {"weights.bin": weights}
    )


def _register(address: str, redis_url: str, variant: str) -> Device:
    """A registered device whose desired variant is ``variant``."""
    with grpc.insecure_channel(address) as ch:
        reply = device_pb2_grpc.DeviceServiceStub(ch).Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="limits",
                profile=profile_to_proto(get_profile("rpi4")),
            ),
            metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
            timeout=10,
        )
    with redis.Redis.from_url(redis_url) as r:
        r.hset(f"{{edgefleet}}:device:{reply.device_id}", "desired_variant", variant)
    return Device(reply.device_id, reply.credential)


def _metric(coord: CoordinatorProc, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(coord.metrics_url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _series(coord: CoordinatorProc, name: str) -> list[str]:
    text = urllib.request.urlopen(coord.metrics_url, timeout=5).read().decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.fixture
def served(
    coordinator_factory: Callable[..., CoordinatorProc], redis_url: str, tmp_path: Path
) -> Callable[..., tuple[CoordinatorProc, str]]:
    """Start a coordinator with ``args`` over a store holding one large variant."""

    def start(*args: str) -> tuple[CoordinatorProc, str]:
        data_dir = tmp_path / "coord"
        variant = _variant(data_dir, 0)
        coord = coordinator_factory("--redis-url", redis_url, *args, data_dir=data_dir)
        return coord, variant

    return start


async def _open_unread(
    ch: grpc.aio.Channel, device: Device, variant: str
) -> grpc.aio.UnaryStreamCall[Any, Any]:
    """A download that reads one chunk (so the server holds it) and then never reads again."""
    call = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
        artifact_pb2.DownloadArtifactRequest(device_id=device.device_id, variant_id=variant),
        metadata=device.metadata,
    )
    first = await call.read()
    assert isinstance(first, artifact_pb2.ArtifactChunk) and first.offset == 0
    return call


async def _download(ch: grpc.aio.Channel, device: Device, variant: str) -> int | grpc.StatusCode:
    """Bytes of a whole download, or the status code it failed with."""
    call = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
        artifact_pb2.DownloadArtifactRequest(device_id=device.device_id, variant_id=variant),
        metadata=device.metadata,
    )
    try:
        return sum([len(c.data) async for c in call])
    except grpc.aio.AioRpcError as err:
        return err.code()


async def _refusal(ch: grpc.aio.Channel, device: Device, variant: str) -> tuple[Any, str]:
    call = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
        artifact_pb2.DownloadArtifactRequest(device_id=device.device_id, variant_id=variant),
        metadata=device.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    return info.value.code(), info.value.details() or ""


# --- streams: caps, write deadline, permission --------------------------------------------


def test_stream_caps_refuse_the_greedy_device_while_others_download(
    served: Callable[..., tuple[CoordinatorProc, str]], redis_url: str
) -> None:
    coord, variant = served("--max-streams-per-device", "2", "--max-streams", "3")
    greedy, polite, late = (_register(coord.address, redis_url, variant) for _ in range(3))

    async def body() -> None:
        async with _channel(coord) as ch1, _channel(coord) as ch2, _channel(coord) as ch3:
            held = [await _open_unread(ch1, greedy, variant) for _ in range(2)]
            code, msg = await _refusal(ch1, greedy, variant)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already has 2 downloads in flight (limit 2)" in msg
            # another device is not starved by the greedy one: it downloads everything
            size = await _download(ch2, polite, variant)
            assert isinstance(size, int) and size > ARCHIVE_WEIGHTS
            held.append(await _open_unread(ch3, polite, variant))  # the third slot of three
            code, msg = await _refusal(ch3, late, variant)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 3 downloads" in msg
            for call in held:  # cancelled streams give their slots back
                call.cancel()
            deadline = time.monotonic() + 10
            while await _download(ch2, late, variant) != size:
                assert time.monotonic() < deadline, "slots were not released on cancel"
                await asyncio.sleep(0.1)

    _run(body())
    wait_for(
        lambda: (
            _metric(coord, "edgefleet_grpc_server_handled_total", code="RESOURCE_EXHAUSTED") >= 2
        ),
        10,
        "the refusals in the RPC metrics",
    )
    coord.stop()  # refused and cancelled streams are routine: nothing logged as an error
    log = coord.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_an_unread_stream_is_cancelled_after_the_write_deadline(
    served: Callable[..., tuple[CoordinatorProc, str]], redis_url: str
) -> None:
    coord, variant = served("--max-streams-per-device", "1", "--stream-write-timeout", "1")
    device = _register(coord.address, redis_url, variant)

    async def body() -> None:
        async with _channel(coord) as ch, _channel(coord) as other:
            stalled = await _open_unread(ch, device, variant)
            code, _ = await _refusal(other, device, variant)  # its one slot is taken
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    _metric(
                        coord,
                        "edgefleet_grpc_server_handled_total",
                        method="DownloadArtifact",
                        code="DEADLINE_EXCEEDED",
                    )
                    == 1
                ),
                15,
                "the unread stream to be cancelled",
            )
            # the slot is free again, and the stalled client learns why when it reads on
            assert isinstance(await _download(other, device, variant), int)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                while await stalled.read() is not grpc.aio.EOF:
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "read nothing for 1 s" in (info.value.details() or "")

    _run(body())
    coord.stop()
    log = coord.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_a_device_downloads_only_its_desired_variant(
    served: Callable[..., tuple[CoordinatorProc, str]], redis_url: str
) -> None:
    coord, desired = served()
    other = _variant(coord.data_dir, 1, size=1000)
    device = _register(coord.address, redis_url, desired)

    async def body() -> None:
        async with _channel(coord) as ch:
            code, msg = await _refusal(ch, device, other)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert f"only its desired variant ({desired[:12]})" in msg
            with redis.Redis.from_url(redis_url) as r:  # a new desired state: now it may
                r.hset(f"{{edgefleet}}:device:{device.device_id}", "desired_variant", other)
            assert isinstance(await _download(ch, device, other), int)
            code, _ = await _refusal(ch, device, desired)
            assert code == grpc.StatusCode.PERMISSION_DENIED

    _run(body())


def test_during_a_rollout_the_variant_to_roll_back_to_may_be_downloaded_too() -> None:
    """The rollout's record of the device's previous variant widens what it may fetch."""
    old, new, other = "aa" * 32, "bb" * 32, "cc" * 32
    record = DeviceRecord(
        id="dev-000000000001",
        name="d",
        profile=get_profile("rpi4"),
        instance_key="k",
        credential_sha256="",
        registered_at=0.0,
        last_seen=0.0,
        desired=Desired(variant=new, rollout="r1"),
    )
    planned = SimpleNamespace(device_id=record.id, previous=Desired(variant=old))

    class Registry:
        async def authenticate_device(self, *_: Any) -> DeviceRecord:
            return record

    class Rollouts:
        async def get(self, rollout_id: str) -> Any:
            assert rollout_id == "r1"
            return SimpleNamespace(devices=[planned])

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    servicer = ArtifactServicer(
        Registry(),  # type: ignore[arg-type]
        VariantStore(Path("/nonexistent")),
        StreamSlots(1, 1),
        Rollouts(),  # type: ignore[arg-type]
    )

    def authorize(variant: str) -> None:
        request = artifact_pb2.DownloadArtifactRequest(device_id=record.id, variant_id=variant)
        _run(servicer._authorize(request, Context()))  # type: ignore[arg-type]

    authorize(new)
    authorize(old)
    with pytest.raises(PermissionDenied, match="only its desired variant"):
        authorize(other)


# --- one validation layer for streaming RPCs too ----------------------------------------------


def test_undecodable_download_request_is_invalid_argument_without_a_traceback(
    served: Callable[..., tuple[CoordinatorProc, str]],
) -> None:
    coord, _ = served()
    with grpc.insecure_channel(coord.address) as ch:
        raw = ch.unary_stream(
            DOWNLOAD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for junk in (b"\xff", b"\x0a\x05ab", b"\xff" * 40):
            with pytest.raises(grpc.RpcError) as info:
                list(raw(junk, timeout=10))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "not a valid DownloadArtifact message" in info.value.details()  # type: ignore[attr-defined]
    # counted like any call (the count lands just after the client has its status)
    wait_for(
        lambda: (
            _metric(
                coord,
                "edgefleet_grpc_server_handled_total",
                method="DownloadArtifact",
                code="INVALID_ARGUMENT",
            )
            == 3
        ),
        10,
        "three refused downloads in the RPC metrics",
    )
    coord.stop()
    log = coord.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


# --- bounded metric labels ----------------------------------------------------------------------


def test_reported_variants_cannot_grow_the_metric_series(
    served: Callable[..., tuple[CoordinatorProc, str]], redis_url: str
) -> None:
    coord, known = served()
    device = _register(coord.address, redis_url, known)
    reports = [uuid.uuid4().hex * 2 for _ in range(150)] + ["x" * 128, "", known]
    with grpc.insecure_channel(coord.address) as ch:
        stub = device_pb2_grpc.DeviceServiceStub(ch)
        for seq, variant in enumerate(reports, start=1):
            stub.Heartbeat(
                device_pb2.HeartbeatRequest(
                    device_id=device.device_id,
                    state=device_pb2.AGENT_STATE_READY,
                    sequence=seq,
                    active_variant=variant,
                ),
                metadata=device.metadata,
                timeout=10,
            )
            stub.ReportTelemetry(
                device_pb2.ReportTelemetryRequest(
                    device_id=device.device_id,
                    records=[
                        device_pb2.TelemetryRecord(
                            sequence=seq,
                            time_unix=time.time(),
                            metric=device_pb2.Metric(name="inference_count", value=1),
                        )
                    ],
                ),
                metadata=device.metadata,
                timeout=10,
            )
    labels = {
        m.group(1)
        for line in _series(coord, "edgefleet_inference_requests_total")
        if (m := re.search(r'variant="([^"]*)"', line))
    }
    assert labels == {"unknown", "none", known[:12]}
    unknown = _metric(coord, "edgefleet_inference_requests_total", variant="unknown")
    assert unknown == 151  # every report still counted, under one label


# --- connections and descriptors ----------------------------------------------------------------


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    script = (
        "import resource\n"
        "from edgefleet.coordinator.limits import raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "before, after = raise_fd_limit()\n"
        "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(before, after, now == after, hard <= 256 or after > 256)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert out[2:] == ["True", "True"], out


def test_idle_raw_tcp_connections_are_closed_after_the_handshake_timeout() -> None:
    async def body() -> float:
        server = grpc.aio.server(options=server_options(Limits(handshake_timeout=0.5)))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.settimeout(10)
            start = time.monotonic()

            def until_closed() -> None:  # the server's SETTINGS arrive; we never answer
                while sock.recv(1024):
                    pass

            await asyncio.to_thread(until_closed)  # socket.timeout fails the test
            took = time.monotonic() - start
            sock.close()
            return took
        finally:
            await server.stop(0)

    assert _run(body()) < 10


def test_limits_refuse_nonsense_values() -> None:
    with pytest.raises(ValueError, match="max-streams-per-device must be >= 1"):
        Limits(max_streams_per_device=0)
    with pytest.raises(ValueError, match="stream-write-timeout must be > 0"):
        Limits(stream_write_timeout=0)


# --- the agent's InferenceService ---------------------------------------------------------------


class _NoModel:
    """Stands in for Serving: an 8x8 single-channel input, never reaches inference."""

    def input_shape(self) -> list[int]:
        return [1, 1, 8, 8]

    def infer(self, batch: Any, labels: Any) -> Any:
        raise AssertionError("a malformed request must not reach the runtime")


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"\xff\xff", id="undecodable"),
        pytest.param(
            inference_pb2.InferRequest(
                tensor=inference_pb2.Tensor(data=b"\0" * 4, shape=[1] * 10_000)
            ).SerializeToString(),
            id="10000-dims",
        ),
        pytest.param(
            inference_pb2.InferRequest(
                tensor=inference_pb2.Tensor(data=b"\0" * 4, shape=[1] * 65)
            ).SerializeToString(),
            id="65-dims",
        ),
        pytest.param(
            inference_pb2.InferRequest(
                values=inference_pb2.FloatList(values=[0.0], shape=[1] * (MAX_DIMS + 1))
            ).SerializeToString(),
            id="values-too-many-dims",
        ),
    ],
)
def test_inference_service_answers_invalid_argument(request_bytes: bytes) -> None:
    async def body() -> tuple[grpc.StatusCode, str]:
        server = InferenceServer(_NoModel(), 0)  # type: ignore[arg-type]
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                raw = ch.unary_unary(
                    "/edgefleet.v1.InferenceService/Infer",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await raw(request_bytes, timeout=10)
                return info.value.code(), info.value.details() or ""
        finally:
            await server.stop(0)

    code, details = _run(body())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "malformed request" in details or f"at most {MAX_DIMS}" in details


def test_inference_service_passes_decodable_requests_on_to_its_checks() -> None:
    """The validation layer lets a decodable request through to decode_input's own checks."""
    stub_cls = inference_pb2_grpc.InferenceServiceStub

    async def body() -> grpc.StatusCode:
        server = InferenceServer(_NoModel(), 0)  # type: ignore[arg-type]
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub_cls(ch).Infer(
                        inference_pb2.InferRequest(
                            values=inference_pb2.FloatList(values=[0.0] * 7)
                        ),
                        timeout=10,
                    )
                return info.value.code()
        finally:
            await server.stop(0)

    assert _run(body()) == grpc.StatusCode.INVALID_ARGUMENT

"""TLS, device identities and roles, against a real coordinator started without --insecure."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.pki import device_id_of, key_pem, make_csr, new_key
from edgefleet.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.wire import profile_to_proto
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for


def _info(coord: CoordinatorProc) -> dict[str, str]:
    return dict(json.loads((coord.data_dir / "coordinator.json").read_text()))


class TlsDevice:
    """A device that enrols over TLS with its own key, then uses mutual TLS."""

    def __init__(self, coord: CoordinatorProc, name: str = "tls-dev") -> None:
        self.ca = (coord.data_dir / "tls" / "ca.pem").read_bytes()
        self.key = new_key()
        with grpc.secure_channel(coord.address, grpc.ssl_channel_credentials(self.ca)) as ch:
            reply = device_pb2_grpc.DeviceServiceStub(ch).Register(
                device_pb2.RegisterRequest(
                    instance_key=uuid.uuid4().hex,
                    name=name,
                    profile=profile_to_proto(get_profile("rpi4")),
                    csr_pem=make_csr(self.key, name),
                ),
                metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
                timeout=10,
            )
        self.device_id, self.credential = reply.device_id, reply.credential
        self.cert, self.endpoint = reply.certificate_pem, reply.device_endpoint
        assert reply.ca_certificate_pem == self.ca

    def channel(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(self.ca, key_pem(self.key), self.cert)
        return grpc.secure_channel(self.endpoint, creds)

    def heartbeat(self, as_id: str | None = None, credential: str | None = None) -> None:
        with self.channel() as ch:
            device_pb2_grpc.DeviceServiceStub(ch).Heartbeat(
                device_pb2.HeartbeatRequest(
                    device_id=as_id or self.device_id, state=device_pb2.AGENT_STATE_READY
                ),
                metadata=(("authorization", f"Bearer {credential or self.credential}"),),
                timeout=10,
            )


def code_of(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()  # type: ignore[attr-defined, no-any-return]


def test_enrolment_issues_a_device_certificate_and_mutual_tls_works(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    info = _info(coord)
    assert info["ca_cert"] and info["device_address"] != info["address"]
    device = TlsDevice(coord)
    assert device_id_of(device.cert) == device.device_id
    assert device.endpoint == info["device_address"]
    device.heartbeat()  # mutual TLS with its own certificate: accepted
    # the plaintext port does not exist: a plaintext client cannot even talk
    with grpc.insecure_channel(coord.address) as ch:
        code = code_of(
            lambda: device_pb2_grpc.DeviceServiceStub(ch).Heartbeat(
                device_pb2.HeartbeatRequest(device_id=device.device_id), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_device_cannot_speak_for_another(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    alice, bob = TlsDevice(coord, "alice"), TlsDevice(coord, "bob")
    # alice's valid certificate, bob's id (even with bob's credential): refused
    code = code_of(lambda: alice.heartbeat(as_id=bob.device_id, credential=bob.credential))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    with alice.channel() as ch:
        stub = device_pb2_grpc.DeviceServiceStub(ch)
        request = device_pb2.ReportTelemetryRequest(device_id=bob.device_id)
        md = (("authorization", f"Bearer {bob.credential}"),)
        assert code_of(lambda: stub.ReportTelemetry(request, metadata=md, timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def test_device_calls_need_a_client_certificate(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    device = TlsDevice(coord)
    # on the main (server-auth only) endpoint, a device call without a certificate is refused
    with grpc.secure_channel(coord.address, grpc.ssl_channel_credentials(device.ca)) as ch:
        code = code_of(
            lambda: device_pb2_grpc.DeviceServiceStub(ch).Heartbeat(
                device_pb2.HeartbeatRequest(device_id=device.device_id, state=2),
                metadata=(("authorization", f"Bearer {device.credential}"),),
                timeout=5,
            )
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # registration over TLS without a CSR is refused with the field named
    with (
        grpc.secure_channel(coord.address, grpc.ssl_channel_credentials(device.ca)) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        device_pb2_grpc.DeviceServiceStub(ch).Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="x",
                profile=profile_to_proto(get_profile("rpi4")),
            ),
            metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "csr_pem" in info.value.details()  # type: ignore[attr-defined]


def test_revoked_device_is_refused_and_cannot_reenrol(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    device = TlsDevice(coord)
    ca = device.ca
    with AdminClient(coord.address, ADMIN_TOKEN, ca_cert=ca) as admin:
        admin.revoke_device(device.device_id)
        assert code_of(device.heartbeat) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(AdminClientError) as info:
            admin.revoke_device("dev-0123456789ab")
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_limited_use_enrollment_tokens_expire_when_spent(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    ca = (coord.data_dir / "tls" / "ca.pem").read_bytes()
    with AdminClient(coord.address, ADMIN_TOKEN, ca_cert=ca) as admin:
        token = admin.create_enrollment_token(uses=2, ttl_seconds=60).token

    def enrol() -> None:
        with grpc.secure_channel(coord.address, grpc.ssl_channel_credentials(ca)) as ch:
            device_pb2_grpc.DeviceServiceStub(ch).Register(
                device_pb2.RegisterRequest(
                    instance_key=uuid.uuid4().hex,
                    name="batch",
                    profile=profile_to_proto(get_profile("rpi4")),
                    csr_pem=make_csr(new_key(), "batch"),
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )

    enrol()
    enrol()
    assert code_of(enrol) == grpc.StatusCode.UNAUTHENTICATED  # used up


def test_read_only_token_reads_but_cannot_change(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory("--tls")
    ca = (coord.data_dir / "tls" / "ca.pem").read_bytes()
    readonly = (coord.data_dir / "readonly.token").read_text().strip()
    with AdminClient(coord.address, readonly, ca_cert=ca) as viewer:
        assert viewer.fleet_summary().total == 0
        with pytest.raises(AdminClientError) as info:
            viewer.create_enrollment_token(1, 60)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(AdminClientError) as info:
            viewer.remove_device("dev-0123456789ab")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_cli_needs_the_ca_or_an_explicit_insecure(
    coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    coord = coordinator_factory("--tls")
    ca = coord.data_dir / "tls" / "ca.pem"
    base = {
        "EDGEFLEET_COORDINATOR": coord.address,
        "EDGEFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.cli.main", *args],
            capture_output=True,
            text=True,
            env={**base, **env},
            timeout=60,
            cwd=tmp_path,
        )

    ok = cli("--ca-cert", str(ca), "fleet", "summary", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 0
    missing = cli("fleet", "summary")
    assert missing.returncode == 1 and "no CA certificate" in missing.stderr
    plaintext = cli("--insecure", "fleet", "summary")
    assert plaintext.returncode == 1 and "cannot reach" in plaintext.stderr
    log = coord.log.read_text()
    assert "INSECURE" not in log and "(TLS)" in log


def test_insecure_mode_is_explicit_and_logged(
    coordinator_factory: Callable[..., CoordinatorProc],
) -> None:
    coord = coordinator_factory()  # the fixtures pass --insecure
    assert "INSECURE" in coord.log.read_text()
    with grpc.insecure_channel(coord.address) as ch:
        admin_pb2_grpc.AdminServiceStub(ch).GetFleetSummary(
            admin_pb2.GetFleetSummaryRequest(),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=5,
        )


def _first_ready(admin: AdminClient) -> bool:
    """The (only) device heartbeats as READY."""
    listed = admin.list_devices()
    return bool(listed) and listed[0].reported_state == device_pb2.AGENT_STATE_READY


def test_a_real_agent_enrols_over_tls_and_heartbeats_with_mutual_tls(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    coord = coordinator_factory("--tls", "--heartbeat-interval", "0.5")
    ca = coord.data_dir / "tls" / "ca.pem"
    agent = agent_factory(
        coord.address, "rpi4", "tls-agent", "--token", ENROLL_TOKEN, "--ca-cert", str(ca)
    )
    with AdminClient(coord.address, ADMIN_TOKEN, ca_cert=ca.read_bytes()) as admin:
        wait_for(lambda: _first_ready(admin), 30, "the TLS agent to heartbeat")
        [device] = admin.list_devices()
    # the key stayed on the device; the certificate names the device id it was given
    assert (agent.state_dir / "device.key").stat().st_mode & 0o777 == 0o600
    assert device_id_of((agent.state_dir / "device.pem").read_bytes()) == device.id
    assert agent.stop() == 0
    # without a CA or --insecure the agent refuses to start talking
    bare = agent_factory(
        coord.address,
        "rpi4",
        "no-ca",
        "--token",
        ENROLL_TOKEN,
        "--ca-cert",
        str(coord.data_dir / "missing.pem"),
    )
    assert bare.proc is not None and bare.proc.wait(30) == 2
    assert "cannot read the CA certificate" in bare.log.read_text()


def test_agents_dial_the_advertised_host_and_its_name_is_in_the_certificate(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    """``--advertise-host`` is what devices are told to dial (a wildcard bind address is not
    dialable); it must also be in the server certificate, or mutual TLS would fail on it."""
    coord = coordinator_factory("--tls", "--advertise-host", "localhost")
    ca = coord.data_dir / "tls" / "ca.pem"
    agent = agent_factory(
        coord.address, "rpi4", "adv-agent", "--token", ENROLL_TOKEN, "--ca-cert", str(ca)
    )
    with AdminClient(coord.address, ADMIN_TOKEN, ca_cert=ca.read_bytes()) as admin:
        wait_for(
            lambda: _first_ready(admin), 30, "the agent to heartbeat on the advertised endpoint"
        )
    identity = json.loads((agent.state_dir / "identity.json").read_text())
    assert identity["device_endpoint"] == f"localhost:{coord.port + 1}"
    assert agent.stop() == 0

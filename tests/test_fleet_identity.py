"""One fleet identity shared by every replica (issue 18 item 4).

- ``edgefleet certs init --out DIR`` provisions one CA and one ed25519 signing key, and never
  overwrites them;
- replicas started with ``--fleet-dir`` on one Redis share it; a replica whose CA or signing
  key differs from the fleet's record in Redis refuses to start with one clear line;
- the trusted signing keys reach agents with every heartbeat reply, so a rotation works: add
  key B, a bundle signed by B verifies; rotate the fleet onto B and drop A, a bundle signed by
  A is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.artifacts import ArtifactCache, IntegrityError
from edgefleet.bundle import public_key_hex, write_bundle
from edgefleet.fleet_dir import (
    FleetIdentityError,
    TrustedKeys,
    init_fleet,
    load_identity,
    parse_trusted_keys,
)
from edgefleet.pki import CertificateAuthority
from edgefleet.v1 import device_pb2, device_pb2_grpc
from tests.conftest import CoordinatorProc, _env, free_port, wait_for
from tests.fleetkit import ScriptedDevice, tiny_onnx, variant_manifest

CLI = [sys.executable, "-m", "edgefleet.cli.main"]
OFF = ("--metrics-port", "-1", "--superlink", "off")


def start_refused(data_dir: Path, *args: str) -> str:
    """Run a replica that must refuse to start; return its stderr (asserted one clear line)."""
    proc = subprocess.run(
        [*CLI, "coordinator", "start", "--port", "0", "--data-dir", str(data_dir), *OFF, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_certs_init_provisions_one_identity_and_never_overwrites_it(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    first = subprocess.run(
        [*CLI, "certs", "init", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert first.returncode == 0, first.stderr
    for secret in ("ca.key", "signing-key.pem"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600
    assert (out / "ca.pem").is_file() and (out / "signing-key.pub").is_file()
    identity, ca_dir = load_identity(out, tmp_path / "data")
    assert ca_dir == out and identity.ca is not None
    assert f'"signing_key": "{identity.signing_public}"' in first.stdout
    before = (out / "ca.key").read_bytes(), (out / "signing-key.pem").read_bytes()

    again = subprocess.run(
        [*CLI, "certs", "init", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert again.returncode == 1
    assert again.stderr.strip().startswith("error: ") and "refusing to replace" in again.stderr
    assert "Traceback" not in again.stderr
    assert ((out / "ca.key").read_bytes(), (out / "signing-key.pem").read_bytes()) == before


def test_a_broken_fleet_dir_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FleetIdentityError, match="does not exist"):
        load_identity(tmp_path / "nowhere", tmp_path / "data")
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    (fleet / "signing-key.pem").write_bytes(b"not a key")
    with pytest.raises(FleetIdentityError, match=re.escape("signing-key.pem is unreadable")):
        load_identity(fleet, tmp_path / "data")
    (fleet / "signing-key.pem").unlink()
    with pytest.raises(FleetIdentityError, match=re.escape("no signing-key.pem")):
        load_identity(fleet, tmp_path / "data")
    other = tmp_path / "other"
    init_fleet(other)
    (other / "ca.key").unlink()  # a fleet dir never gets a CA minted into it
    with pytest.raises(FleetIdentityError, match=re.escape("no ca.key")):
        load_identity(other, tmp_path / "data")
    assert not (other / "ca.key").exists()
    with pytest.raises(
        FleetIdentityError, match=re.escape("trusted-keys:2: expected a 64-hex-digit")
    ):
        parse_trusted_keys("# comment\nabc\n", "trusted-keys")


def test_a_malformed_trusted_keys_edit_keeps_the_last_good_list(tmp_path: Path) -> None:
    identity = init_fleet(tmp_path / "fleet")
    extra = public_key_hex(Ed25519PrivateKey.generate().public_key())
    identity.trusted_path.write_text(f"{extra}  # the incoming key\n")
    trusted = TrustedKeys(identity, recheck=0.0)
    assert trusted.current() == (identity.signing_public, extra)
    identity.trusted_path.write_text("zz-not-a-key\n")
    assert trusted.current() == (identity.signing_public, extra)  # a typo changes nothing
    identity.trusted_path.unlink()
    assert trusted.current() == (identity.signing_public,)
    identity.trusted_path.write_text("zz-not-a-key\n")  # at start: refuse, one line
    with pytest.raises(FleetIdentityError, match=r"trusted-keys:1: expected"):
        TrustedKeys(identity)


def test_a_server_certificate_from_another_ca_is_reissued(tmp_path: Path) -> None:
    """A replica moved onto the fleet CA must not keep serving its old CA's certificate."""
    tls = tmp_path / "tls"
    old = CertificateAuthority.load_or_create(tmp_path / "old")
    old.server_certificate(tls, ["127.0.0.1"])
    fleet = CertificateAuthority.load_or_create(tmp_path / "fleet")
    _, cert_pem = fleet.server_certificate(tls, ["127.0.0.1"])
    assert fleet.issued(x509.load_pem_x509_certificate(cert_pem))
    assert not old.issued(x509.load_pem_x509_certificate(cert_pem))


def test_replicas_share_the_fleet_identity_and_a_foreign_one_refuses_to_start(
    coordinator_factory: Callable[..., CoordinatorProc], redis_url: str, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    common = ("--redis-url", redis_url)
    for name in ("a", "b"):  # two replicas on one identity: both serve, TLS by the fleet CA
        (tmp_path / name / "tls").mkdir(parents=True)
        (tmp_path / name / "tls" / "ca.pem").write_bytes((fleet / "ca.pem").read_bytes())
        coordinator_factory("--tls", *common, "--fleet-dir", str(fleet), data_dir=tmp_path / name)
        assert not (tmp_path / name / "tls" / "ca.key").exists()  # no CA of its own

    foreign = tmp_path / "foreign"
    init_fleet(foreign)
    line = start_refused(tmp_path / "c", *common, "--fleet-dir", str(foreign))
    assert "CA" in line and "is not the fleet's" in line

    # the fleet's CA but a signing key of its own: refused too
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    for name in ("ca.pem", "ca.key"):
        (rogue / name).write_bytes((fleet / name).read_bytes())
    _write_key(rogue / "signing-key.pem", Ed25519PrivateKey.generate())
    line = start_refused(tmp_path / "d", *common, "--fleet-dir", str(rogue))
    assert "signing key" in line and "--rotate-signing-key" in line
    # a rotation must keep trusting the key it replaces (agents still hold bundles it signed)
    line = start_refused(tmp_path / "d", *common, "--fleet-dir", str(rogue), "--rotate-signing-key")
    assert "list the fleet's current key" in line

    # the embedded default (its own data dir identity) cannot join this fleet by accident
    line = start_refused(tmp_path / "e", *common)
    assert "is not the fleet's" in line


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)


def _signed_bundle(cache: ArtifactCache, key: Ed25519PrivateKey, seed: int) -> str:
    """A real bundle signed by ``key``, placed in the agent's cache as if downloaded."""
    body = variant_manifest("m", f"fp32-{seed}", "fp32", 0.9, 1024, 4096, 1000, 0.1)
    for table in (body["runtimes"], body["metrics"]["runtimes"]):
        table.pop("torch", None)
    body["input"] = {"shape": [1, 8], "dtype": "float32"}
    files = {
        "model.onnx": tiny_onnx(seed),
        "weights.bin": hashlib.shake_256(str(seed).encode()).digest(1024),
    }
    staging = cache.variants_dir.parent / f"staging-{seed}"
    variant_id = write_bundle(staging, body, files, key)
    staging.rename(cache.variants_dir / variant_id)
    return variant_id


def _heartbeat_keys(address: str, device: ScriptedDevice) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        reply = device_pb2_grpc.DeviceServiceStub(channel).Heartbeat(
            device_pb2.HeartbeatRequest(
                device_id=device.device_id, state=device_pb2.AGENT_STATE_READY, sequence=1
            ),
            metadata=(("authorization", f"Bearer {device.credential}"),),
            timeout=5,
        )
    return list(reply.bundle_public_keys)


def test_key_rotation_reaches_agents_with_every_heartbeat(
    coordinator_factory: Callable[..., CoordinatorProc], redis_url: str, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet"
    key_a = public_key_hex(_load(init_fleet(fleet).signing_key_path).public_key())
    private_a = _load(fleet / "signing-key.pem")
    private_b = Ed25519PrivateKey.generate()
    key_b = public_key_hex(private_b.public_key())
    args = ("--redis-url", redis_url, "--fleet-dir", str(fleet))
    data = tmp_path / "coord"
    port = free_port()
    coord = coordinator_factory(*args, data_dir=data, port=port)
    device = ScriptedDevice.register(coord.address, "pi", "rpi4")
    assert _heartbeat_keys(coord.address, device) == [key_a]

    cache = ArtifactCache(tmp_path / "agent", [key_a])
    by_a = _signed_bundle(cache, private_a, 1)
    by_b = _signed_bundle(cache, private_b, 2)
    cache.load(by_a)
    with pytest.raises(IntegrityError):
        cache.load(by_b)  # B is not trusted yet

    # 1. add B: the running replica re-reads trusted-keys; the next heartbeat carries both
    (fleet / "trusted-keys").write_text(f"{key_b}\n")
    wait_for(lambda: _heartbeat_keys(coord.address, device) == [key_a, key_b], 10, "key B listed")
    cache.set_trusted_keys(_heartbeat_keys(coord.address, device))
    cache.load(by_b)  # a bundle signed by B verifies

    # 2. rotate the fleet onto B (A stays trusted): without --rotate-signing-key, refused
    coord.stop()
    _write_key(fleet / "signing-key.pem", private_b)
    (fleet / "trusted-keys").write_text(f"{key_a}  # the outgoing key\n")
    line = start_refused(tmp_path / "other", *args, "--insecure")
    assert "signing key" in line
    coord = coordinator_factory(*args, "--rotate-signing-key", data_dir=data, port=port)
    assert _heartbeat_keys(coord.address, device) == [key_b, key_a]

    # 3. drop A: agents stop trusting it with the next heartbeat
    (fleet / "trusted-keys").write_text("")
    wait_for(lambda: _heartbeat_keys(coord.address, device) == [key_b], 10, "key A dropped")
    cache.set_trusted_keys(_heartbeat_keys(coord.address, device))
    cache.load(by_b)
    with pytest.raises(IntegrityError):
        cache.load(by_a)  # a bundle signed by A is refused


def _load(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key

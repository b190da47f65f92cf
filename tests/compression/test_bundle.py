"""The bundle loader refuses anything that is not exactly what the coordinator signed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.bundle import (
    FileHashMismatch,
    FormatVersionError,
    ManifestError,
    MissingFileError,
    SignatureError,
    UnexpectedFileError,
    UntrustedKeyError,
    VariantIdMismatch,
    canonical_json,
    load_bundle,
    write_bundle,
)

KEY = Ed25519PrivateKey.generate()
FILES = {"model.onnx": b"\x08\x07graph-bytes" * 50, "weights.safetensors": bytes(range(256)) * 8}
BODY = {"architecture": {"name": "mlp"}, "recipe": [], "metrics": {"accuracy": 0.97}}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "b"
    return path, write_bundle(path, BODY, FILES, KEY)


def test_roundtrip_returns_verified_bytes(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    b = load_bundle(path, [KEY.public_key()], vid)
    assert b.variant_id == vid
    assert b.file("model.onnx") == FILES["model.onnx"]
    assert b.manifest["files"]["weights.safetensors"]["bytes"] == len(FILES["weights.safetensors"])


@pytest.mark.parametrize("name", sorted(FILES))
def test_flipped_byte_is_refused(bundle_dir: tuple[Path, str], name: str) -> None:
    path, vid = bundle_dir
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(FileHashMismatch, match="sha256"):
        load_bundle(path, [KEY.public_key()], vid)


def test_truncated_file_is_refused(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    (path / "model.onnx").write_bytes(FILES["model.onnx"][:-1])
    with pytest.raises(FileHashMismatch, match="truncated"):
        load_bundle(path, [KEY.public_key()], vid)


def test_missing_file_is_refused(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    (path / "weights.safetensors").unlink()
    with pytest.raises(MissingFileError):
        load_bundle(path, [KEY.public_key()], vid)


def test_unlisted_file_is_refused(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(UnexpectedFileError):
        load_bundle(path, [KEY.public_key()], vid)


def test_edited_manifest_fails_signature(bundle_dir: tuple[Path, str]) -> None:
    path, _ = bundle_dir
    manifest = json.loads((path / "manifest.json").read_bytes())
    manifest["metrics"]["accuracy"] = 0.99
    (path / "manifest.json").write_bytes(canonical_json(manifest))
    with pytest.raises(SignatureError, match="does not verify"):
        load_bundle(path, [KEY.public_key()])


def test_manifest_edit_changes_content_address(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    (path / "manifest.json").write_bytes((path / "manifest.json").read_bytes() + b" ")
    with pytest.raises(VariantIdMismatch):
        load_bundle(path, [KEY.public_key()], vid)


def test_bad_signature_is_refused(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    sig = json.loads((path / "signature.json").read_bytes())
    raw = bytearray.fromhex(sig["signature"])
    raw[0] ^= 0x80
    sig["signature"] = raw.hex()
    (path / "signature.json").write_bytes(canonical_json(sig))
    with pytest.raises(SignatureError):
        load_bundle(path, [KEY.public_key()], vid)


def test_untrusted_signer_is_refused(bundle_dir: tuple[Path, str]) -> None:
    path, vid = bundle_dir
    with pytest.raises(UntrustedKeyError):
        load_bundle(path, [Ed25519PrivateKey.generate().public_key()], vid)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v2"
    vid = write_bundle(path, BODY, FILES, KEY)
    manifest = json.loads((path / "manifest.json").read_bytes())
    manifest["format_version"] = 2
    raw = canonical_json(manifest)
    (path / "manifest.json").write_bytes(raw)
    sig = json.loads((path / "signature.json").read_bytes())
    sig["signature"] = KEY.sign(raw).hex()  # validly signed, but from the future
    (path / "signature.json").write_bytes(canonical_json(sig))
    with pytest.raises(FormatVersionError, match="version 2"):
        load_bundle(path, [KEY.public_key()])
    assert vid  # the original id is no longer the content address


def test_illegal_file_names_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        write_bundle(tmp_path / "x", BODY, {"../evil": b"x"}, KEY)


def test_loader_imports_nothing_heavy() -> None:
    """The agent loads bundles; it must not pull in torch or the compression stack."""
    code = (
        "import sys, edgefleet.bundle; "
        "bad = [m for m in ('torch', 'onnx', 'numpy', 'coordinator') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

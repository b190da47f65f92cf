"""Variant bundles: an immutable, content-addressed, signed directory, and its verifying loader.

A bundle is a directory holding ``manifest.json``, ``signature.json`` and the files the
manifest lists (weights, ONNX graph, MCU integer tensors...). The manifest is stored as
*canonical* JSON (sorted keys, no whitespace) so that one byte string has one meaning; its
sha256 is the bundle's content address (the variant id) and its ed25519 signature proves the
coordinator built it. Each listed file carries its own sha256 and size, so verifying the
manifest transitively verifies every byte of the bundle.

The device agent loads bundles with :func:`load_bundle`, so this module imports only the
standard library and ``cryptography``. The loader reads each file once, hashes the bytes it
read and hands back exactly those bytes: nothing on disk is trusted after the check (no
check-then-open race).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "Bundle",
    "BundleError",
    "FileHashMismatch",
    "FormatVersionError",
    "ManifestError",
    "MissingFileError",
    "SignatureError",
    "UnexpectedFileError",
    "UntrustedKeyError",
    "VariantIdMismatch",
    "canonical_json",
    "load_bundle",
    "public_key_hex",
    "write_bundle",
]

FORMAT = "edgefleet-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(Exception):
    """Base class: the bundle must not be used."""


class ManifestError(BundleError):
    """The manifest is missing, not canonical JSON, or lacks required fields."""


class FormatVersionError(BundleError):
    """The bundle was written by a format this loader does not understand."""


class VariantIdMismatch(BundleError):
    """The manifest's sha256 is not the content address the caller asked for."""


class SignatureError(BundleError):
    """The signature is missing, malformed, or does not verify."""


class UntrustedKeyError(SignatureError):
    """The bundle is signed by a key that is not in the trusted set."""


class MissingFileError(BundleError):
    """A file the manifest lists is absent (a partial download or copy)."""


class FileHashMismatch(BundleError):
    """A file's bytes differ from the manifest (tampered or truncated)."""


class UnexpectedFileError(BundleError):
    """The directory holds a file the manifest does not list (bundles are immutable)."""


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding of a JSON value that is hashed and signed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def public_key_hex(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its id, manifest, and the verified bytes of every listed file."""

    variant_id: str
    manifest: Mapping[str, Any]
    files: Mapping[str, bytes]
    path: Path
    signer: str

    def file(self, name: str) -> bytes:
        """Verified bytes of one listed file (never re-read from disk)."""
        try:
            return self.files[name]
        except KeyError:
            raise MissingFileError(f"bundle {self.variant_id[:12]} has no file {name!r}") from None


def write_bundle(
    directory: Path,
    manifest_body: Mapping[str, Any],
    files: Mapping[str, bytes],
    key: Ed25519PrivateKey,
) -> str:
    """Write and sign a bundle into ``directory`` (created; must not exist); return its id.

    ``manifest_body`` is everything but the ``format``/``files`` fields, which are filled in
    here from ``files`` so the hashes can never disagree with what was written.
    """
    for name in files:
        if not _SAFE_NAME.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ManifestError(f"illegal bundle file name {name!r}")
    manifest = dict(manifest_body)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = {
        name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in sorted(files.items())
    }
    raw = canonical_json(manifest)
    signature = {
        "algorithm": "ed25519",
        "public_key": public_key_hex(key.public_key()),
        "signature": key.sign(raw).hex(),
    }
    directory.mkdir(parents=True, exist_ok=False)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / SIGNATURE_NAME).write_bytes(canonical_json(signature))
    # The manifest goes last: a directory without one is visibly incomplete.
    (directory / MANIFEST_NAME).write_bytes(raw)
    return _sha256(raw)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{what} missing: {path}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc}") from exc


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError("manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"not an edgefleet bundle (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"bundle format version {version!r} is not supported (this loader reads "
            f"{FORMAT_VERSION})"
        )
    if canonical_json(manifest) != raw:
        raise ManifestError("manifest is not in canonical form (edited by hand?)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError("manifest lists no files")
    for name, entry in files.items():
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise ManifestError(f"illegal file name in manifest: {name!r}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _HEX64.match(entry["sha256"])
            or not isinstance(entry.get("bytes"), int)
        ):
            raise ManifestError(f"malformed file entry for {name!r}")
    return manifest


def _verify_signature(
    raw_manifest: bytes, raw_signature: bytes, trusted: Iterable[Ed25519PublicKey]
) -> str:
    try:
        sig = json.loads(raw_signature.decode("utf-8"))
        if sig["algorithm"] != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {sig['algorithm']!r}")
        signer = str(sig["public_key"]).lower()
        signature = bytes.fromhex(sig["signature"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed signature file: {exc}") from exc
    keys = {public_key_hex(k): k for k in trusted}
    key = keys.get(signer)
    if key is None:
        raise UntrustedKeyError(f"bundle signed by untrusted key {signer[:16]}...")
    try:
        key.verify(signature, raw_manifest)
    except InvalidSignature:
        raise SignatureError("signature does not verify against the manifest") from None
    return signer


def load_bundle(
    directory: Path | str,
    trusted_keys: Iterable[Ed25519PublicKey],
    expected_id: str | None = None,
) -> Bundle:
    """Verify a bundle completely and return it; raise a :class:`BundleError` otherwise.

    Checks, in order: manifest present, parseable, canonical, known format version; its
    sha256 equals ``expected_id`` (when given); the signature verifies with a trusted key;
    every listed file is present with the listed size and sha256; nothing else is present.
    """
    path = Path(directory)
    if not path.is_dir():
        raise MissingFileError(f"bundle directory not found: {path}")
    raw = _read(path / MANIFEST_NAME, "manifest")
    variant_id = _sha256(raw)
    if expected_id is not None and variant_id != expected_id:
        raise VariantIdMismatch(
            f"manifest hash {variant_id[:12]} does not match requested id {expected_id[:12]}"
        )
    raw_sig = _read(path / SIGNATURE_NAME, "signature")
    signer = _verify_signature(raw, raw_sig, trusted_keys)
    # Only now that the bytes are authenticated do we interpret them.
    manifest = _parse_manifest(raw)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = set(os.listdir(path)) - {MANIFEST_NAME, SIGNATURE_NAME}
    extra = sorted(present - set(listed))
    if extra:
        raise UnexpectedFileError(f"bundle holds unlisted files: {extra}")
    contents: dict[str, bytes] = {}
    for name, entry in listed.items():
        data = _read(path / name, f"bundle file {name!r}")
        if len(data) != entry["bytes"]:
            raise FileHashMismatch(
                f"{name}: {len(data)} bytes on disk, manifest says {entry['bytes']} (truncated?)"
            )
        if _sha256(data) != entry["sha256"]:
            raise FileHashMismatch(f"{name}: sha256 does not match the manifest (tampered?)")
        contents[name] = data
    return Bundle(variant_id, manifest, contents, path, signer)

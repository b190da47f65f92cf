"""The fleet directory: the CA and the bundle signing key every replica of a fleet shares.

Why one per fleet and not one per replica: a device enrolled by replica A holds a certificate
from A's CA and trusts bundles signed by A's key; if replica B had its own, the device could not
fail over to B (TLS fails) and a variant B serves would not verify. So the fleet is provisioned
once (``edgefleet certs init --out DIR``) and every replica loads DIR (``--fleet-dir`` or
``$EDGEFLEET_FLEET_DIR``, e.g. a mounted secret)::

    ca.pem, ca.key         the fleet CA (signs server and device certificates)
    signing-key.pem/.pub   the ed25519 key bundles are signed with
    trusted-keys           optional: more public keys (hex, one a line, # comments) agents
                           must also trust, for a rotation in progress

The embedded single-node default needs no init: with no fleet dir the data dir plays its part
(``tls/ca.*`` and ``signing-key.pem``, created on first start as before).

Rotation of the signing key, with agents learning the trusted list on every heartbeat:
(1) add the new key's hex to ``trusted-keys`` on every replica (agents now trust both);
(2) sign bundles with the new key and start the replicas with it as ``signing-key.pem`` and
``--rotate-signing-key`` (the old key stays in ``trusted-keys``); (3) drop the old key from
``trusted-keys``: bundles it signed are refused from then on.

Shared (not coordinator-only) because ``edgefleet certs init --out`` provisions it from the CLI,
which never imports the coordinator; the check against the fleet's record in Redis is the
coordinator's (``edgefleet.coordinator.fleet_identity``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.bundle import public_key_hex
from edgefleet.pki import CertificateAuthority, PkiError, write_private

__all__ = [
    "FLEET_DIR_ENV",
    "FleetIdentity",
    "FleetIdentityError",
    "TrustedKeys",
    "init_fleet",
    "load_identity",
    "parse_trusted_keys",
]

log = logging.getLogger(__name__)

FLEET_DIR_ENV = "EDGEFLEET_FLEET_DIR"
SIGNING_KEY_FILE = "signing-key.pem"
SIGNING_PUB_FILE = "signing-key.pub"
TRUSTED_KEYS_FILE = "trusted-keys"
_HEX_KEY_LENGTH = 64  # raw ed25519 public key, 32 bytes


class FleetIdentityError(RuntimeError):
    """The fleet identity is missing, malformed, or not the one this fleet's Redis records."""


@dataclass(frozen=True)
class FleetIdentity:
    """What a replica loaded: the CA (None in --insecure mode) and the signing key."""

    directory: Path
    ca: CertificateAuthority | None
    signing_key_path: Path
    signing_public: str  # hex of the raw 32 bytes

    @property
    def trusted_path(self) -> Path:
        return self.directory / TRUSTED_KEYS_FILE

    def record(self) -> dict[str, str]:
        """What the fleet's Redis stores to recognise this identity (public parts only)."""
        return {
            "ca_sha256": self.ca.fingerprint if self.ca is not None else "",
            "signing_key": self.signing_public,
        }


def _write_signing_key(directory: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(directory / SIGNING_KEY_FILE, pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / SIGNING_PUB_FILE).write_bytes(pub)
    return key


def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise FleetIdentityError(
            f"no {path.name} in {path.parent} (run `edgefleet certs init --out`)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise FleetIdentityError(f"{path} is unreadable: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetIdentityError(f"{path} is not an ed25519 private key")
    return key


def init_fleet(out: Path) -> FleetIdentity:
    """Provision a fleet: one CA and one signing key in ``out`` (refuses to overwrite either)."""
    existing = [n for n in ("ca.key", "ca.pem", SIGNING_KEY_FILE) if (out / n).exists()]
    if existing:
        raise FleetIdentityError(
            f"{out} already holds a fleet identity ({', '.join(existing)}); "
            "refusing to replace it (its agents would stop trusting the fleet)"
        )
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca = CertificateAuthority.load_or_create(out, name="edgefleet fleet CA")
    key = _write_signing_key(out)
    return FleetIdentity(out, ca, out / SIGNING_KEY_FILE, public_key_hex(key.public_key()))


def load_identity(
    fleet_dir: Path | None, data_dir: Path, *, tls: bool = True
) -> tuple[FleetIdentity, Path]:
    """The identity this replica serves, and the directory holding its CA certificate.

    ``fleet_dir``: load it, never create anything (a missing file is an error: a replica
    must not found a second fleet by accident). ``None``: the embedded single-node default,
    created in the data dir on first start.
    """
    if fleet_dir is not None:
        if not fleet_dir.is_dir():
            raise FleetIdentityError(f"fleet dir {fleet_dir} does not exist")
        key = _load_signing_key(fleet_dir / SIGNING_KEY_FILE)
        try:
            ca = CertificateAuthority.load(fleet_dir) if tls else None
        except PkiError as exc:
            raise FleetIdentityError(str(exc)) from None
        pub = public_key_hex(key.public_key())
        return FleetIdentity(fleet_dir, ca, fleet_dir / SIGNING_KEY_FILE, pub), fleet_dir
    tls_dir = data_dir / "tls"
    try:
        ca = CertificateAuthority.load_or_create(tls_dir) if tls else None
    except PkiError as exc:
        raise FleetIdentityError(str(exc)) from None
    path = data_dir / SIGNING_KEY_FILE
    key = _load_signing_key(path) if path.exists() else _write_signing_key(data_dir)
    return FleetIdentity(data_dir, ca, path, public_key_hex(key.public_key())), tls_dir


def parse_trusted_keys(text: str, source: str) -> list[str]:
    """Hex ed25519 public keys, one a line; ``#`` starts a comment. One-line error if bad."""
    keys: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if len(line) != _HEX_KEY_LENGTH or any(c not in "0123456789abcdef" for c in line):
            raise FleetIdentityError(
                f"{source}:{number}: expected a 64-hex-digit ed25519 public key, got {line[:20]!r}"
            )
        keys.append(line)
    return keys


class TrustedKeys:
    """The signing keys agents must trust: the fleet's own key first, then ``trusted-keys``.

    Re-read when the file changes (checked at most once a ``recheck`` seconds), so adding or
    dropping a key on a mounted secret reaches every agent with its next heartbeat, without
    a restart. A file that turns malformed is logged and the last good list kept: a typo
    must not make agents distrust the whole fleet.
    """

    def __init__(self, identity: FleetIdentity, recheck: float = 1.0) -> None:
        self._identity = identity
        self._recheck = recheck
        self._checked = -recheck
        self._stamp: tuple[int, int] | None = None
        self._keys: tuple[str, ...] = (identity.signing_public,)
        self._read(strict=True)

    def _read(self, strict: bool) -> None:
        path = self._identity.trusted_path
        try:
            st = path.stat()
        except FileNotFoundError:
            self._stamp, self._keys = None, (self._identity.signing_public,)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            extra = parse_trusted_keys(path.read_text(), str(path))
        except (FleetIdentityError, OSError, UnicodeDecodeError) as exc:
            if strict:
                raise FleetIdentityError(str(exc)) from None
            log.error("keeping the trusted signing keys as they were: %s", exc)
            self._stamp = stamp
            return
        keys = tuple(dict.fromkeys((self._identity.signing_public, *extra)))
        if keys != self._keys:
            log.info("trusted bundle signing keys: %s", ", ".join(k[:12] for k in keys))
        self._stamp, self._keys = stamp, keys

    def current(self) -> tuple[str, ...]:
        now = time.monotonic()
        if now - self._checked >= self._recheck:
            self._checked = now
            self._read(strict=False)
        return self._keys

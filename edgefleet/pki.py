"""The small X.509 toolkit both sides need: keys, CSRs, certificates, identities.

Why X.509 and mutual TLS: a device proves who it is with a key that never
leaves it, and the coordinator can refuse a device speaking for another id
without trusting anything the request says. The coordinator's CA signs a
certificate per device at enrollment (from a CSR; the private key stays on the
device) whose SAN URI ``edgefleet:device:<id>`` is the identity every later call
is checked against. ECDSA P-256: supported by every TLS stack gRPC uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.fsutil import atomic_write

DEVICE_URI_PREFIX = "edgefleet:device:"


class PkiError(ValueError):
    """A key, CSR or certificate is malformed or does not verify."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("expected an EC private key")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o600)


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def device_id_of(cert_pem: bytes) -> str | None:
    """The device id a certificate was issued for (its SAN URI), or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DEVICE_URI_PREFIX):
            return uri.removeprefix(DEVICE_URI_PREFIX)
    return None


MAX_CSR_BYTES = 8192


@dataclass(frozen=True)
class CheckedCsr:
    """A CSR that parsed, carries a P-256 key and verifies: safe to sign later."""

    public_key: ec.EllipticCurvePublicKey
    key_sha256: str  # of the DER SubjectPublicKeyInfo: the device key's identity


def check_csr(csr_pem: bytes) -> CheckedCsr:
    """Everything about a CSR that can fail, checked before enrolment writes anything.

    Why all of it up front: a CSR refused after the device was stored (or the
    enrollment token spent) leaves a device without a certificate and burns a
    token use. ``cryptography`` raises ``ValueError`` for an EC point off the
    curve and ``UnsupportedAlgorithm`` for an unknown curve or key type, only
    when the key is decoded; both become one-line ``PkiError``s here.
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise PkiError(f"larger than {MAX_CSR_BYTES // 1024} KiB")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except x509.InvalidVersion:
        raise PkiError("unsupported CSR version (expected version 1)") from None
    except ValueError:
        raise PkiError("not a PEM certificate signing request") from None
    try:
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise PkiError("the CSR's public key is invalid or uses an unsupported curve") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise PkiError("the CSR must carry an EC P-256 public key")
    if not signature_ok:
        raise PkiError("the CSR's signature does not verify")
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CheckedCsr(public_key, hashlib.sha256(der).hexdigest())


def new_serial() -> int:
    return x509.random_serial_number()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertificateAuthority:
    """The coordinator's CA: signs its own server certificate and every device's."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the CA certificate's DER: what the fleet records in its state."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory`` (ca.key, ca.pem); PkiError (one line) if absent or broken.

        Why separate from ``load_or_create``: a replica given a fleet directory must never
        mint a CA of its own when the mounted one is missing, or it would silently start a
        second fleet its agents cannot verify.
        """
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        for path in (key_path, cert_path):
            if not path.is_file():
                raise PkiError(f"no {path.name} in {directory} (run `edgefleet certs init --out`)")
        try:
            key = load_key(key_path.read_bytes())
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PkiError(f"the CA in {directory} is unreadable: {exc}") from None
        if cert.public_key() != key.public_key():
            raise PkiError(f"{cert_path} does not belong to {key_path}")
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "edgefleet CA") -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            return cls.load(directory)
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        sans: list[x509.GeneralName],
        server: bool,
        days: int,
        serial: int | None = None,
    ) -> x509.Certificate:
        usage = x509.oid.ExtendedKeyUsageOID
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([usage.SERVER_AUTH if server else usage.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def server_certificate(self, directory: Path, hosts: list[str]) -> tuple[bytes, bytes]:
        """(key PEM, cert PEM) for the coordinator, valid for ``hosts``; reused if it covers them."""
        key_path, cert_path = directory / "server.key", directory / "server.pem"
        wanted = {str(n.value) for n in _san_entries(hosts)}
        if key_path.exists() and cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(n.value) for n in sans}
            # reused only if this CA issued it: a replica moved onto a fleet CA (certs init)
            # must not keep serving a certificate its agents cannot verify
            if (
                wanted <= have
                and self.issued(cert)
                and cert.not_valid_after_utc > _now() + dt.timedelta(days=7)
            ):
                return key_path.read_bytes(), cert_path.read_bytes()
        key = new_key()
        cert = self._issue(
            key.public_key(), "edgefleet coordinator", _san_entries(hosts), True, 825
        )
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path.read_bytes(), cert_path.read_bytes()

    def issued(self, cert: x509.Certificate) -> bool:
        """True if this CA signed ``cert``."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def sign_device(self, csr: CheckedCsr, device_id: str, serial: int, days: int = 365) -> bytes:
        """A client certificate (PEM) for ``device_id`` from a CSR ``check_csr`` accepted.

        The serial is chosen by the caller before enrolment is stored, so the record
        and the certificate agree without a second write after the atomic one.
        """
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)
        ]
        cert = self._issue(csr.public_key, device_id, sans, False, days, serial)
        return cert.public_bytes(serialization.Encoding.PEM)

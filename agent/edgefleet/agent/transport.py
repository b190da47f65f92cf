"""How the agent reaches the coordinator: TLS with its own certificate, or plaintext.

TLS mode (the default): Register goes to the coordinator's main endpoint over
server-authenticated TLS (trusting ``--ca-cert``) with a CSR for a key created
here (mode 0600, never sent anywhere); every later call goes to the device
endpoint the coordinator names, over mutual TLS with the certificate it issued,
so no other device can speak for this one. Plaintext only with ``--insecure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from edgefleet.pki import key_pem, load_key, make_csr, new_key, write_private

KEY_FILE = "device.key"
CERT_FILE = "device.pem"
CA_FILE = "ca.pem"

# Let gRPC's own reconnection keep pace with ours; its default ceiling is 120 s,
# which would leave a device dark for minutes after a coordinator restart.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass
class Transport:
    coordinator: str
    state_dir: Path
    ca_cert: bytes | None  # None: plaintext (--insecure)

    @property
    def secure(self) -> bool:
        return self.ca_cert is not None

    def enrollment_channel(self) -> grpc.aio.Channel:
        if self.ca_cert is None:
            return grpc.aio.insecure_channel(self.coordinator, options=CHANNEL_OPTIONS)
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_cert)
        return grpc.aio.secure_channel(self.coordinator, creds, options=CHANNEL_OPTIONS)

    def csr(self, name: str) -> bytes:
        """A CSR for this device's key (created on first use); b"" in plaintext mode."""
        if self.ca_cert is None:
            return b""
        path = self.state_dir / KEY_FILE
        if path.exists():
            key = load_key(path.read_bytes())
        else:
            key = new_key()
            write_private(path, key_pem(key))
        return make_csr(key, name)

    def save_certificate(self, cert_pem: bytes, ca_pem: bytes) -> None:
        write_private(self.state_dir / CERT_FILE, cert_pem)
        if ca_pem:
            (self.state_dir / CA_FILE).write_bytes(ca_pem)

    def has_certificate(self) -> bool:
        return (self.state_dir / CERT_FILE).exists() and (self.state_dir / KEY_FILE).exists()

    def device_channel(self, endpoint: str) -> grpc.aio.Channel:
        target = endpoint or self.coordinator
        if self.ca_cert is None:
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=(self.state_dir / KEY_FILE).read_bytes(),
            certificate_chain=(self.state_dir / CERT_FILE).read_bytes(),
        )
        return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)

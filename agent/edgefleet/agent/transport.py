"""How the agent reaches the coordinator: TLS with its own certificate, or plaintext.

TLS mode (the default): Register goes to the coordinator's main endpoint over
server-authenticated TLS (trusting ``--ca-cert``) with a CSR for a key created
here (mode 0600, never sent anywhere); every later call goes to the device
endpoint the coordinator names, over mutual TLS with the certificate it issued,
so no other device can speak for this one. Plaintext only with ``--insecure``.

Several coordinators (``--coordinator A,B,C``) are all kept: Register tries them in turn, and
the session moves between the device endpoints the coordinator lists (``session.py``). Each
address is dialled on its own channel, so TLS checks each replica's certificate against the
name dialled: every replica's server certificate carries its own advertised names as SANs
(``--advertise-device``, ``--tls-host``). Why SANs and not one shared fleet name with
``grpc.ssl_target_name_override``: an override would make any certificate of the fleet CA
valid for any address (a compromised replica could then pose as a load balancer's name), and
it breaks the moment a TCP load balancer or DNS name is put in front; SANs are what those
expect. One DNS name resolving to many addresses works as one target: gRPC's resolver gets
every address and the TLS name is the DNS name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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


def split_addresses(coordinator: str) -> list[str]:
    """``A,B,C`` as its addresses (a gRPC ``ipv4:``/``ipv6:`` scheme prefix is dropped: the
    addresses are dialled one by one so that TLS checks each against its own name)."""
    addresses = []
    for item in coordinator.split(","):
        item = item.strip()
        for scheme in ("ipv4:", "ipv6:"):
            item = item.removeprefix(scheme)
        if item:
            addresses.append(item)
    return addresses or [coordinator]


def rendezvous_order(key: str, endpoints: Iterable[str]) -> tuple[str, ...]:
    """``endpoints`` in this device's failover order: highest-random-weight (rendezvous) hashing.

    Why: every device ranks the replicas by ``sha256(key | endpoint)``, so devices spread evenly
    over them, and adding or removing one replica moves only the devices that rank it first --
    no coordination, no shared state, the same answer after a restart.
    """

    def weight(endpoint: str) -> bytes:
        return hashlib.sha256(f"{key}|{endpoint}".encode()).digest()

    return tuple(sorted(dict.fromkeys(endpoints), key=weight, reverse=True))


@dataclass
class Transport:
    coordinator: str  # one address, a DNS name, or several: "A,B,C"
    state_dir: Path
    ca_cert: bytes | None  # None: plaintext (--insecure)

    @property
    def secure(self) -> bool:
        return self.ca_cert is not None

    @property
    def coordinators(self) -> list[str]:
        return split_addresses(self.coordinator)

    def enrollment_channel(self, index: int = 0) -> grpc.aio.Channel:
        """A channel to the ``index``-th coordinator address (modulo their number)."""
        addresses = self.coordinators
        target = addresses[index % len(addresses)]
        if self.ca_cert is None:
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_cert)
        return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)

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
        target = endpoint or self.coordinators[0]
        if self.ca_cert is None:
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=(self.state_dir / KEY_FILE).read_bytes(),
            certificate_chain=(self.state_dir / CERT_FILE).read_bytes(),
        )
        return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)

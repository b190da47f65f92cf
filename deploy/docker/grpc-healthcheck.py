#!/opt/venv/bin/python
"""Container health check: exit 0 when the coordinator's gRPC health service says SERVING.

Used by the coordinator image's compose healthcheck (``edgefleet-healthcheck HOST:PORT``), so
agents and Prometheus start only once the coordinator answers; the standard gRPC health service
is what load balancers probe too.

Over TLS, like everything else: the server certificate is verified against the coordinator's CA
(``EDGEFLEET_CA_CERT``, else ``$EDGEFLEET_DATA_DIR/tls/ca.pem``), so "healthy" also means the
coordinator serves a certificate valid for HOST. Plaintext only with ``EDGEFLEET_INSECURE=1``,
i.e. for a coordinator started with ``--insecure``.
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

FALSE = ("", "0", "false", "no", "off")


def channel(address: str) -> grpc.Channel:
    if os.environ.get("EDGEFLEET_INSECURE", "").strip().lower() not in FALSE:
        return grpc.insecure_channel(address)
    data_dir = Path(os.environ.get("EDGEFLEET_DATA_DIR") or "/var/lib/edgefleet/data")
    ca = Path(os.environ.get("EDGEFLEET_CA_CERT") or data_dir / "tls" / "ca.pem")
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes()))


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    try:
        ch = channel(address)
    except OSError as err:  # no CA yet: the coordinator has not created it
        print(f"{address}: no CA certificate ({err})", file=sys.stderr)
        return 1
    with ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        except grpc.RpcError as err:
            print(f"{address}: {err.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())

"""``edgefleet coordinator start`` and ``edgefleet certs init|issue|revoke``.

The one CLI module that imports the coordinator server: ``coordinator start`` runs it in this
process (the import contract in pyproject.toml names these imports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
    client,
    err_console,
    fail,
    one_line_errors,
    out,
    print_json,
)
from edgefleet.client import render
from edgefleet.coordinator.limits import Limits

coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)
certs_app = typer.Typer(
    help="TLS certificates, enrollment tokens, revocation.", no_args_is_help=True
)


# --- coordinator -------------------------------------------------------------------------


@coordinator_app.command("start")
@one_line_errors
def coordinator_start(
    port: Annotated[int, typer.Option(help="gRPC port (0 picks a free one)")] = 50051,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="EDGEFLEET_DATA_DIR", help="where state and tokens live", resolve_path=True
        ),
    ] = Path(".edgefleet"),
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEFLEET_REDIS_URL",
            help="use this Redis instead of the embedded one: redis://, rediss://, unix://; "
            "a cluster: redis+cluster://HOST:PORT,HOST:PORT,...; Sentinel: "
            "redis+sentinel://HOST:PORT,.../SERVICE or .../SERVICE/DB",
        ),
    ] = None,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            envvar="EDGEFLEET_REDIS_CLUSTER",
            help="--redis-url names a node of a Redis Cluster (same as redis+cluster://)",
        ),
    ] = False,
    offline_after: Annotated[
        float, typer.Option(help="seconds without a heartbeat before a device is offline")
    ] = 15.0,
    heartbeat_interval: Annotated[
        float, typer.Option(help="seconds between heartbeats, told to agents")
    ] = 5.0,
    metrics_port: Annotated[
        int,
        typer.Option(help="Prometheus /metrics port on --host (0 = any free port, -1 = off)"),
    ] = 9464,
    rollout_interval: Annotated[
        float, typer.Option(help="seconds between passes of the rollout controller")
    ] = 2.0,
    metrics_refresh: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="seconds between reads of the fleet gauges (devices, rollouts) from Redis",
        ),
    ] = 5.0,
    device_port: Annotated[
        int,
        typer.Option(help="mutual-TLS port for device calls (default: PORT+1; 0 = any free one)"),
    ] = -1,
    tls_host: Annotated[
        list[str] | None,
        typer.Option(help="extra DNS name or IP for the server certificate (repeat)"),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="EDGEFLEET_INSECURE",
            help="plaintext gRPC, no TLS or device certificates (development only; logged)",
        ),
    ] = False,
    superlink: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_SUPERLINK",
            help="Flower SuperLink for federated fine-tuning: 'auto' (run one if Flower is "
            "installed), 'local' (run one), 'off', or an external HOST:PORT",
        ),
    ] = "auto",
    superlink_port: Annotated[
        int, typer.Option(help="port of the local SuperLink (default: PORT+2; 0 = any free one)")
    ] = -1,
    advertise_host: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_ADVERTISE_HOST",
            help="name/IP devices dial for the device port and SuperLink (default: --host; "
            "set it when --host is a wildcard such as 0.0.0.0; added to the certificate)",
        ),
    ] = "",
    max_streams_per_device: Annotated[
        int, typer.Option(min=1, help="concurrent artifact downloads one device may hold")
    ] = Limits.max_streams_per_device,
    max_streams: Annotated[
        int, typer.Option(min=1, help="concurrent artifact downloads in total")
    ] = Limits.max_streams,
    stream_write_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="seconds a download may wait for its client to read before it is cut"
        ),
    ] = Limits.stream_write_timeout,
    fleet_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="EDGEFLEET_FLEET_DIR",
            help="the fleet identity every replica shares (CA + bundle signing key, from "
            "`edgefleet certs init --out DIR` or a mounted secret); default: DATA_DIR's own",
            resolve_path=True,
        ),
    ] = None,
    advertise_device: Annotated[
        str,
        typer.Option(
            envvar="EDGEFLEET_ADVERTISE_DEVICE",
            help="stable NAME:PORT agents dial for this replica's device endpoint (e.g. a TCP "
            "load balancer passing TLS through); added to the certificate",
        ),
    ] = "",
    rotate_signing_key: Annotated[
        bool,
        typer.Option(
            "--rotate-signing-key",
            help="make this replica's signing key the fleet's (the old one must be listed in "
            "the fleet dir's trusted-keys); without it a different key refuses to start",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Start the coordinator and serve until Ctrl-C.

    TLS by default: a CA and a server certificate are created under DATA_DIR/tls on first
    start. PORT serves enrollment (token + CSR -> device certificate), the admin API and
    health/reflection; the device port requires each device's own certificate."""
    from edgefleet.coordinator.registry import RegistrySettings
    from edgefleet.coordinator.server import Coordinator, CoordinatorConfig, run_until_signalled

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = CoordinatorConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        redis_url=cluster_url(redis_url) if redis_cluster else redis_url or None,
        settings=RegistrySettings(
            offline_after=offline_after, heartbeat_interval=heartbeat_interval
        ),
        metrics_port=metrics_port,
        rollout_interval=rollout_interval,
        metrics_refresh=metrics_refresh,
        insecure=insecure,
        device_port=device_port if device_port >= 0 else (port + 1 if port else 0),
        tls_hosts=tuple(tls_host or ()),
        superlink=resolve_superlink(superlink),
        advertise_host=advertise_host,
        superlink_port=superlink_port if superlink_port >= 0 else (port + 2 if port else 0),
        limits=Limits(
            max_streams_per_device=max_streams_per_device,
            max_streams=max_streams,
            stream_write_timeout=stream_write_timeout,
        ),
        fleet_dir=fleet_dir,
        advertise_device=advertise_device,
        rotate_signing_key=rotate_signing_key,
    )

    def ready(c: Coordinator) -> None:
        err_console.print(
            f"edgefleet coordinator listening on {c.address}"
            + (" (INSECURE: plaintext)\n" if insecure else " (TLS)\n")
            + (f"  device endpoint (mutual TLS): {c.device_address}\n" if not insecure else "")
            + (f"  CA certificate: {c.ca_cert_path}\n" if c.ca_cert_path else "")
            + f"  metrics: {f'http://{c.metrics_address}/metrics' if c.metrics_address else 'off'}\n"
            f"  Flower SuperLink: {c.superlink_address or 'off'}\n"
            f"  state: {c.redis_description}\n"
            f"  admin token: {c.tokens.admin_source}\n"
            f"  read-only token: {c.tokens.readonly_source}\n"
            f"  enrollment token: {c.tokens.enroll_source}",
            highlight=False,
        )

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run_until_signalled(config, on_ready=ready))
    # Everything is stopped and saved by now. Tearing down the loop and gRPC's C core
    # after an aio server ran can take seconds (we saw it hang once); nothing is left
    # to clean up, so leave at once with the success code.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cluster_url(url: str | None) -> str:
    """``--redis-cluster``: ``redis[s]://`` becomes ``redis[s]+cluster://`` (one line otherwise)."""
    scheme, sep, rest = (url or "").partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise fail("--redis-cluster needs --redis-url redis://HOST:PORT (or rediss://)")
    return f"{scheme.removesuffix('+cluster')}+cluster://{rest}"


def resolve_superlink(value: str) -> str:
    """``auto`` -> ``local`` when Flower's SuperLink is installed, else ``off``."""
    value = value.strip()
    if value == "auto":
        from edgefleet.fl.process import flower_bin

        try:
            flower_bin("flower-superlink")
        except FileNotFoundError:
            return "off"
        return "local"
    if value in ("local", "off"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise fail(f"--superlink must be auto, local, off or HOST:PORT, got {value!r}")
    return value


# --- certs ---------------------------------------------------------------------------------


@certs_app.command("init")
@one_line_errors
def certs_init(
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="EDGEFLEET_DATA_DIR", help="the coordinator's data dir", resolve_path=True
        ),
    ] = Path(".edgefleet"),
    host: Annotated[
        list[str] | None, typer.Option(help="names/IPs the server certificate covers (repeat)")
    ] = None,
    fleet_out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="provision a fleet identity in this new dir instead: one CA and one bundle "
            "signing key for every replica (start each with --fleet-dir DIR)",
            resolve_path=True,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the coordinator's CA and server certificate (the coordinator also does this
    on first start); prints the CA certificate path agents and the CLI must trust.
    With --out DIR: provision one fleet identity (CA + signing key) shared by all replicas."""
    from edgefleet.pki import CertificateAuthority

    if fleet_out is not None:
        _fleet_init(fleet_out, as_json)
        return
    tls = data_dir / "tls"
    ca = CertificateAuthority.load_or_create(tls)
    hosts = ["127.0.0.1", "localhost", *(host or [])]
    ca.server_certificate(tls, hosts)
    info = {"ca_cert": str(tls / "ca.pem"), "server_cert": str(tls / "server.pem"), "hosts": hosts}
    if as_json:
        print_json(info)
    else:
        out.print(
            f"CA certificate: {info['ca_cert']}\nserver certificate: {info['server_cert']} "
            f"({', '.join(hosts)})",
            highlight=False,
        )


def _fleet_init(out_dir: Path, as_json: bool) -> None:
    from edgefleet.fleet_dir import init_fleet

    identity = init_fleet(out_dir)
    info = {
        "fleet_dir": str(out_dir),
        "ca_cert": str(out_dir / "ca.pem"),
        "ca_sha256": identity.record()["ca_sha256"],
        "signing_key": identity.signing_public,
    }
    if as_json:
        print_json(info)
    else:
        out.print(
            f"fleet identity in {out_dir} (keep ca.key and signing-key.pem secret)\n"
            f"CA certificate: {info['ca_cert']} (sha256 {info['ca_sha256'][:16]}...)\n"
            f"bundle signing key: {identity.signing_public}\n"
            f"start every replica with --fleet-dir {out_dir} (or EDGEFLEET_FLEET_DIR)",
            highlight=False,
        )


@certs_app.command("issue")
@one_line_errors
def certs_issue(
    uses: Annotated[int, typer.Option(help="how many devices may enrol with it")] = 1,
    ttl: Annotated[float, typer.Option(help="seconds it stays valid")] = 3600.0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Mint a limited-use, expiring enrollment token. Each device that registers with it
    gets its own certificate signed by the coordinator's CA."""
    with client(coordinator, admin_token) as c:
        reply = c.create_enrollment_token(uses, ttl)
    data = {
        "token": reply.token,
        "uses": reply.uses,
        "expires_at": render.iso(reply.expires_at),
    }
    if as_json:
        print_json(data)
    else:
        out.print(
            f"{reply.token}\n(valid for {uses} enrolment(s) until {data['expires_at']})",
            highlight=False,
        )


@certs_app.command("revoke")
@one_line_errors
def certs_revoke(
    device_id: Annotated[str, typer.Argument(help="device id (dev-...)")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Refuse a device from now on: its credential and certificate stop working."""
    with client(coordinator, admin_token) as c:
        c.revoke_device(device_id)
    if as_json:
        print_json({"revoked": device_id})
    else:
        out.print(f"revoked {device_id}")

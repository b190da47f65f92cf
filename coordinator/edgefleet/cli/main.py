"""``edgefleet``: the operator CLI.

Every command that talks to a coordinator finds it from ``--coordinator`` or
``EDGEFLEET_COORDINATOR`` and authenticates with ``--admin-token`` or
``EDGEFLEET_ADMIN_TOKEN``. Every listing command has ``--json`` for scripts.
Failures print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgefleet.catalog import CATALOG
from edgefleet.cli.common import (
    CONTEXT_SETTINGS,
    DEFAULT_COORDINATOR,
    TRANSPORT,
    AdminTokenOpt,
    CoordinatorOpt,
    GlobalOptionsGroup,
    JsonOpt,
    VersionOpt,
    ca_certificate,
    client,
    default_ca,
    err_console,
    fail,
    one_line_errors,
    out,
    print_json,
    settings,
)
from edgefleet.cli.completion import complete_profile, complete_profiles, complete_recipes
from edgefleet.cli.config_cmds import config_app
from edgefleet.cli.rollout_cmds import deploy, explain, rollout_app
from edgefleet.cli.train_cmds import train_app
from edgefleet.client import render
from edgefleet.client.admin_client import wait_until_online
from edgefleet.coordinator.limits import Limits
from edgefleet.v1 import admin_pb2

app = typer.Typer(
    name="edgefleet",
    help="Deploy compressed deep-learning models to fleets of small devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=GlobalOptionsGroup,  # --coordinator/--ca-cert/... before or after any subcommand
    context_settings=CONTEXT_SETTINGS,  # -h as well as --help, inherited by every command
)
coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)
devices_app = typer.Typer(help="Inspect and manage registered devices.", no_args_is_help=True)
fleet_app = typer.Typer(help="Fleet-wide views.", no_args_is_help=True)
profiles_app = typer.Typer(help="The catalog of device profiles.", no_args_is_help=True)
app.add_typer(coordinator_app, name="coordinator")
certs_app = typer.Typer(
    help="TLS certificates, enrollment tokens, revocation.", no_args_is_help=True
)
app.add_typer(certs_app, name="certs")


@app.callback()
def _root(version: VersionOpt = False) -> None:
    """Deploy compressed deep-learning models to fleets of small devices.

    Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 rollout rolled back."""


app.add_typer(config_app, name="config")
app.add_typer(devices_app, name="devices")
app.add_typer(fleet_app, name="fleet")
app.add_typer(profiles_app, name="profiles")
app.add_typer(rollout_app, name="rollout")
app.add_typer(train_app, name="train", help="Federated fine-tuning on Flower across the fleet.")
app.command("deploy")(one_line_errors(deploy))
devices_app.command("explain")(one_line_errors(explain))


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
            help="use this Redis (redis://, rediss://, unix://) instead of the embedded one",
        ),
    ] = None,
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
        redis_url=redis_url or None,
        settings=RegistrySettings(
            offline_after=offline_after, heartbeat_interval=heartbeat_interval
        ),
        metrics_port=metrics_port,
        rollout_interval=rollout_interval,
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
    )

    def ready(c: Coordinator) -> None:
        err_console.print(
            f"edgefleet coordinator listening on {c.address}"
            + (" (INSECURE: plaintext)\n" if insecure else " (TLS)\n")
            + (f"  device endpoint (mutual TLS): {c.device_address}\n" if not insecure else "")
            + (f"  CA certificate: {data_dir / 'tls' / 'ca.pem'}\n" if not insecure else "")
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


# --- devices -----------------------------------------------------------------------------


_STATUS_FILTER = {
    "": admin_pb2.DEVICE_STATUS_UNSPECIFIED,
    "any": admin_pb2.DEVICE_STATUS_UNSPECIFIED,
    "online": admin_pb2.DEVICE_STATUS_ONLINE,
    "offline": admin_pb2.DEVICE_STATUS_OFFLINE,
}


@devices_app.command("ls")
@one_line_errors
def devices_ls(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    profile: Annotated[
        str, typer.Option(help="only devices with this profile", autocompletion=complete_profile)
    ] = "",
    status: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["any", "online", "offline"]), help="only devices in this state"
        ),
    ] = "any",
    as_json: JsonOpt = False,
) -> None:
    """List registered devices."""
    if status not in _STATUS_FILTER:
        raise fail("--status must be 'online' or 'offline'")
    with client(coordinator, admin_token) as c:
        devices = c.list_devices(profile, _STATUS_FILTER[status])
    if as_json:
        print_json([render.device_to_dict(d) for d in devices])
    else:
        out.print(render.devices_table(devices))


@devices_app.command("show")
@one_line_errors
def devices_show(
    device_id: Annotated[str, typer.Argument(help="device id (dev-...)")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Show one device: identity, status and resources."""
    with client(coordinator, admin_token) as c:
        device = c.get_device(device_id)
    data = render.device_to_dict(device, with_profile=True)
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict) and key in ("resources", "latest_metrics"):
            out.print(f"{key}:")
            for rk, rv in value.items():
                shown = render.human_bytes(int(rv)) if rk.endswith("_bytes") else rv
                out.print(f"  {rk}: {shown}", highlight=False)
        else:
            out.print(f"{key}: {value}", highlight=False)


@devices_app.command("rm")
@one_line_errors
def devices_rm(
    device_id: Annotated[str, typer.Argument(help="device id (dev-...)")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Forget a device. A still-running agent will enrol again as a new device."""
    with client(coordinator, admin_token) as c:
        c.remove_device(device_id)
    if as_json:
        print_json({"removed": device_id})
    else:
        out.print(f"removed {device_id}")


# --- fleet -------------------------------------------------------------------------------


@fleet_app.command("summary")
@one_line_errors
def fleet_summary(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_token: AdminTokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Devices online and offline, per profile."""
    with client(coordinator, admin_token) as c:
        summary = c.fleet_summary()
    if as_json:
        print_json(render.summary_to_dict(summary))
    else:
        out.print(render.summary_table(summary))


# --- profiles ----------------------------------------------------------------------------


@profiles_app.command("ls")
def profiles_ls(as_json: JsonOpt = False) -> None:
    """List the device profiles agents can take with --profile."""
    if as_json:
        print_json([p.model_dump(mode="json") for p in CATALOG.values()])
        return
    from rich.table import Table

    table = Table(title="device profiles (plus 'auto' to detect the host)", title_justify="left")
    for col in ("NAME", "CLASS", "CPU", "RAM", "STORAGE", "PRECISIONS", "RUNTIMES"):
        table.add_column(col)
    for p in CATALOG.values():
        table.add_row(
            p.name,
            p.device_class.value,
            p.cpu,
            render.human_bytes(p.ram_bytes),
            render.human_bytes(p.storage_bytes),
            ",".join(p.precisions),
            ",".join(p.runtimes),
        )
    out.print(table)


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
    as_json: JsonOpt = False,
) -> None:
    """Create the coordinator's CA and server certificate (the coordinator also does this
    on first start); prints the CA certificate path agents and the CLI must trust."""
    from edgefleet.pki import CertificateAuthority

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


# --- simulate ----------------------------------------------------------------------------


@app.command("simulate")
@one_line_errors
def simulate(
    devices: Annotated[int, typer.Option("--devices", "-n", help="number of agents")] = 6,
    profiles: Annotated[
        str,
        typer.Option(
            help="comma-separated profiles, assigned round-robin", autocompletion=complete_profiles
        ),
    ] = "phone-flagship,phone-budget,rpi4,rpi-zero2w,jetson-nano,cortex-m7",
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    token: Annotated[
        str, typer.Option(envvar="EDGEFLEET_ENROLL_TOKEN", help="enrollment token")
    ] = "",
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="EDGEFLEET_ENROLL_TOKEN_FILE",
            help="file holding the enrollment token (kept out of every process's argv)",
        ),
    ] = None,
    admin_token: AdminTokenOpt = "",
    state_dir: Annotated[
        Path, typer.Option(help="parent of the agents' state dirs", resolve_path=True)
    ] = Path(".edgefleet/sim"),
    duration: Annotated[
        float, typer.Option(help="seconds to run after all are online; 0 = until Ctrl-C")
    ] = 0.0,
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for the fleet to come online")
    ] = 60.0,
    backend: Annotated[
        str,
        typer.Option(
            help="process: local agent processes; docker: one container per device, "
            "with memory/CPU limits from its profile"
        ),
    ] = "process",
    image: Annotated[str, typer.Option(help="agent image for --backend docker")] = "",
    local_data: Annotated[
        str, typer.Option(help="each agent's part of this dataset ('' = none; process backend)")
    ] = "digits",
    workload_rate: Annotated[
        float, typer.Option(help="requests/s each agent replays from its local data")
    ] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Start N simulated devices (agent processes or containers) against a coordinator,
    then stop them cleanly (on Ctrl-C or SIGTERM)."""
    from edgefleet.devtools.simulate import SimulatedFleet, interrupt_on_sigterm
    from edgefleet.tokenfile import read_token_file

    token = read_token_file(token_file) if token_file is not None else token
    if not token:
        raise fail("an enrollment token is needed: --token-file or EDGEFLEET_ENROLL_TOKEN")
    # the agents dial what every other command would: flag (either side), env, context
    coordinator = settings(coordinator).coordinator
    names = [p.strip() for p in profiles.split(",") if p.strip()]
    fleet: Any
    if backend == "docker":
        from edgefleet.devtools.docker_fleet import DEFAULT_AGENT_IMAGE, DockerFleet

        fleet = DockerFleet.start(
            coordinator=coordinator,
            enroll_token=token,
            profiles=names,
            count=devices,
            image=image or DEFAULT_AGENT_IMAGE,
            # the CA (--ca-cert, default DATA_DIR/tls/ca.pem) goes into every container
            ca_cert=ca_certificate(),
            insecure=TRANSPORT.insecure,
        )
        where = "docker logs <container>"
    elif backend == "process":
        ca = None if TRANSPORT.insecure else (TRANSPORT.ca_cert or default_ca())
        if not TRANSPORT.insecure and ca is None:
            ca_certificate()  # raises the one-line explanation
        transport = ["--insecure"] if ca is None else ["--ca-cert", str(Path(ca).resolve())]
        fleet = SimulatedFleet.start(
            coordinator=coordinator,
            enroll_token=token,
            token_file=token_file,
            profiles=names,
            count=devices,
            state_root=state_dir,
            extra_args=transport,
            local_data=local_data,
            workload_rate=workload_rate,
        )
        where = f"{state_dir}/*/agent.log"
    else:
        raise fail("--backend must be 'process' or 'docker'")
    err_console.print(f"started {devices} agents ({', '.join(names)}); logs: {where}")
    interrupt_on_sigterm()  # (before this, agents die with simulate: see SimulatedFleet)
    try:
        if admin_token:
            with client(coordinator, admin_token) as c:
                listed = wait_until_online(c, {a.name for a in fleet.agents}, timeout)
            if as_json:
                print_json([render.device_to_dict(d) for d in listed])
            else:
                out.print(render.devices_table(listed))
        if duration > 0:
            time.sleep(duration)
        else:
            err_console.print("running; press Ctrl-C to stop the fleet")
            while not fleet.exited():
                time.sleep(0.5)
            raise fail(f"agent {fleet.exited()[0].name} exited; see its agent.log")
    except KeyboardInterrupt:
        pass
    finally:
        report = fleet.stop()
        err_console.print(
            f"stopped {len(fleet.agents)} agents: {report.clean} clean"
            + (f", failed: {report.failed}" if report.failed else "")
            + (f", killed: {report.killed}" if report.killed else "")
        )


def _register_optional_apps() -> None:
    """Mount command groups that live in their own modules (and may need extras)."""
    try:
        from edgefleet.cli.models import models_app  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "edgefleet.cli.models":
            raise
        return
    app.add_typer(models_app, name="models", help="Build and inspect compressed model variants.")


_register_optional_apps()


@app.command("demo")
@one_line_errors
def demo(
    devices: Annotated[int, typer.Option("--devices", "-n", help="fleet size")] = 8,
    data_dir: Annotated[
        Path, typer.Option(help="demo state (wiped first)", resolve_path=True)
    ] = Path(".edgefleet/demo"),
    epochs: Annotated[int, typer.Option(help="training epochs of the base model")] = 15,
    recipes: Annotated[
        str,
        typer.Option(
            help="comma-separated compression recipes (default: a survey mix)",
            autocompletion=complete_recipes,
        ),
    ] = "",
    federated_rounds: Annotated[
        int, typer.Option(help="federated fine-tuning rounds on Flower at the end (0 = skip)")
    ] = 2,
    strict: Annotated[
        bool,
        typer.Option(
            help="exit 1 unless every device runs a variant, the rollout succeeded and "
            "federated rounds improved accuracy (what CI checks)"
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Run the end-to-end demo: train and compress a model, start a coordinator and a
    simulated mixed fleet, deploy with a canary, and show what each device runs and why."""
    from edgefleet.devtools.demo import DEMO_RECIPES, run_demo

    run_demo(
        devices=devices,
        data_dir=data_dir,
        console=out,
        err_console=err_console,
        as_json=as_json,
        epochs=epochs,
        recipes=[r for r in recipes.split(",") if r] or DEMO_RECIPES,
        federated_rounds=federated_rounds,
        strict=strict,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``edgefleet simulate`` and ``edgefleet demo``: simulated fleets for development and CI.

Both are top-level commands (``edgefleet.cli.app`` mounts them); the work is in
``edgefleet.devtools``, imported only when a command runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    TRANSPORT,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
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
from edgefleet.cli.completion import complete_profiles, complete_recipes
from edgefleet.client import render
from edgefleet.client.admin_client import wait_until_online


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
        str,
        typer.Option(
            help="each agent's part of this dataset ('' = none; process backend): digits "
            "(Dirichlet parts), kws or kws:SIZE (keyword spotting, whole voices per device), "
            "text or text:BYTES (standard-library packages per device, for a language model's "
            "federated LoRA; no replayed workload) or an .npz with groups (whole groups per device)"
        ),
    ] = "digits",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the kws set is cached (default: $XDG_CACHE_HOME/edgefleet)",
            resolve_path=True,
        ),
    ] = None,
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
            data_dir=data_dir,
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


@one_line_errors
def demo(
    devices: Annotated[int, typer.Option("--devices", "-n", help="fleet size")] = 8,
    task: Annotated[
        str,
        typer.Option(
            help="kws: keyword spotting on the built-in espeak-ng set (MFCC frontend, DS-CNN); "
            "digits: the 8x8 smoke task",
            click_type=click.Choice(["kws", "digits"]),
        ),
    ] = "kws",
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
    from edgefleet.devtools.demo import run_demo

    run_demo(
        devices=devices,
        data_dir=data_dir,
        console=out,
        err_console=err_console,
        as_json=as_json,
        epochs=epochs,
        recipes=[r for r in recipes.split(",") if r] or None,
        federated_rounds=federated_rounds,
        strict=strict,
        task_name=task,
    )

"""``edgefleet devices explain|ls|show|rm``: inspect and manage registered devices.

``explain`` lives with the rollout commands (it explains a rollout's choice for a device) and is
mounted here first, so ``devices --help`` lists it where it always has.
"""

from __future__ import annotations

from typing import Annotated

import click
import typer

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
    client,
    fail,
    one_line_errors,
    out,
    print_json,
)
from edgefleet.cli.completion import complete_profile
from edgefleet.cli.rollout_cmds import explain
from edgefleet.client import render
from edgefleet.v1 import admin_pb2

devices_app = typer.Typer(help="Inspect and manage registered devices.", no_args_is_help=True)
devices_app.command("explain")(one_line_errors(explain))


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

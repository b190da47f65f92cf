"""``edgefleet fleet summary``: fleet-wide views."""

from __future__ import annotations

import typer

from edgefleet.cli.common import (
    DEFAULT_COORDINATOR,
    AdminTokenOpt,
    CoordinatorOpt,
    JsonOpt,
    client,
    one_line_errors,
    out,
    print_json,
)
from edgefleet.client import render

fleet_app = typer.Typer(help="Fleet-wide views.", no_args_is_help=True)


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

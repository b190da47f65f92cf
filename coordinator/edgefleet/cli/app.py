"""The ``edgefleet`` typer app: the root command with its global options, and every command group.

Each group is its own module (``coordinator_cmds``, ``devices_cmds``, ``fleet_cmds``,
``profiles_cmds``, ``config_cmds``, ``rollout_cmds``, ``train_cmds``, ``models``, and
``sim_cmds`` for the top-level ``simulate`` and ``demo``); this module only mounts them, in the
order ``edgefleet --help`` lists them. The console script's entry point is
``edgefleet.cli.main:main``.
"""

from __future__ import annotations

import typer

from edgefleet.cli.common import CONTEXT_SETTINGS, GlobalOptionsGroup, VersionOpt, one_line_errors
from edgefleet.cli.config_cmds import config_app
from edgefleet.cli.coordinator_cmds import certs_app, coordinator_app
from edgefleet.cli.devices_cmds import devices_app
from edgefleet.cli.fleet_cmds import fleet_app
from edgefleet.cli.infer_cmds import infer
from edgefleet.cli.jobs_cmds import jobs_app
from edgefleet.cli.profiles_cmds import profiles_app
from edgefleet.cli.rollout_cmds import deploy, rollout_app
from edgefleet.cli.sim_cmds import demo, simulate
from edgefleet.cli.train_cmds import train_app
from edgefleet.cli.worker_cmds import worker

app = typer.Typer(
    name="edgefleet",
    help="Deploy compressed deep-learning models to fleets of small devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=GlobalOptionsGroup,  # --coordinator/--ca-cert/... before or after any subcommand
    context_settings=CONTEXT_SETTINGS,  # -h as well as --help, inherited by every command
)


@app.callback()
def _root(version: VersionOpt = False) -> None:
    """Deploy compressed deep-learning models to fleets of small devices.

    Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 rollout rolled back."""


# typer lists a group's commands first, then its sub-groups, each in the order added here
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(certs_app, name="certs")
app.add_typer(config_app, name="config")
app.add_typer(devices_app, name="devices")
app.add_typer(fleet_app, name="fleet")
app.add_typer(profiles_app, name="profiles")
app.add_typer(rollout_app, name="rollout")
app.add_typer(train_app, name="train", help="Federated fine-tuning on Flower across the fleet.")
app.add_typer(jobs_app, name="jobs")
app.command("deploy")(one_line_errors(deploy))
app.command("simulate")(simulate)
app.command("worker")(worker)
app.command("infer")(infer)


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
app.command("demo")(demo)

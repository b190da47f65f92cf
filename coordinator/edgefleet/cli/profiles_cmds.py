"""``edgefleet profiles ls``: the catalog of device profiles (no coordinator needed)."""

from __future__ import annotations

import typer

from edgefleet.catalog import CATALOG
from edgefleet.cli.common import JsonOpt, out, print_json
from edgefleet.client import render

profiles_app = typer.Typer(help="The catalog of device profiles.", no_args_is_help=True)


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

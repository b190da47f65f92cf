"""The options every ``edgefleet models`` verb shares, defined once.

Its own module because ``models`` imports ``models_export`` to mount the export verb, and the
layout test forbids import circles: both import these from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.completion import complete_models

__all__ = ["DataDirOpt", "JsonOpt", "ModelArg"]

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EDGEFLEET_DATA_DIR",
        help="variant store and model index (default ./.edgefleet)",
        show_default=False,
        resolve_path=True,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
ModelArg = Annotated[str, typer.Argument(help="a registered model", autocompletion=complete_models)]

"""``edgefleet config``: named contexts, so one flag (or none) picks a coordinator.

The file and the precedence rules are in :mod:`edgefleet.cli.settings`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefleet.cli.common import JsonOpt, fail, one_line_errors, out, print_json, usage_error
from edgefleet.cli.settings import CONTEXT_ENV, Context, EdgefleetConfig

config_app = typer.Typer(
    help="Named contexts: coordinator, CA, admin-token file (like kubeconfig).",
    no_args_is_help=True,
)


def _complete_names(incomplete: str) -> list[str]:
    try:
        names = EdgefleetConfig.load().contexts
    except ValueError:
        return []
    return [n for n in sorted(names) if n.startswith(incomplete)]


NameArg = Annotated[str, typer.Argument(help="context name", autocompletion=_complete_names)]


def _absolute(path: Path | None) -> str | None:
    """Contexts store absolute paths: they are used from any directory."""
    return str(path.expanduser().absolute()) if path is not None else None


@config_app.command("set-context")
@one_line_errors
def set_context(
    name: NameArg,
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", metavar="HOST:PORT", help="coordinator address")
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="CA certificate that verifies it")
    ] = None,
    admin_token_file: Annotated[
        Path | None,
        typer.Option("--admin-token-file", help="file holding the admin token (never the token)"),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option("--insecure/--tls", help="plaintext (a coordinator started --insecure)"),
    ] = None,
    use: Annotated[bool, typer.Option("--use", help="also make it the current context")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or update context NAME; options not given keep their current value."""
    if not name.strip() or name != name.strip():
        raise usage_error(f"a context name must be non-empty without surrounding spaces: {name!r}")
    if coordinator is not None and ":" not in coordinator:
        raise usage_error(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    config = EdgefleetConfig.load()
    old = config.contexts.get(name, Context(name))
    changes: dict[str, Any] = {
        "coordinator": coordinator,
        "ca_cert": _absolute(ca_cert),
        "admin_token_file": _absolute(admin_token_file),
        "insecure": insecure,
    }
    new = dataclasses.replace(old, **{k: v for k, v in changes.items() if v is not None})
    config.contexts[name] = new
    if use or config.current_context is None:
        config.current_context = name
    config.save()
    if as_json:
        print_json(_context_dict(new, config.current_context))
    else:
        out.print(f"context {name} saved in {config.path}", highlight=False)


@config_app.command("use-context")
@one_line_errors
def use_context(name: NameArg) -> None:
    """Make NAME the current context (the default of every command)."""
    config = EdgefleetConfig.load()
    config.get(name)  # one-line error naming the known contexts
    config.current_context = name
    config.save()
    out.print(f"current context: {name}", highlight=False)


@config_app.command("get-contexts")
@one_line_errors
def get_contexts(as_json: JsonOpt = False) -> None:
    """List contexts; the current one is marked with *."""
    config = EdgefleetConfig.load()
    rows = [_context_dict(c, config.current_context) for _, c in sorted(config.contexts.items())]
    if as_json:
        print_json(rows)
        return
    if not rows:
        raise fail(
            f"no contexts in {config.path} yet "
            "(edgefleet config set-context NAME --coordinator HOST:PORT)"
        )
    table = Table("", "NAME", "COORDINATOR", "CA CERT", "ADMIN TOKEN FILE", "INSECURE")
    for r in rows:
        table.add_row(
            "*" if r["current"] else "",
            r["name"],
            r["coordinator"] or "-",
            r["ca_cert"] or "-",
            r["admin_token_file"] or "-",
            "-" if r["insecure"] is None else str(r["insecure"]).lower(),
        )
    out.print(table)
    out.print(f"({config.path}; ${CONTEXT_ENV} or --context overrides)", highlight=False)


def _context_dict(c: Context, current: str | None) -> dict[str, Any]:
    return {**dataclasses.asdict(c), "current": c.name == current}

"""What every CLI command shares: consoles, global options, one-line errors, exit codes, JSON.

Exit codes (documented in the README): 0 ok, 1 a runtime failure, 2 a usage error (bad or
conflicting options, caught before anything starts), 3 a rollout that rolled back.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import click
import typer
from click.core import ParameterSource
from rich.console import Console
from typer.core import TyperGroup, TyperOption

from edgefleet.catalog import UnknownProfileError
from edgefleet.cli.settings import DEFAULT_COORDINATOR as DEFAULT_COORDINATOR
from edgefleet.cli.settings import EdgefleetConfig, Resolved, resolve
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.client.jsonout import print_json as print_json  # the one JSON writer
from edgefleet.coordinator.errors import CoordinatorError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROLLED_BACK = 0, 1, 2, 3
#: ctx.meta key of the global options given on the command line (shared by nested contexts)
FLAGS_KEY = "edgefleet.flags"


def _console(stderr: bool = False) -> Console:
    """Rich assumes 80 columns when output is piped; tables of ids need more."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, width=wide)


out = _console()
err_console = _console(stderr=True)


def record_flag(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Remember a global option given on the command line, on either side of the subcommand.

    Only command-line values are kept: environment variables and contexts are applied later
    by :func:`settings`, so ``--coordinator`` before the subcommand is not overridden by
    ``$EDGEFLEET_COORDINATOR`` feeding the same option after it.
    """
    if param.name and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
        ctx.meta.setdefault(FLAGS_KEY, {})[param.name] = value
    return value


def _typer_record_flag(ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
    """:func:`record_flag` with the annotations typer needs to pass ctx and param."""
    return str(record_flag(ctx, param, value))


GLOBAL_PANEL = "Global options (before or after the subcommand)"
_COORDINATOR_HELP = (
    "coordinator HOST:PORT (else $EDGEFLEET_COORDINATOR, the context, 127.0.0.1:50051)"
)
_ADMIN_TOKEN_HELP = "admin token (else $EDGEFLEET_ADMIN_TOKEN, the context's admin-token-file)"

CoordinatorOpt = Annotated[
    str,
    typer.Option(
        "--coordinator",
        envvar="EDGEFLEET_COORDINATOR",
        help=_COORDINATOR_HELP,
        show_default=False,
        callback=_typer_record_flag,
        rich_help_panel=GLOBAL_PANEL,
    ),
]
AdminTokenOpt = Annotated[
    str,
    typer.Option(
        "--admin-token",
        envvar="EDGEFLEET_ADMIN_TOKEN",
        help=_ADMIN_TOKEN_HELP,
        show_default=False,
        callback=_typer_record_flag,
        rich_help_panel=GLOBAL_PANEL,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises the returned exit."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def usage_error(message: str) -> typer.Exit:
    """A bad or conflicting option, found before anything started: exit 2, like click's."""
    return fail(message, EXIT_USAGE)


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report known failures as one line and exit 1 instead of a traceback
    (set EDGEFLEET_DEBUG=1 to see the traceback).

    click's own exceptions pass through untouched: ``typer.Exit`` is a RuntimeError, and
    catching it would turn ``rollout status --watch``'s exit 3 into ``error: 3`` and exit 1.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (
            AdminClientError,
            CoordinatorError,
            UnknownProfileError,
            ValueError,
            OSError,
            RuntimeError,  # e.g. the Docker backend's errors
        ) as e:
            if os.environ.get("EDGEFLEET_DEBUG"):
                raise
            raise fail(str(e)) from None

    return wrapper


# --- global options and contexts -----------------------------------------------------------


def default_ca() -> Path | None:
    data_dir = Path(os.environ.get("EDGEFLEET_DATA_DIR") or ".edgefleet")
    candidate = data_dir / "tls" / "ca.pem"
    return candidate if candidate.exists() else None


def _given_flags() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(FLAGS_KEY, {})) if ctx is not None else {}


def settings(coordinator: str = "", admin_token: str = "") -> Resolved:
    """The coordinator, token and transport this command uses: flag > env > context > default.

    ``coordinator``/``admin_token`` are what a command's own options received; they only
    matter for direct calls outside click (tests, scripts), where no flags were recorded.
    """
    flags = _given_flags()
    if coordinator and coordinator != DEFAULT_COORDINATOR:
        flags.setdefault("coordinator", coordinator)
    if admin_token:
        flags.setdefault("admin_token", admin_token)
    if TRANSPORT.forced_insecure:
        flags.setdefault("insecure", True)
    if TRANSPORT.forced_ca_cert is not None:
        flags.setdefault("ca_cert", str(TRANSPORT.forced_ca_cert))
    return resolve(flags, default_ca=default_ca())


class TransportChoice:
    """How commands reach the coordinator, resolved on each read (flags, env, context).

    Assigning forces a value for this process (what tests and embedding programs do); the
    forced ``False``/``None`` means "not forced", so undoing a monkeypatch restores resolution.
    """

    def __init__(self) -> None:
        self.forced_insecure = False
        self.forced_ca_cert: Path | None = None

    @property
    def insecure(self) -> bool:
        return settings().insecure

    @insecure.setter
    def insecure(self, value: bool) -> None:
        self.forced_insecure = bool(value)

    @property
    def ca_cert(self) -> Path | None:
        return settings().ca_cert

    @ca_cert.setter
    def ca_cert(self, value: Path | None) -> None:
        self.forced_ca_cert = value


TRANSPORT = TransportChoice()


def ca_certificate() -> bytes | None:
    """The CA to trust, or None for plaintext (only with --insecure / EDGEFLEET_INSECURE=1)."""
    chosen = settings()
    if chosen.insecure:
        return None
    path = chosen.ca_cert
    if path is None:
        raise AdminClientError(
            "no CA certificate to verify the coordinator: pass --ca-cert PATH (it is "
            "DATA_DIR/tls/ca.pem on the coordinator; or set EDGEFLEET_CA_CERT, or a context's "
            "ca-cert), or --insecure for a coordinator started with --insecure"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AdminClientError(f"cannot read the CA certificate {path}: {exc}") from None


def client(coordinator: str = "", admin_token: str = "") -> AdminClient:
    chosen = settings(coordinator, admin_token)
    return AdminClient(chosen.coordinator, chosen.admin_token, ca_cert=ca_certificate())


def _complete_context(ctx: click.Context, args: list[str], incomplete: str) -> list[str]:
    """Shell completion of ``--context``: the names in the config file (typer's raw
    ``autocompletion`` signature, as these options are built without typer.Option)."""
    try:
        names = EdgefleetConfig.load().contexts
    except ValueError:
        return []
    return [n for n in sorted(names) if n.startswith(incomplete)]


def global_options(hidden: bool = False) -> list[click.Option]:
    """Fresh copies of the global options, for the root group and for every command.

    On a command that never talks to a coordinator they are hidden but still accepted, so
    a shell alias such as ``edgefleet --context lab`` works in front of any command.
    """

    def opt(decls: list[str], help_text: str, **kw: Any) -> click.Option:
        return TyperOption(
            param_decls=decls,
            help=help_text,
            callback=record_flag,
            expose_value=False,
            hidden=hidden,
            rich_help_panel=GLOBAL_PANEL,
            **kw,
        )

    return [
        opt(["--coordinator"], _COORDINATOR_HELP, type=str, metavar="HOST:PORT"),
        opt(["--admin-token"], _ADMIN_TOKEN_HELP, type=str),
        opt(
            ["--ca-cert"],
            "the coordinator's CA certificate (else $EDGEFLEET_CA_CERT, the context's, "
            "DATA_DIR/tls/ca.pem)",
            type=click.Path(dir_okay=False),
        ),
        opt(
            ["--insecure"],
            "talk plaintext to a coordinator started with --insecure (or $EDGEFLEET_INSECURE=1)",
            is_flag=True,
            default=False,
        ),
        opt(
            ["--context"],
            "named context from the config file (else $EDGEFLEET_CONTEXT, current-context)",
            type=str,
            autocompletion=_complete_context,
        ),
    ]


def _leaf_commands(group: click.Group) -> Iterator[click.Command]:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command)
        else:
            yield command


def add_missing_global_options(command: click.Command, hidden: bool) -> None:
    """Give ``command`` every global option it does not declare itself."""
    taken = {decl for p in command.params for decl in getattr(p, "opts", [])}
    command.params.extend(o for o in global_options(hidden) if o.opts[0] not in taken)


class GlobalOptionsGroup(TyperGroup):
    """The root group: global options are accepted before *and* after every subcommand.

    Typer builds the whole click tree before this class is instantiated, so the leaves are
    all there to receive the options (commands that do not reach a coordinator get them
    hidden); the values are recorded in ``ctx.meta`` and resolved by :func:`settings`.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        add_missing_global_options(self, hidden=False)
        for command in _leaf_commands(self):
            talks = any(p.name == "coordinator" for p in command.params)
            add_missing_global_options(command, hidden=not talks)


def _print_version(value: bool) -> None:
    """``--version``: the installed package's version, then exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("edgefleet")
    except PackageNotFoundError:
        installed = "unknown (not installed as a package)"
    out.print(f"edgefleet {installed}", highlight=False)
    raise typer.Exit(EXIT_OK)


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version", help="print the version and exit", is_eager=True, callback=_print_version
    ),
]
#: for the root ``typer.Typer``: -h everywhere (click contexts inherit help_option_names)
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

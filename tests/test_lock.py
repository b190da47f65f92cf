"""The committed locks are what gets installed, and a dependency changed without a re-lock is
caught by ``make test`` (``scripts/lock.py --check``) with a message that says what to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "scripts" / "lock.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEFLEET_LOCK_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, str(LOCK), "--check"], env=env, capture_output=True, text=True, timeout=60
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "locks", tmp_path / "locks")
    return tmp_path


def test_committed_locks_match_pyproject(tmp_path: Path) -> None:
    assert _check(_copy(tmp_path)).returncode == 0


def test_a_dependency_changed_without_relocking_fails_and_says_what_to_run(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    assert '"psutil>=5.9",' in text
    pyproject.write_text(text.replace('"psutil>=5.9",', '"psutil>=6",'))
    res = _check(root)
    assert res.returncode == 1
    assert "make lock" in res.stderr and "locks/base.txt" in res.stderr


def test_a_missing_lock_fails(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "locks" / "agent.txt").unlink()
    res = _check(root)
    assert res.returncode == 1 and "locks/agent.txt is missing" in res.stderr


def test_this_environment_is_the_dev_lock() -> None:
    """What `make test` runs in was installed from locks/dev.txt, version for version."""
    res = subprocess.run(
        [sys.executable, str(LOCK), "--verify-env", "dev"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_every_lock_pins_with_hashes_and_the_agent_stays_light() -> None:
    for lock in (REPO / "locks").glob("*.txt"):
        text = lock.read_text()
        assert "--hash=sha256:" in text, lock
    agent = (REPO / "locks" / "agent.txt").read_text()
    for heavy in ("torch==", "redis==", "flwr==", "onnx=="):
        assert f"\n{heavy}" not in agent, heavy

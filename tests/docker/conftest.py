"""A real Docker engine and our images, for the tests marked ``docker``.

- ``docker_engine``: uses a running engine, or starts ``containerd`` + ``dockerd`` itself (the
  way DEVELOPERS.md describes for this machine: no iptables, no default bridge) and stops at the
  end only the daemons it started. It skips only when no engine can be had at all.
- ``edgefleet_images``: builds every image with ``scripts/docker_build.py`` (local Debian base,
  made if missing), once per session.
Wall times of these steps and of the stack test are printed in pytest's terminal summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prereqs import missing_prerequisite, require_binaries

REPO = Path(__file__).resolve().parents[2]
ENGINE_START_TIMEOUT = 60.0
TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject.toml registers it.
    config.addinivalue_line(
        "markers", "docker: needs a Docker engine (started by tests/docker if not running)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("docker wall times")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f}s")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can print logs when a test failed."""
    report = yield
    setattr(item, f"rep_{call.when}", report)
    return report


def engine_up() -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.25)
    return False


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A reachable Docker engine for the session; daemons started here are stopped here."""
    require_binaries("docker")
    if engine_up():
        yield
        return
    missing = [b for b in ("containerd", "dockerd") if shutil.which(b) is None]
    if missing:
        missing_prerequisite(f"no Docker engine running and {', '.join(missing)} not installed")
    if os.geteuid() != 0:
        missing_prerequisite("no Docker engine running, and starting dockerd needs root")
    logs = tmp_path_factory.mktemp("engine")
    started: list[subprocess.Popen[bytes]] = []
    socket = Path("/run/containerd/containerd.sock")
    try:
        if not socket.exists():
            with (logs / "containerd.log").open("wb") as log:
                started.append(subprocess.Popen(["containerd"], stdout=log, stderr=log))
            if not _wait(socket.exists, ENGINE_START_TIMEOUT):
                missing_prerequisite(f"containerd did not start; see {logs / 'containerd.log'}")
        with (logs / "dockerd.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none"],
                    stdout=log,
                    stderr=log,
                )
            )
        if not _wait(engine_up, ENGINE_START_TIMEOUT):
            tail = (logs / "dockerd.log").read_text(errors="replace")[-2000:]
            missing_prerequisite(f"the Docker engine could not start:\n{tail}")
        yield
    finally:
        for proc in reversed(started):  # dockerd first, then containerd
            _stop(proc)


@pytest.fixture(scope="session")
def edgefleet_images(docker_engine: None) -> dict[str, str]:
    """Build (or refresh from the layer cache) every image; returns component -> tag."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "docker_build.py")],
        check=True,
        cwd=REPO,
        stdout=sys.stderr,
    )
    TIMINGS["image build (scripts/docker_build.py)"] = time.monotonic() - started
    return {c: f"edgefleet-{c}:latest" for c in ("coordinator", "agent", "redis", "prometheus")}

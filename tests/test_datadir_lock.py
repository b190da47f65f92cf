"""One coordinator per data dir (issue 14): a second start is refused, the first keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.datadir_lock import DataDirLocked, lock_data_dir
from tests.conftest import (
    ADMIN_TOKEN,
    AgentProc,
    CoordinatorProc,
    free_port,
    health_status,
    wait_for,
)

HOLD = (
    "import sys, time; from pathlib import Path; "
    "from edgefleet.coordinator.datadir_lock import lock_data_dir; "
    "lock_data_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
)


def test_a_locked_data_dir_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLocked, match=rf"another coordinator \(pid {holder.pid}\)"):
            lock_data_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with its holder (even killed -9): no stale lock to clean up
    assert lock_data_dir(tmp_path) == tmp_path.resolve() / "coordinator.lock"
    assert lock_data_dir(tmp_path) == tmp_path.resolve() / "coordinator.lock"  # ours: idempotent
    assert (tmp_path / "coordinator.lock").read_text().strip() == str(os.getpid())


def test_a_holder_that_has_not_written_its_pid_yet_is_named_unknown(tmp_path: Path) -> None:
    hold = (
        "import fcntl, os, sys, time; "
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"
    )
    path = str(tmp_path / "coordinator.lock")
    holder = subprocess.Popen([sys.executable, "-c", hold, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLocked, match=r"another coordinator \(pid unknown\)"):
            lock_data_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def _has_flower() -> bool:
    try:
        from edgefleet.coordinator.fl.superlink import SuperLinkSupervisor  # noqa: F401
    except ImportError:
        return False
    return True


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def test_a_second_coordinator_on_the_same_data_dir_exits_1_and_the_first_keeps_serving(
    tmp_path: Path,
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    data = tmp_path / "coord"
    superlink = ("--superlink", "local", "--superlink-port", str(free_port()))
    first = coordinator_factory(
        "--heartbeat-interval", "0.3", *(superlink if _has_flower() else ()), data_dir=data
    )
    agent = agent_factory(first.address, "rpi4", "survivor")
    with AdminClient(first.address, ADMIN_TOKEN) as admin:
        wait_for(lambda: len(admin.list_devices()) == 1, 20, "the agent to enrol")
        # written last in start-up (after the SuperLink answers); the second used to delete it
        wait_for((data / "coordinator.json").exists, 30, "the first one's coordinator.json")
        superlink_pid = data / "superlink" / "superlink.pid"
        assert not _has_flower() or _alive(superlink_pid)

        second = CoordinatorProc(data, free_port(), [])
        try:
            with pytest.raises(AssertionError, match="coordinator exited 1"):
                second.start()
        finally:
            if second.proc is not None and second.proc.poll() is None:
                second.stop()  # without the lock it starts: stop it, as the fixture would
        out = second.log.read_text()
        assert f"another coordinator (pid {first.proc.pid if first.proc else -1})" in out
        assert "Traceback" not in out

        # the first one's Redis, SuperLink and info file are untouched
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_status(first.address) == serving
        assert (data / "coordinator.json").exists()
        assert not _has_flower() or _alive(superlink_pid)
        seen = admin.list_devices()[0].last_seen.ToNanoseconds()
        wait_for(
            lambda: admin.list_devices()[0].last_seen.ToNanoseconds() > seen, 10, "a heartbeat"
        )
    assert agent.proc is not None and agent.proc.poll() is None
    assert first.stop(signal.SIGTERM) == 0

"""Agent secrets and permissions (issue 14): the enrollment token stays out of argv, and the
state dir (0700) and telemetry database (0600) are private, also when they existed before."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.agent.identity import IdentityError, ensure_state_dir
from edgefleet.agent.telemetry import TELEMETRY_FILE, TelemetryBuffer
from edgefleet.client.admin_client import AdminClient
from edgefleet.devtools.simulate import SimulatedFleet
from edgefleet.tokenfile import TokenFileError, read_token_file
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, CoordinatorProc, wait_for


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env_without_tokens() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}


def _proc_text(pid: int, what: str) -> str:
    return (Path("/proc") / str(pid) / what).read_bytes().replace(b"\0", b" ").decode()


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "enroll.token"
    path.write_text(ENROLL_TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_a_new_state_dir_is_0700_and_an_existing_one_is_tightened(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ensure_state_dir(tmp_path / "new" / "state")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new" / "state") == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_state_dir(loose)
    assert _mode(loose) == 0o700


def test_a_state_dir_that_cannot_be_made_private_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(IdentityError, match=r"^cannot make the state dir .* private \(0700\): "):
        ensure_state_dir(tmp_path / "file" / "state")


def test_the_telemetry_database_is_0600_and_an_existing_one_is_tightened(tmp_path: Path) -> None:
    TelemetryBuffer(tmp_path / "fresh").close()
    assert _mode(tmp_path / "fresh" / TELEMETRY_FILE) == 0o600
    assert _mode(tmp_path / "fresh") == 0o700
    state = tmp_path / "upgraded"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    db = sqlite3.connect(state / TELEMETRY_FILE)  # an older agent's files, world-readable
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    for name in (TELEMETRY_FILE, TELEMETRY_FILE + "-wal", TELEMETRY_FILE + "-shm"):
        (state / name).chmod(0o644)
    buf = TelemetryBuffer(state)
    try:
        buf.metric("m", 1.0)
        for name in (TELEMETRY_FILE, TELEMETRY_FILE + "-wal", TELEMETRY_FILE + "-shm"):
            assert _mode(state / name) == 0o600, name
        assert _mode(state) == 0o700
    finally:
        buf.close()
        db.close()


def test_a_token_file_that_is_missing_or_empty_is_one_clear_line(tmp_path: Path) -> None:
    assert read_token_file(_token_file(tmp_path)) == ENROLL_TOKEN
    with pytest.raises(
        TokenFileError, match=r"^cannot read the token file .*missing: No such file"
    ):
        read_token_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenFileError, match=r"^the token file .*empty is empty$"):
        read_token_file(tmp_path / "empty")


def _device_id(identity: Path) -> str:
    return str(json.loads(identity.read_text()).get("device_id", ""))


def _agent(coord: CoordinatorProc, state: Path, *args: str) -> subprocess.Popen[bytes]:
    log = state.parent / f"{state.name}.log"
    with log.open("ab") as out:
        flags = ["--profile", "rpi4", "--name", state.name, "--state-dir", str(state), *args]
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.agent",
                "--coordinator",
                coord.address,
                "--insecure",
                *flags,
            ],
            stdout=out,
            stderr=out,
            env=_env_without_tokens(),
        )


def test_an_agent_with_a_token_file_enrols_with_no_token_in_its_cmdline_and_private_state(
    tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory()
    state = tmp_path / "agent-tf"
    state.mkdir(mode=0o755)  # left loose by an older agent: fixed on start
    state.chmod(0o755)
    (state / TELEMETRY_FILE).touch(mode=0o644)
    (state / TELEMETRY_FILE).chmod(0o644)
    proc = _agent(coord, state, "--token-file", str(_token_file(tmp_path)))
    try:
        identity = state / "identity.json"
        # the identity (instance key) is saved before Register, the device id after it
        wait_for(lambda: identity.exists() and _device_id(identity) != "", 20, "enrolment")
        assert proc.poll() is None
        assert ENROLL_TOKEN not in _proc_text(proc.pid, "cmdline")
        assert ENROLL_TOKEN not in _proc_text(proc.pid, "environ")
        assert _mode(state) == 0o700
        assert _mode(state / TELEMETRY_FILE) == 0o600
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_an_agent_with_an_unreadable_token_file_exits_2_with_one_line(
    tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory()
    state = tmp_path / "agent-missing"
    proc = _agent(coord, state, "--token-file", str(tmp_path / "nope.token"))
    assert proc.wait(30) == 2
    log = (tmp_path / "agent-missing.log").read_text()
    assert "cannot read the token file" in log and "Traceback" not in log


def test_simulated_agents_get_the_token_from_the_file_not_argv_or_env(
    tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory("--heartbeat-interval", "0.5")
    fleet = SimulatedFleet.start(
        coordinator=coord.address,
        token_file=_token_file(tmp_path),
        profiles=["rpi4"],
        count=2,
        state_root=tmp_path / "sim",
        extra_args=["--insecure"],
    )
    try:
        with AdminClient(coord.address, ADMIN_TOKEN) as admin:
            wait_for(lambda: len(admin.list_devices()) == 2, 30, "two simulated devices")
        for agent in fleet.agents:
            assert ENROLL_TOKEN not in _proc_text(agent.process.pid, "cmdline")
            assert ENROLL_TOKEN not in _proc_text(agent.process.pid, "environ")
    finally:
        assert fleet.stop().clean == 2


def test_simulate_cli_takes_a_token_file(
    tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory("--heartbeat-interval", "0.5")
    env = _env_without_tokens()
    env.update(
        EDGEFLEET_COORDINATOR=coord.address,
        EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
        EDGEFLEET_INSECURE="1",
    )
    cmd = [sys.executable, "-m", "edgefleet.cli.main", "simulate", "--devices", "1"]
    cmd += ["--profiles", "rpi4", "--state-dir", str(tmp_path / "sim"), "--duration", "0.2"]
    ok = subprocess.run(
        [*cmd, "--token-file", str(_token_file(tmp_path)), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert [d["status"] for d in json.loads(ok.stdout)] == ["online"]
    missing = subprocess.run(
        [*cmd, "--token-file", str(tmp_path / "nope.token")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "cannot read the token file" in missing.stderr and "Traceback" not in missing.stderr

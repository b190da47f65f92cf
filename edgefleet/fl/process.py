"""Keep one Flower process alive: start it, restart it when it dies, stop it cleanly.

Shared by the coordinator (``flower-superlink``) and the agent (``flower-supernode``); stdlib
only. Each supervised process gets its own session so ``stop`` can take down the whole
group -- a SuperNode/SuperLink spawns ``flower-superexec`` and per-message app processes
that must not outlive it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fsutil import atomic_write

__all__ = [
    "FlowerTls",
    "SupervisedProcess",
    "flower_bin",
    "pid_alive",
    "toml_value",
    "with_flower_path",
    "write_toml_table",
]

log = logging.getLogger(__name__)
_LIVE: set[SupervisedProcess] = set()


@atexit.register
def _stop_all() -> None:
    """Never leave a SuperLink/SuperNode behind when the supervising interpreter exits."""
    for proc in list(_LIVE):
        proc.stop(timeout=3.0)


@dataclass(frozen=True)
class FlowerTls:
    """TLS files for Flower's processes, all PEM paths.

    The SuperLink serves with ``cert``/``key`` (issued by the coordinator's CA, so agents that
    already trust that CA for gRPC trust the SuperLink too); SuperNodes and the ``flwr`` CLI
    only need ``ca`` to verify it.
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        # Flower 1.42 refuses relative paths in connection configs; resolve once, here.
        object.__setattr__(self, "ca", self.ca.resolve())
        for name in ("cert", "key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.resolve())

    def superlink_args(self) -> list[str]:
        if self.cert is None or self.key is None:
            raise ValueError("a SuperLink needs a certificate and a key to serve TLS")
        return [
            "--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key),
            "--ssl-ca-certfile", str(self.ca),
        ]  # fmt: skip

    def client_args(self) -> list[str]:
        return ["--root-certificates", str(self.ca)]


def flower_bin(name: str) -> str:
    """A Flower console script: next to this interpreter first (venvs), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (install edgefleet[federated])")
    return found


def with_flower_path(env: dict[str, str]) -> dict[str, str]:
    """Put this interpreter's bin dir first on PATH: Flower spawns ``flower-superexec`` and
    ``flwr-clientapp`` by bare name, which must resolve to the same environment."""
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    return env


def toml_value(value: object) -> str:
    """A TOML literal for a str/int/float/bool (Flower reads node config as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_toml_table(path: Path, values: Mapping[str, object]) -> Path:
    """Write flat ``key = value`` lines (no quoting surprises, unlike a ``k=v`` CLI string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'"{k}" = {toml_value(v)}\n' for k, v in values.items()))
    return path


class SupervisedProcess:
    """A child process restarted with capped exponential backoff whenever it exits unasked."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        restart: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        name: str = "process",
        pidfile: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = with_flower_path({**os.environ, **(env or {})})
        self.log_path = log_path
        self.restart = restart
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.name = name
        self.restarts = 0
        self.pidfile = pidfile
        self.adopted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The current child's pid (changes on restart)."""
        if self._adopted_pid is not None:
            return self._adopted_pid
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        """True while the current child is alive."""
        if self._adopted_pid is not None:
            return pid_alive(self._adopted_pid)
        return self._proc is not None and self._proc.poll() is None

    def _adopt_previous(self) -> bool:
        """Take over the process a previous supervisor left running (it was killed -9).

        With a ``pidfile``, a restarted supervisor (the coordinator, an agent) finds the
        process it started last time. If that process still runs the very same command line
        it is adopted -- a federated run in flight survives the supervisor's restart; if it
        runs an older command line (different port, certificates ...) its group is stopped
        so the new one can bind. Anything else with that pid is left alone.
        """
        if self.pidfile is None or not self.pidfile.exists():
            return False
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        cmdline = _cmdline(pid)
        if not cmdline or not pid_alive(pid) or self.argv[0] not in cmdline:
            return False
        if cmdline[-len(self.argv) :] == self.argv:
            self._adopted_pid = pid
            self.adopted = True
            log.info("%s adopted from a previous supervisor (pid %s)", self.name, pid)
            return True
        log.info("%s: stopping a stale instance (pid %s, other arguments)", self.name, pid)
        _stop_group(pid, timeout=5.0)
        return False

    def _write_pidfile(self) -> None:
        if self.pidfile is not None and self.pid is not None:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.pidfile, f"{self.pid}\n")

    def _spawn(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            if self.log_path and not isinstance(out, int):
                out.close()
        self._adopted_pid = None
        self._write_pidfile()
        log.info("%s started (pid %s)", self.name, self._proc.pid)

    def start(self) -> SupervisedProcess:
        """Start the child and the watchdog thread."""
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        with self._lock:
            if not self._adopt_previous():
                self._spawn()
        _LIVE.add(self)
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        delay = self.backoff
        while not self._stopping.is_set():
            proc, adopted = self._proc, self._adopted_pid
            if adopted is not None:
                code: int | None = None if pid_alive(adopted) else -1
            elif proc is None:
                return
            else:
                code = proc.poll()
            if code is None:
                started = time.monotonic()
                self._stopping.wait(0.2)
                if time.monotonic() - started > 30:
                    delay = self.backoff
                continue
            # orphans of the dead child (superexec, app processes)
            _kill_group_of(adopted if adopted is not None else proc.pid)  # type: ignore[union-attr]
            if self._stopping.is_set() or not self.restart:
                return
            log.warning("%s exited with %s; restarting in %.1fs", self.name, code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
                self.restarts += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, SIGTERM the child's group, SIGKILL it after ``timeout``."""
        self._stopping.set()
        _LIVE.discard(self)
        with self._lock:
            proc, adopted = self._proc, self._adopted_pid
        if adopted is not None:
            _stop_group(adopted, timeout)
        elif proc is not None:
            _kill_group_of(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            _kill_group_of(proc.pid, signal.SIGKILL)
            proc.wait()
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)
        if self._watcher is not None:
            self._watcher.join(timeout)

    def __enter__(self) -> SupervisedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group_of(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a supervised process's whole group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it has exited and awaits its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM a process group that is not our child, SIGKILL it after ``timeout``."""
    _kill_group_of(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_group_of(pid, signal.SIGKILL)

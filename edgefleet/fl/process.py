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
from pathlib import Path

__all__ = ["SupervisedProcess", "flower_bin", "toml_value", "with_flower_path", "write_toml_table"]

log = logging.getLogger(__name__)
_LIVE: set[SupervisedProcess] = set()


@atexit.register
def _stop_all() -> None:
    """Never leave a SuperLink/SuperNode behind when the supervising interpreter exits."""
    for proc in list(_LIVE):
        proc.stop(timeout=3.0)


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
    ) -> None:
        self.argv = list(argv)
        self.env = with_flower_path({**os.environ, **(env or {})})
        self.log_path = log_path
        self.restart = restart
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.name = name
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The current child's pid (changes on restart)."""
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        """True while the current child is alive."""
        return self._proc is not None and self._proc.poll() is None

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
        log.info("%s started (pid %s)", self.name, self._proc.pid)

    def start(self) -> SupervisedProcess:
        """Start the child and the watchdog thread."""
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        with self._lock:
            self._spawn()
        _LIVE.add(self)
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        delay = self.backoff
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.poll()
            if code is None:
                started = time.monotonic()
                self._stopping.wait(0.2)
                if time.monotonic() - started > 30:
                    delay = self.backoff
                continue
            self._kill_group(proc)  # orphans of the dead child (superexec, app processes)
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

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, SIGTERM the child's group, SIGKILL it after ``timeout``."""
        self._stopping.set()
        _LIVE.discard(self)
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._kill_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            self._kill_group(proc, signal.SIGKILL)
            proc.wait()
        if self._watcher is not None:
            self._watcher.join(timeout)

    def __enter__(self) -> SupervisedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

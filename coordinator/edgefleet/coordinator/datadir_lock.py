"""One coordinator per data dir, enforced with a lock held for the process's life.

Why: two coordinators on one data dir share its embedded Redis, SuperLink and
``coordinator.json``. The second one used to adopt the first one's SuperLink,
stop it, and on exit shut the shared Redis down under the first. An
``fcntl.flock`` on ``DATA_DIR/coordinator.lock`` is released by the kernel when
the process dies however it dies (kill -9 too), so a crashed coordinator never
leaves a stale lock behind, and a second start is refused while the first runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "coordinator.lock"

# Locks this process holds, by resolved data dir. The descriptors stay open until the
# process exits: a coordinator stopped and started again in one process keeps its lock.
_held: dict[Path, int] = {}


class DataDirLocked(RuntimeError):
    """Another process runs a coordinator on this data dir."""


def lock_data_dir(data_dir: Path) -> Path:
    """Take the data dir's lock for the rest of this process's life; returns the lock file.

    Raises ``DataDirLocked`` naming the holder's pid when another process has it.
    """
    key = data_dir.resolve()
    path = key / LOCK_FILE
    if key in _held:
        return path
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise DataDirLocked(
            f"another coordinator (pid {_holder(path)}) is running on {key}; "
            "stop it first or use another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return path


def _holder(path: Path) -> str:
    """The pid the holder wrote into the lock file, or "unknown" if it has not yet."""
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if text.isdigit():
            return text
    return "unknown"

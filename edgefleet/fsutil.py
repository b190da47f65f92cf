"""Crash-safe small-file writes, the one way the agent and the coordinator replace a file.

Why one helper: state files (identity, serving record, model index, pidfiles, announced
archive sizes, the ClientApp's status file) must never be seen half-written, and must survive
a power cut once the call returns. That takes four steps that are easy to get partly right:
write a temporary file *in the same directory* (so the rename stays on one filesystem), fsync
it, ``os.replace`` it over the target (atomic on POSIX), then fsync the directory so the rename
itself is durable. :func:`atomic_write` does all four; a reader sees the old file or the new
one, never neither and never a torn one. :func:`atomic_replace` is the same steps around a
writer that wants a file name (a library's ``save_file``) or a check of what it wrote before
the file takes its name.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_replace", "atomic_write", "fsync_dir"]


def fsync_dir(path: Path | str) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_replace(path: Path | str) -> Iterator[Path]:
    """The temporary file that replaces ``path`` when the ``with`` body returns.

    The body writes the yielded path (any writer; it may also read back what it wrote and
    raise to refuse it); on return the file is fsynced, renamed over ``path`` and the directory
    fsynced; on an exception the temporary is removed and ``path`` is untouched. The temporary
    is ``<name>.<pid>.<thread>.tmp`` beside the target (unique per writer, so concurrent
    writers never share one; it starts with the target's name, so a clean-up that keeps
    ``<id>.*`` keeps it too), and a crashed writer's leftover of that name is removed first.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):  # a crashed writer's leftover: fresh mode bits
        tmp.unlink()
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: bytes | str, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` atomically and durably (:func:`atomic_replace`).

    ``mode`` is the new file's permission bits, as for :func:`os.open` (the umask applies):
    ``0o600`` for a secret, which is never readable by others, not even for a moment. Text is
    written as UTF-8.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_replace(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)

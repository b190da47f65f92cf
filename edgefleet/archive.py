"""Deterministic archives of bundle directories, and a safe unpacker for them.

Why an archive at all: a bundle is a directory, but a download that resumes from a byte
offset needs one byte string. Why deterministic: the archive is rebuilt on demand (by any
coordinator replica, after a cache wipe) and an agent resumes a half-downloaded one days
later; that only works if the same bundle always yields the same bytes. So the archive is an
uncompressed POSIX ustar with members in sorted order and every varying header field zeroed
(mtime, uid/gid, owner names, mode fixed to 0644). Uncompressed because the weights inside are
already dense and compression would cost the smallest devices CPU for nothing.

Why a careful unpacker: ``tarfile.extractall`` honours absolute paths, ``..``, links and device
nodes. Even though the agent checks the archive's sha256 before unpacking, the unpacker trusts
nothing: regular files only, flat safe names (a bundle has no subdirectories), no duplicates,
and limits on member count, member size and total size, checked against the header *before*
any byte is written.

Standard library only: the agent imports this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DEFAULT_LIMITS",
    "ArchiveInfo",
    "Limits",
    "UnsafeArchiveError",
    "pack_directory",
    "unpack_archive",
]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COPY_BLOCK = 1 << 20


class UnsafeArchiveError(ValueError):
    """The archive holds something the unpacker refuses (path escape, link, oversize...)."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds an archive must respect before a single byte is written to disk."""

    max_members: int = 256
    max_member_bytes: int = 2 * 1024**3
    max_total_bytes: int = 4 * 1024**3


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`pack_directory` wrote: the byte count and sha256 of the whole archive."""

    size: int
    sha256: str


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self._out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def _entries(directory: Path) -> list[Path]:
    entries = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if path.is_symlink() or not path.is_file():
            raise UnsafeArchiveError(f"{path}: only regular files can be archived")
        if not _SAFE_NAME.match(path.name):
            raise UnsafeArchiveError(f"{path.name!r}: not a safe bundle file name")
        entries.append(path)
    return entries


def pack_directory(directory: Path | str, out: BinaryIO) -> ArchiveInfo:
    """Write the deterministic archive of a flat directory to ``out``; return its size and hash.

    The same directory contents always produce the same bytes (names sorted, headers
    normalised), whatever the files' timestamps, owners or creation order.
    """
    writer = _HashingWriter(out)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for path in _entries(Path(directory)):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return ArchiveInfo(size=writer.size, sha256=writer.hash.hexdigest())


def _check_member(member: tarfile.TarInfo, seen: set[str], limits: Limits) -> None:
    name = member.name
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = "link" if member.issym() or member.islnk() else "non-regular member"
        raise UnsafeArchiveError(f"{name!r}: {kind} refused (bundles hold regular files only)")
    if name.startswith("/") or ".." in name.split("/") or not _SAFE_NAME.match(name):
        raise UnsafeArchiveError(f"{name!r}: unsafe member name (absolute, '..', or nested)")
    if name in seen:
        raise UnsafeArchiveError(f"{name!r}: appears twice")
    if member.size < 0 or member.size > limits.max_member_bytes:
        raise UnsafeArchiveError(
            f"{name!r}: {member.size} bytes exceeds the {limits.max_member_bytes}-byte limit"
        )


def unpack_archive(
    source: Path | str | BinaryIO, dest: Path | str, limits: Limits = DEFAULT_LIMITS
) -> list[str]:
    """Unpack an archive made by :func:`pack_directory` into the existing empty dir ``dest``.

    Returns the names written. Raises :class:`UnsafeArchiveError` on anything but flat regular
    files within ``limits``; the caller discards ``dest`` then (it may hold some files).
    Files are created with ``O_EXCL`` so nothing already in ``dest`` can be overwritten or
    followed.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return unpack_archive(fh, dest, limits)
    dest = Path(dest)
    names: list[str] = []
    seen: set[str] = set()
    total = 0
    try:
        tar = tarfile.open(fileobj=source, mode="r|")  # noqa: SIM115 - closed by the with below
    except tarfile.TarError as exc:
        raise UnsafeArchiveError(f"not a readable archive: {exc}") from exc
    with tar:
        try:
            for member in tar:
                if len(names) >= limits.max_members:
                    raise UnsafeArchiveError(f"more than {limits.max_members} members")
                _check_member(member, seen, limits)
                total += member.size
                if total > limits.max_total_bytes:
                    raise UnsafeArchiveError(
                        f"archive expands past the {limits.max_total_bytes}-byte limit"
                    )
                seen.add(member.name)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - regular members always have data
                    raise UnsafeArchiveError(f"{member.name!r}: no data")
                fd = os.open(
                    dest / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
                )
                with os.fdopen(fd, "wb") as out:
                    remaining = member.size
                    while remaining:
                        block = src.read(min(_COPY_BLOCK, remaining))
                        if not block:
                            raise UnsafeArchiveError(f"{member.name!r}: archive is truncated")
                        out.write(block)
                        remaining -= len(block)
                names.append(member.name)
        except tarfile.TarError as exc:
            raise UnsafeArchiveError(f"corrupt archive: {exc}") from exc
    return names

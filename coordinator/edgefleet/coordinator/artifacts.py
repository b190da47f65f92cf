"""The artifact service: variant bundles streamed to agents in resumable chunks.

A bundle directory is served as its deterministic archive (``edgefleet.archive``), built
once per variant and cached under ``<data dir>/artifacts/``. Because the archive of a bundle
is always the same bytes, an agent resumes a cut download by asking for the bytes from the
size of what it holds, and every chunk carries the archive's size and sha256 so the agent
can check the whole file end to end before unpacking it.

The cache is written atomically (temp file, fsync, rename; the small ``.json`` sidecar with
the size and hash goes last), so a crash mid-build leaves either nothing or a complete
archive, never a torn one that would be streamed to a device. Before the first archive of a
variant is built, the bundle is verified completely (hash, signature, every file): the
coordinator never ships a bundle it would not load itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgefleet.archive import pack_directory
from edgefleet.bundle import BundleError
from edgefleet.coordinator.errors import (
    CoordinatorError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from edgefleet.coordinator.limits import StreamLimitError, StreamSlots
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import Registry
from edgefleet.coordinator.rollouts import RolloutManager
from edgefleet.coordinator.servicers import _guard, bearer_token, peer_device_id
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.fsutil import atomic_write
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc
from edgefleet.variant_store import UnknownVariantError, VariantStore

__all__ = [
    "CHUNK_BYTES",
    "SERVICE_NAME",
    "ArchiveCache",
    "ArtifactServicer",
    "CachedArchive",
    "add_artifact_service",
]

log = logging.getLogger(__name__)

SERVICE_NAME: str = artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name
# 64 KiB: large enough that per-message overhead is small, small enough that a device on a
# slow link sees progress (and resumes losing little) every fraction of a second.
CHUNK_BYTES = 64 * 1024
_VARIANT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CachedArchive:
    """A built archive on disk with the size and sha256 every chunk repeats."""

    variant_id: str
    path: Path
    size: int
    sha256: str


class ArchiveCache:
    """Builds each variant's archive once, atomically, and remembers where it is."""

    def __init__(self, variants: VariantStore, directory: Path | None = None) -> None:
        self._variants = variants
        self.directory = directory or variants.root / "artifacts"
        self._locks: dict[str, asyncio.Lock] = {}
        self._known: dict[str, CachedArchive] = {}

    async def get(self, variant_id: str) -> CachedArchive:
        """The archive of ``variant_id``, building it the first time (NotFound if unknown)."""
        known = self._known.get(variant_id)
        if known is not None and known.path.is_file():
            return known
        lock = self._locks.setdefault(variant_id, asyncio.Lock())
        async with lock:
            known = self._known.get(variant_id)
            if known is None or not known.path.is_file():
                known = await asyncio.to_thread(self._load_or_build, variant_id)
                self._known[variant_id] = known
        return known

    def _paths(self, variant_id: str) -> tuple[Path, Path]:
        return self.directory / f"{variant_id}.tar", self.directory / f"{variant_id}.json"

    def _load_or_build(self, variant_id: str) -> CachedArchive:
        tar_path, meta_path = self._paths(variant_id)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            meta = json.loads(meta_path.read_text())
            size, sha = int(meta["size"]), str(meta["sha256"])
            if tar_path.stat().st_size == size:
                return CachedArchive(variant_id, tar_path, size, sha)
        return self._build(variant_id)

    def _build(self, variant_id: str) -> CachedArchive:
        bundle_dir = self._variants.variants_dir / variant_id
        if not bundle_dir.is_dir():
            raise NotFound(f"unknown variant {variant_id}")
        try:
            self._variants.load(variant_id)  # full verification before it leaves this host
        except (BundleError, UnknownVariantError) as exc:
            log.error("refusing to serve variant %s: %s", variant_id[:12], exc)
            raise NotFound(f"variant {variant_id} is not servable: {exc}") from exc
        self.directory.mkdir(parents=True, exist_ok=True)
        tar_path, meta_path = self._paths(variant_id)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=self.directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                info = pack_directory(bundle_dir, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, tar_path)
            atomic_write(meta_path, json.dumps({"size": info.size, "sha256": info.sha256}))
        finally:
            tmp.unlink(missing_ok=True)
        log.info(
            "built archive of variant %s: %d bytes, sha256 %s",
            variant_id[:12],
            info.size,
            info.sha256[:12],
        )
        return CachedArchive(variant_id, tar_path, info.size, info.sha256)


class ArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):  # type: ignore[misc]
    """DownloadArtifact: authenticate the device, then stream the archive from an offset.

    A device gets only the variant it is desired to run (or, during a rollout, the one it
    would roll back to): PERMISSION_DENIED otherwise, so a credential is not a key to the
    whole model store. Streams in flight are capped per device and in total
    (:class:`StreamSlots`, RESOURCE_EXHAUSTED over a cap).
    """

    def __init__(
        self,
        registry: Registry,
        variants: VariantStore,
        slots: StreamSlots,
        rollouts: RolloutManager | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be > 0")
        self._metrics = metrics  # counts refused authentications (edgefleet_auth_failures_total)
        self._registry = registry
        self._cache = ArchiveCache(variants)
        self._slots = slots
        self._rollouts = rollouts
        self._chunk = chunk_bytes

    async def _authorize(
        self,
        request: artifact_pb2.DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        record = await self._registry.authenticate_device(
            request.device_id, bearer_token(context), peer_device_id(context)
        )
        if not _VARIANT_ID.match(request.variant_id):
            raise InvalidArgument("variant_id", "must be a full 64-hex-digit variant id")
        if request.offset < 0:
            raise InvalidArgument("offset", "must be >= 0")
        if request.variant_id != record.desired.variant and (
            request.variant_id != await self._rollback_target(record)
        ):
            raise PermissionDenied(
                f"device {record.id} may download only its desired variant "
                f"({record.desired.variant[:12] or 'none assigned'}), "
                f"not {request.variant_id[:12]}"
            )

    async def _rollback_target(self, record: DeviceRecord) -> str:
        """The variant the device goes back to if its current rollout is rolled back, or "".

        Read only for a request that is not for the desired variant (rare for an agent,
        which fetches nothing else), so a normal download costs no rollout read.
        """
        if self._rollouts is None or not record.desired.rollout:
            return ""
        try:
            rollout = await self._rollouts.get(record.desired.rollout)
        except CoordinatorError:  # gone: nothing to roll back to
            return ""
        for planned in rollout.devices:
            if planned.device_id == record.id:
                return planned.previous.variant
        return ""

    async def DownloadArtifact(
        self,
        request: artifact_pb2.DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[artifact_pb2.ArtifactChunk]:
        await _guard(context, lambda: self._authorize(request, context), self._metrics)
        try:
            with self._slots.hold(request.device_id):
                archive = await _guard(context, lambda: self._cache.get(request.variant_id))
                chunks = self._stream(archive, request.offset, context)
                async with contextlib.aclosing(chunks):  # the archive closes with the call
                    async for chunk in chunks:
                        yield chunk
        except StreamLimitError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _stream(
        self,
        archive: CachedArchive,
        offset: int,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncGenerator[artifact_pb2.ArtifactChunk, None]:
        if offset > archive.size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {offset} is beyond the archive's {archive.size} bytes "
                "(discard the partial download and start from 0)",
            )
        if offset == archive.size:
            # Nothing left to send, but the client still learns size and hash to verify with.
            yield artifact_pb2.ArtifactChunk(
                offset=offset, data=b"", total_bytes=archive.size, archive_sha256=archive.sha256
            )
            return
        # Local-disk reads of one chunk take microseconds; they are done inline rather than
        # in a thread so the stream is not paced by thread hand-offs.
        with archive.path.open("rb") as fh:
            fh.seek(offset)
            while offset < archive.size:
                data = fh.read(min(self._chunk, archive.size - offset))
                if not data:
                    await context.abort(grpc.StatusCode.INTERNAL, "archive shrank while streaming")
                yield artifact_pb2.ArtifactChunk(
                    offset=offset,
                    data=data,
                    total_bytes=archive.size,
                    archive_sha256=archive.sha256,
                )
                offset += len(data)


def add_artifact_service(
    server: grpc.aio.Server,
    registry: Registry,
    variants: VariantStore,
    slots: StreamSlots,
    rollouts: RolloutManager | None = None,
    metrics: CoordinatorMetrics | None = None,
) -> str:
    """Serve ArtifactService on ``server``; return its full name (for health and reflection)."""
    artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(
        ArtifactServicer(registry, variants, slots, rollouts, metrics=metrics), server
    )
    return SERVICE_NAME

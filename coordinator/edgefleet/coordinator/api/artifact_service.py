"""ArtifactService: variant archives streamed to agents in resumable chunks.

Every chunk carries the archive's size and sha256, so an agent resumes a cut download
from the size of what it holds and checks the whole file end to end before unpacking
it. Which archive, built how, and who may have it is ``coordinator.artifacts``; this
module authenticates the call, holds a stream slot, and streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from edgefleet.coordinator.api.guard import bearer_token, guard, peer_device_id
from edgefleet.coordinator.artifacts import ArchiveCache, CachedArchive, authorize_download
from edgefleet.coordinator.delta_serving import DeltaCache, delta_base_for
from edgefleet.coordinator.limits import StreamLimitError, StreamSlots
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import Registry
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc
from edgefleet.variant_store import VariantStore

__all__ = ["CHUNK_BYTES", "SERVICE_NAME", "ArtifactServicer", "add_artifact_service"]

SERVICE_NAME: str = artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name
# 64 KiB: large enough that per-message overhead is small, small enough that a device on a
# slow link sees progress (and resumes losing little) every fraction of a second.
CHUNK_BYTES = 64 * 1024


class ArtifactServicer(artifact_pb2_grpc.ArtifactServiceServicer):  # type: ignore[misc]
    """DownloadArtifact: authenticate the device, then stream the archive from an offset.

    A device gets only the variant it is desired to run (or, during a rollout, the one it
    would roll back to): PERMISSION_DENIED otherwise (:func:`authorize_download`). Streams
    in flight are capped per device and in total (:class:`StreamSlots`, RESOURCE_EXHAUSTED
    over a cap).
    """

    def __init__(
        self,
        registry: Registry,
        variants: VariantStore,
        slots: StreamSlots,
        rollouts: RolloutManager | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        metrics: CoordinatorMetrics | None = None,
        trusted_keys: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be > 0")
        self._metrics = metrics  # counts refused authentications (edgefleet_auth_failures_total)
        self._registry = registry
        self._cache = ArchiveCache(variants, trusted_keys=trusted_keys)
        # Delta deployment (coordinator.delta_serving): a device naming the variant it holds
        # in ``have_variant`` may get a signed delta instead of the archive.
        self.deltas = DeltaCache(
            variants, self._cache.directory / "deltas", trusted_keys=trusted_keys, metrics=metrics
        )
        self._slots = slots
        self._rollouts = rollouts
        self._chunk = chunk_bytes

    async def _authorize(
        self,
        request: artifact_pb2.DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> DeviceRecord:
        return await authorize_download(
            self._registry,
            self._rollouts,
            request.device_id,
            bearer_token(context),
            peer_device_id(context),
            request.variant_id,
            request.offset,
        )

    async def DownloadArtifact(
        self,
        request: artifact_pb2.DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[artifact_pb2.ArtifactChunk]:
        record = await guard(context, lambda: self._authorize(request, context), self._metrics)
        try:
            with self._slots.hold(request.device_id):
                archive = await guard(context, lambda: self._cache.get(request.variant_id))
                base = delta_base_for(
                    record, request.have_variant, request.variant_id, request.offset
                )
                delta = await self.deltas.get(base, request.variant_id, archive) if base else None
                if delta is not None:
                    self.deltas.count_served(delta, archive)
                chunks = self._stream(
                    delta or archive, request.offset, context, base if delta else ""
                )
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
        delta_base: str = "",
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
                offset=offset,
                data=b"",
                total_bytes=archive.size,
                archive_sha256=archive.sha256,
                delta_base=delta_base,
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
                    delta_base=delta_base,
                )
                offset += len(data)


def add_artifact_service(
    server: grpc.aio.Server,
    registry: Registry,
    variants: VariantStore,
    slots: StreamSlots,
    rollouts: RolloutManager | None = None,
    metrics: CoordinatorMetrics | None = None,
    trusted_keys: Callable[[], Sequence[str]] | None = None,
) -> str:
    """Serve ArtifactService on ``server``; return its full name (for health and reflection).

    ``trusted_keys``: the fleet's signing keys a bundle may carry (default: the store's own).
    """
    artifact_pb2_grpc.add_ArtifactServiceServicer_to_server(
        ArtifactServicer(
            registry, variants, slots, rollouts, metrics=metrics, trusted_keys=trusted_keys
        ),
        server,
    )
    return SERVICE_NAME

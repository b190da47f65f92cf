"""Delta deployment, agent side: rebuild a variant from the one served plus a signed delta.

When a download of variant B starts from byte 0, the agent names the variant it serves (or
keeps for rollback) in ``have_variant`` of that same request. If the coordinator answers with
a delta (chunks carry ``delta_base``), the agent collects it (:func:`read_delta`) (small: a fine-tune changes a few tensors), checks its
end-to-end sha256, verifies its signature and applies it to its own verified copy of the base
(``edgefleet.delta``), then verifies the rebuilt directory as a bundle exactly as a full
download is verified (``load_bundle``: B's id, a trusted signature, every file's hash) and
only then renames it into ``variants/B``.

Any failure - transfer, hash, signature, a base that does not fit, a rebuilt file with the
wrong hash - is logged as "falling back to the full bundle" and the caller downloads B's
archive as always: a delta can make an update cheaper, never make it fail. If the coordinator
answers with the full archive instead (an old coordinator, no qualifying pair), that answer
*is* the ordinary resumable download: asking costs no extra request and no extra byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, load_bundle
from edgefleet.delta import DeltaError, apply_delta
from edgefleet.v1 import artifact_pb2

__all__ = ["DeltaOutcome", "install_delta", "read_delta"]

log = logging.getLogger("edgefleet.agent.delta")


class DeltaTarget(Protocol):
    """What this module needs of the agent's ``ArtifactCache`` (which imports this module)."""

    @property
    def variants_dir(self) -> Path: ...

    @property
    def trusted_keys(self) -> list[Ed25519PublicKey]: ...

    @property
    def delta_fallbacks(self) -> list[str]: ...


@dataclass(frozen=True)
class DeltaOutcome:
    """A variant installed from a delta: against which base, and how many bytes it took."""

    base: str
    bytes_received: int


class _Fallback(Exception):
    """Internal: give up on the delta; the full archive is fetched instead."""


async def read_delta(
    call: Any, first: artifact_pb2.ArtifactChunk, idle_timeout: float, max_bytes: int
) -> bytes | str:
    """The rest of a delta stream whose ``first`` chunk was already read: the whole delta
    with its announced size and sha256 checked, or the reason it is unusable."""
    announced = (first.delta_base, first.total_bytes, first.archive_sha256)
    if first.total_bytes > max_bytes:
        return f"delta of {first.total_bytes} bytes is over the limit"
    parts: list[bytes] = []
    pos = 0
    chunk = first
    try:
        while True:
            if (chunk.delta_base, chunk.total_bytes, chunk.archive_sha256) != announced:
                return "delta changed mid-stream"
            if chunk.offset != pos or pos + len(chunk.data) > chunk.total_bytes:
                return f"delta chunk at {chunk.offset}, expected {pos}"
            parts.append(chunk.data)
            pos += len(chunk.data)
            try:
                msg = await asyncio.wait_for(call.read(), idle_timeout)
            except TimeoutError:
                return f"delta stalled at byte {pos}"
            if msg is grpc.aio.EOF:
                break
            chunk = msg
    except grpc.aio.AioRpcError as err:
        return f"delta interrupted ({err.code().name}: {err.details()})"
    blob = b"".join(parts)
    if len(blob) != announced[1] or hashlib.sha256(blob).hexdigest() != announced[2]:
        return "delta size or sha256 does not match what the coordinator announced"
    return blob


async def install_delta(
    cache: DeltaTarget, variant_id: str, base: str, blob: bytes | str
) -> DeltaOutcome | None:
    """Rebuild, verify and install ``variant_id`` from ``base`` + ``blob``; None (logged as a
    fallback, and noted in ``cache.delta_fallbacks``) if anything does not check out."""
    try:
        if isinstance(blob, str):
            raise _Fallback(blob)
        await asyncio.to_thread(_install, cache, variant_id, base, blob)
    except _Fallback as why:
        cache.delta_fallbacks.append(str(why))
        log.warning(
            "delta for variant %s refused (%s); falling back to the full bundle",
            variant_id[:12],
            why,
        )
        return None
    log.info("variant %s rebuilt from %s + a %d-byte delta", variant_id[:12], base[:12], len(blob))
    return DeltaOutcome(base, len(blob))


def _install(cache: DeltaTarget, variant_id: str, base: str, blob: bytes) -> None:
    """Rebuild in a temp dir inside ``variants/``, verify as a bundle, rename into place."""
    trusted = cache.trusted_keys
    try:
        base_bundle = load_bundle(cache.variants_dir / base, trusted, base)
    except BundleError as exc:  # the base is damaged: use the archive
        raise _Fallback(f"base {base[:12]} unusable: {exc}") from None
    try:
        plan = apply_delta(blob, base, base_bundle.files, trusted)
    except DeltaError as exc:
        raise _Fallback(str(exc)) from None
    if plan.target != variant_id:
        raise _Fallback(f"delta rebuilds {plan.target[:12]}, not {variant_id[:12]}")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.variants_dir))
    staging = tmp / variant_id
    try:
        staging.mkdir()
        for name, data in plan.files.items():
            if name in (MANIFEST_NAME, SIGNATURE_NAME) or "/" in name or name.startswith("."):
                raise _Fallback(f"illegal file name {name!r} in the delta")
            (staging / name).write_bytes(data)
        (staging / SIGNATURE_NAME).write_bytes(plan.signature)
        (staging / MANIFEST_NAME).write_bytes(plan.manifest)
        try:  # exactly the verification of a full download
            load_bundle(staging, trusted, variant_id)
        except BundleError as exc:
            raise _Fallback(f"rebuilt bundle refused: {exc}") from None
        final = cache.variants_dir / variant_id
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
        fd = os.open(cache.variants_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

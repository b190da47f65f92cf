"""The agent's artifact cache: resumable verified downloads and atomic activation.

Layout under ``<state dir>/artifacts/``::

    downloads/<id>.part     bytes of the archive received so far (appended chunk by chunk)
    downloads/<id>.json     the archive's size and sha256 as the coordinator announced them
    variants/<id>/          verified bundles, content-addressed by variant id (manifest sha256)
    activation.json         what is served and what is in flight (``edgefleet.agent.activation``): the
                            single source of truth for the two links below
    current -> variants/<id>    the bundle being served (derived from the record)
    previous -> variants/<id>   the bundle kept for rollback (derived from the record)

Why it is built this way:

- **Resumable**: a cut stream leaves ``<id>.part`` holding whole chunks; the next attempt asks
  for the bytes from its size. The coordinator's archive of a bundle is deterministic, so the
  resumed tail fits the head. If the assembled file does not hash to the announced sha256 (a
  byte rotted on disk, a torn write at power loss), the partial is discarded and the archive
  fetched once more from zero before the failure is reported.
- **Verified before visible**: the whole archive's sha256 is checked, then it is unpacked by
  the safe unpacker into a temporary directory *inside* ``variants/`` and loaded with
  ``load_bundle`` (signature by a key the coordinator gave at registration, expected variant
  id, every file's hash). Only then is it renamed to ``variants/<id>``: a half-written or
  unverified bundle is never at a path anything reads.
- **Atomic activation**: the activation record is written first (atomically), then
  ``current`` and ``previous``, symlinks swapped with ``os.replace`` of a freshly made link, so
  a reader sees the old bundle or the new one, never neither. The stages around it (verify,
  load into a runtime, commit or roll back, and recovery after a crash) are
  ``edgefleet.agent.update``'s.
- **Slow links**: with ``link_kbps`` set (a simulated device profile) the agent reads the
  stream at that rate; gRPC flow control then slows the sender. There is no deadline that
  grows with size: each chunk must arrive within ``idle_timeout`` seconds, however many
  chunks there are.

The agent never imports the coordinator: only the generated stubs and the shared
``edgefleet.bundle`` / ``edgefleet.archive`` modules.

Size: a little over 500 lines because the download, its resume/restart rules, the staging
install and activation share one set of on-disk conventions (partial, announced size/hash,
``variants/`` temp dirs) that would leak across modules if split; delta deployment's own work
(collecting, applying and verifying a delta) is ``edgefleet.agent.delta_apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.activation import ActivationRecord, ActivationStore, Stage
from edgefleet.agent.delta_apply import install_delta, read_delta
from edgefleet.archive import DEFAULT_LIMITS, Limits, UnsafeArchiveError, unpack_archive
from edgefleet.bundle import Bundle, BundleError, load_bundle
from edgefleet.fsutil import atomic_write
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc

__all__ = [
    "ArtifactCache",
    "ArtifactError",
    "DownloadResult",
    "IntegrityError",
    "TransferError",
    "UnknownVariantError",
]

log = logging.getLogger("edgefleet.agent.artifacts")

_VARIANT_ID = re.compile(r"^[0-9a-f]{64}$")
_HASH_BLOCK = 1 << 20
DEFAULT_IDLE_TIMEOUT = 30.0

Metadata = Sequence[tuple[str, str]]


class ArtifactError(Exception):
    """A variant could not be made available; ``str(err)`` is the reason to report."""

    #: True when retrying soon will not help (bad bytes, bad signature, unknown variant).
    permanent = True


class IntegrityError(ArtifactError):
    """The bytes are wrong: archive hash, unsafe archive, or a bundle that fails verification."""


class UnknownVariantError(ArtifactError):
    """The coordinator does not have the variant (NOT_FOUND)."""


class TransferError(ArtifactError):
    """The transfer broke off (network, stall, coordinator away); the partial file is kept."""

    permanent = False


@dataclass(frozen=True)
class DownloadResult:
    """How a variant became available: from the cache, or over the wire from an offset."""

    variant_id: str
    path: Path
    cached: bool
    resumed_from: int = 0
    bytes_received: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    delta_base: str = ""  # rebuilt from this variant + a delta (edgefleet.agent.delta_apply)


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_public_keys(hex_keys: Iterable[str]) -> list[Ed25519PublicKey]:
    """Ed25519 keys from the hex strings the coordinator sends at registration."""
    keys = []
    for item in hex_keys:
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(item)))
        except ValueError as exc:
            raise IntegrityError(f"malformed bundle public key {item[:16]!r}: {exc}") from exc
    return keys


class _Restart(Exception):
    """Internal: the partial download is unusable; start again from byte zero."""


class _DeltaOffered(Exception):
    """Internal: the coordinator answered with a delta (or the reason it was unusable)."""

    def __init__(self, base: str, blob: bytes | str) -> None:
        super().__init__(base)
        self.base, self.blob = base, blob


class ArtifactCache:
    """Content-addressed bundles on the device, fetched over ``ArtifactService``."""

    def __init__(
        self,
        state_dir: Path,
        trusted_keys: Iterable[str] = (),
        *,
        link_kbps: int = 0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0")
        self.root = Path(state_dir) / "artifacts"
        self.variants_dir = self.root / "variants"
        self.downloads_dir = self.root / "downloads"
        self.link_kbps = link_kbps
        self.idle_timeout = idle_timeout
        self.limits = limits
        self._trusted = parse_public_keys(trusted_keys)
        #: Offsets of every DownloadArtifact request made, in order (diagnostics and tests).
        self.request_offsets: list[int] = []
        #: Delta deployment: name the variant held when a download starts from byte 0.
        self.use_deltas = True
        #: Why each delta offered was refused (then the full archive was fetched).
        self.delta_fallbacks: list[str] = []
        self.store = ActivationStore(self.root)
        for d in (self.variants_dir, self.downloads_dir):
            d.mkdir(parents=True, exist_ok=True)

    def set_trusted_keys(self, hex_keys: Iterable[str]) -> None:
        """Replace the signing keys bundles must carry (sent at enrolment and with every
        heartbeat, so a rotation applies at once: a bundle is verified against the current list
        whenever it is loaded). A malformed key raises IntegrityError and changes nothing."""
        self._trusted = parse_public_keys(hex_keys)

    @property
    def trusted_keys(self) -> list[Ed25519PublicKey]:
        return list(self._trusted)

    # --- state ----------------------------------------------------------------------------

    def activation(self) -> ActivationRecord:
        """The activation record: what is served, kept, and in flight (never writes)."""
        return self.store.read()

    def _present(self, variant_id: str) -> str:
        return variant_id if variant_id and (self.variants_dir / variant_id).is_dir() else ""

    def current(self) -> str:
        """The id of the bundle being served, or "" if none (from the activation record)."""
        return self._present(self.activation().variant)

    def previous(self) -> str:
        """The id of the bundle kept for rollback, or "" if none (from the activation record)."""
        return self._present(self.activation().previous)

    def has(self, variant_id: str) -> bool:
        return bool(_VARIANT_ID.match(variant_id)) and (self.variants_dir / variant_id).is_dir()

    def partial_bytes(self, variant_id: str) -> int:
        """How many bytes of ``variant_id``'s archive are already on disk (the resume offset)."""
        try:
            return (self.downloads_dir / f"{variant_id}.part").stat().st_size
        except FileNotFoundError:
            return 0

    def load(self, variant_id: str) -> Bundle:
        """Verify a cached bundle completely and return it (runtimes load through this)."""
        if not self._trusted:
            raise IntegrityError("no trusted bundle keys (the agent has not enrolled yet)")
        try:
            return load_bundle(self.variants_dir / variant_id, self._trusted, variant_id)
        except BundleError as exc:
            raise IntegrityError(f"bundle {variant_id[:12]} refused: {exc}") from exc

    def load_current(self) -> Bundle | None:
        current = self.current()
        return self.load(current) if current else None

    # --- download -------------------------------------------------------------------------

    async def fetch(
        self,
        variant_id: str,
        stub: artifact_pb2_grpc.ArtifactServiceStub,
        metadata: Metadata,
        device_id: str,
    ) -> DownloadResult:
        """Make ``variant_id`` available as a verified bundle; download what is missing.

        Raises :class:`TransferError` (transient: the partial is kept for the next attempt),
        :class:`IntegrityError` or :class:`UnknownVariantError` (permanent: nothing kept).
        """
        if not _VARIANT_ID.match(variant_id):
            raise UnknownVariantError(f"malformed variant id {variant_id!r}")
        if not self._trusted:
            raise IntegrityError("no trusted bundle keys (the agent has not enrolled yet)")
        final = self.variants_dir / variant_id
        if final.is_dir():
            try:
                await asyncio.to_thread(self.load, variant_id)
            except IntegrityError as exc:
                log.warning("cached bundle %s is damaged (%s); fetching again", variant_id, exc)
                shutil.rmtree(final, ignore_errors=True)
            else:
                return DownloadResult(variant_id, final, cached=True)
        started = time.monotonic()
        first_offset = self.partial_bytes(variant_id)
        received = 0
        held = (self.current() or self.previous()) if self.use_deltas else ""
        have = held if held != variant_id and not first_offset else ""
        attempt = 0
        while attempt < 2:
            attempt += 1
            try:
                got, total = await self._download(variant_id, stub, metadata, device_id, have)
                received += got
                await self._verify_archive(variant_id, total[1])
                await asyncio.to_thread(self._install, variant_id)
            except _DeltaOffered as offer:
                have, attempt = "", attempt - 1  # a refused delta: the full archive, as ever
                self._discard_partial(variant_id)  # the empty partial opened for the archive
                outcome = await install_delta(self, variant_id, offer.base, offer.blob)
                if outcome is None:
                    continue
                return DownloadResult(
                    variant_id,
                    final,
                    cached=False,
                    bytes_received=outcome.bytes_received,
                    total_bytes=outcome.bytes_received,
                    seconds=time.monotonic() - started,
                    attempts=1,
                    delta_base=outcome.base,
                )
            except _Restart as why:
                log.warning("variant %s: %s; downloading again from 0", variant_id[:12], why)
                self._discard_partial(variant_id)
                if attempt == 2:
                    raise IntegrityError(f"{why} (again after a fresh download)") from None
                continue
            return DownloadResult(
                variant_id,
                final,
                cached=False,
                resumed_from=first_offset,
                bytes_received=received,
                total_bytes=total[0],
                seconds=time.monotonic() - started,
                attempts=attempt,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard_partial(self, variant_id: str) -> None:
        _discard(
            self.downloads_dir / f"{variant_id}.part", self.downloads_dir / f"{variant_id}.json"
        )

    def _announced(self, variant_id: str) -> tuple[int, str] | None:
        try:
            meta = json.loads((self.downloads_dir / f"{variant_id}.json").read_text())
            return int(meta["size"]), str(meta["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _download(
        self,
        variant_id: str,
        stub: artifact_pb2_grpc.ArtifactServiceStub,
        metadata: Metadata,
        device_id: str,
        have_variant: str = "",
    ) -> tuple[int, tuple[int, str]]:
        """Append the missing tail to the partial file; return (bytes received, (size, sha)).

        With ``have_variant`` (offset 0 only) the coordinator may answer with a delta instead:
        raises :class:`_DeltaOffered` with it, and nothing is written to the partial."""
        part = self.downloads_dir / f"{variant_id}.part"
        offset = self.partial_bytes(variant_id)
        announced = self._announced(variant_id)
        if offset and announced is None:
            raise _Restart("partial download without its size/hash record")
        self.request_offsets.append(offset)
        call: Any = stub.DownloadArtifact(
            artifact_pb2.DownloadArtifactRequest(
                device_id=device_id,
                variant_id=variant_id,
                offset=offset,
                have_variant=have_variant if offset == 0 else "",
            ),
            metadata=tuple(metadata),
        )
        rate = self.link_kbps * 1000 / 8 if self.link_kbps > 0 else 0.0
        pos, received = offset, 0
        t0 = time.monotonic()
        try:
            with part.open("ab") as out:
                while True:
                    try:
                        msg = await asyncio.wait_for(call.read(), self.idle_timeout)
                    except TimeoutError:
                        raise TransferError(
                            f"no data for {self.idle_timeout:.0f}s at byte {pos} (link stalled); "
                            "will resume"
                        ) from None
                    if msg is grpc.aio.EOF:
                        break
                    chunk: artifact_pb2.ArtifactChunk = msg
                    if chunk.delta_base and have_variant and pos == 0:
                        blob = await read_delta(
                            call, chunk, self.idle_timeout, self.limits.max_total_bytes
                        )
                        raise _DeltaOffered(chunk.delta_base, blob)
                    size, sha = chunk.total_bytes, chunk.archive_sha256
                    if announced is None:
                        announced = (size, sha)
                        self._write_announced(variant_id, size, sha)
                    elif announced != (size, sha):
                        raise _Restart("the coordinator's archive changed since the partial began")
                    if chunk.offset != pos:
                        raise TransferError(f"chunk at offset {chunk.offset}, expected {pos}")
                    if pos + len(chunk.data) > size:
                        raise _Restart(f"stream runs past the announced {size} bytes")
                    # One write per chunk: a cut leaves whole chunks in the file.
                    out.write(chunk.data)
                    pos += len(chunk.data)
                    received += len(chunk.data)
                    if rate:
                        delay = received / rate - (time.monotonic() - t0)
                        if delay > 0:
                            await asyncio.sleep(delay)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.OUT_OF_RANGE:
                raise _Restart(f"partial is longer than the archive ({err.details()})") from None
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                self._discard_partial(variant_id)
                raise UnknownVariantError(
                    f"coordinator cannot serve variant {variant_id[:12]}: {err.details()}"
                ) from None
            raise TransferError(
                f"download interrupted at byte {pos} ({code.name}: {err.details()}); will resume"
            ) from None
        finally:
            call.cancel()  # no-op when the stream ended; stops the sender when we bail out
        if announced is None:
            raise TransferError("the coordinator sent no chunk")
        if pos < announced[0]:
            raise TransferError(
                f"stream ended at byte {pos} of {announced[0]}; will resume from there"
            )
        return received, announced

    def _write_announced(self, variant_id: str, size: int, sha: str) -> None:
        path = self.downloads_dir / f"{variant_id}.json"
        atomic_write(path, json.dumps({"size": size, "sha256": sha}))

    async def _verify_archive(self, variant_id: str, expected_sha: str) -> None:
        part = self.downloads_dir / f"{variant_id}.part"
        actual = await asyncio.to_thread(_file_sha256, part)
        if actual != expected_sha:
            raise _Restart(
                f"archive sha256 mismatch: got {actual[:12]}, coordinator said {expected_sha[:12]}"
            )

    def _install(self, variant_id: str) -> None:
        """Unpack and verify in a temp dir inside ``variants/``, then rename into place."""
        part = self.downloads_dir / f"{variant_id}.part"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.variants_dir))
        staging = tmp / variant_id
        try:
            staging.mkdir()
            try:
                unpack_archive(part, staging, self.limits)
                load_bundle(staging, self._trusted, variant_id)
            except (UnsafeArchiveError, BundleError) as exc:
                self._discard_partial(variant_id)
                raise IntegrityError(f"bundle {variant_id[:12]} refused: {exc}") from exc
            final = self.variants_dir / variant_id
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
            _fsync_dir(self.variants_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._discard_partial(variant_id)
        log.info("variant %s verified and cached", variant_id[:12])

    # --- activation -----------------------------------------------------------------------

    def activate(self, variant_id: str, runtime: str = "", generation: int = 0) -> None:
        """Serve ``variant_id`` (already fetched) in one commit; the bundle served until now
        becomes previous. No runtime is involved: the update machine stages one first."""
        if not self.has(variant_id):
            raise ArtifactError(f"variant {variant_id[:12]} is not in the cache")
        record = self.activation()
        if record.stage == Stage.IDLE and record.variant == variant_id:
            return
        self.store.commit(
            ActivationRecord(
                stage=Stage.COMMIT,
                variant=record.variant,
                previous=record.previous,
                generation=generation or record.generation,
                runtime=record.runtime,
                target=variant_id,
                target_runtime=runtime,
            )
        )
        log.info(
            "activated variant %s (previous %s)", variant_id[:12], record.variant[:12] or "none"
        )

    def deactivate(self, generation: int = 0) -> str:
        """Serve nothing (the coordinator rolled back to "no variant"); the bundle served until
        now becomes previous, kept for a quick return. Returns its id ("" if none)."""
        record = self.activation()
        if not record.variant:
            return ""
        self.store.commit(
            replace(
                record,
                stage=Stage.COMMIT,
                generation=generation or record.generation,
                target="",
                target_runtime="",
            )
        )
        log.info("deactivated variant %s: serving nothing", record.variant[:12])
        return record.variant

    def gc(self, keep: Iterable[str] = ()) -> list[str]:
        """Delete bundles and partial downloads other than current, previous and ``keep``."""
        kept = {self.current(), self.previous(), *keep} - {""}
        removed = []
        for entry in self.variants_dir.iterdir():
            if entry.name not in kept:
                shutil.rmtree(entry, ignore_errors=True)
                if not entry.name.startswith("."):
                    removed.append(entry.name)
        for entry in self.downloads_dir.iterdir():
            if entry.name.split(".", 1)[0] not in kept:
                _discard(entry)
        return removed

"""Variant archives for the artifact service: built once, cached, and handed only to the
device meant to run them (the streaming itself is ``api.artifact_service``).

A bundle directory is served as its deterministic archive (``edgefleet.archive``), built
once per variant and cached under ``<data dir>/artifacts/``. Because the archive of a bundle
is always the same bytes, an agent resumes a cut download by asking for the bytes from the
size of what it holds, and every chunk carries the archive's size and sha256 so the agent
can check the whole file end to end before unpacking it.

The cache is written atomically (temp file, fsync, rename; the small ``.json`` sidecar with
the size and hash goes last), so a crash mid-build leaves either nothing or a complete
archive, never a torn one that would be streamed to a device. Before the first archive of a
variant is built, the bundle is verified completely (hash, signature, every file): the
coordinator never ships a bundle it would not load itself. "Signature" means by one of the
fleet's trusted keys (the same list agents get with every heartbeat), not only the replica's
own signing key: during a key rotation a bundle signed by the incoming key is servable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.archive import pack_directory
from edgefleet.bundle import BundleError, load_bundle
from edgefleet.coordinator.errors import (
    CoordinatorError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from edgefleet.coordinator.registry import Registry
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.shared_store import bundle_dir_of
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.fsutil import atomic_write
from edgefleet.variant_store import StoreError, UnknownVariantError, VariantStore

__all__ = ["ArchiveCache", "CachedArchive", "authorize_download"]

log = logging.getLogger(__name__)

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

    def __init__(
        self,
        variants: VariantStore,
        directory: Path | None = None,
        trusted_keys: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._variants = variants
        self._trusted_keys = trusted_keys
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
        try:  # from the shared store (verified blob) if this replica has not seen it yet
            bundle_dir = bundle_dir_of(self._variants, variant_id)
        except UnknownVariantError:
            raise NotFound(f"unknown variant {variant_id}") from None
        except StoreError as exc:  # a corrupt blob: never served
            log.error("refusing to serve variant %s: %s", variant_id[:12], exc)
            raise NotFound(f"variant {variant_id} is not servable: {exc}") from None
        try:  # full verification before it leaves this host
            if self._trusted_keys is None:
                self._variants.load(variant_id)
            else:
                keys = [
                    Ed25519PublicKey.from_public_bytes(bytes.fromhex(k))
                    for k in self._trusted_keys()
                ]
                load_bundle(bundle_dir, keys, variant_id)
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


async def authorize_download(
    registry: Registry,
    rollouts: RolloutManager | None,
    device_id: str,
    credential: str,
    peer_device_id: str | None,
    variant_id: str,
    offset: int,
) -> DeviceRecord:
    """The device's record if it may download ``variant_id`` from ``offset``.

    A device gets only the variant it is desired to run (or, during a rollout, the one it
    would roll back to): PermissionDenied otherwise, so a credential is not a key to the
    whole model store.
    """
    record = await registry.authenticate_device(device_id, credential, peer_device_id)
    if not _VARIANT_ID.match(variant_id):
        raise InvalidArgument("variant_id", "must be a full 64-hex-digit variant id")
    if offset < 0:
        raise InvalidArgument("offset", "must be >= 0")
    if variant_id != record.desired.variant and (
        variant_id != await _rollback_target(rollouts, record)
    ):
        raise PermissionDenied(
            f"device {record.id} may download only its desired variant "
            f"({record.desired.variant[:12] or 'none assigned'}), "
            f"not {variant_id[:12]}"
        )
    return record


async def _rollback_target(rollouts: RolloutManager | None, record: DeviceRecord) -> str:
    """The variant the device goes back to if its current rollout is rolled back, or "".

    Read only for a request that is not for the desired variant (rare for an agent,
    which fetches nothing else), so a normal download costs no rollout read.
    """
    if rollouts is None or not record.desired.rollout:
        return ""
    try:
        rollout = await rollouts.get(record.desired.rollout)
    except CoordinatorError:  # gone: nothing to roll back to
        return ""
    for planned in rollout.devices:
        if planned.device_id == record.id:
            return planned.previous.variant
    return ""

"""Delta deployment, coordinator side: which (base, target) pairs get a delta, built once.

A device that asks for variant B while holding A (``have_variant`` in DownloadArtifact) gets
a signed delta (``edgefleet.delta``) instead of B's archive when all of these hold:

- the download starts at byte 0 (a resumed full download stays a full download);
- A is the variant the device last reported as active or previous: a device may not name an
  arbitrary variant, because a delta is computed against it and must not become a way to
  learn anything of a variant it was never given. (Deltas are also built without XOR codecs,
  so their payload holds B's bytes only, never A's mixed in; with head/bias fine-tunes of
  DS-CNN XOR saves nothing measurable, see ``benchmarks/delta.py``.)
- both bundles verify with the fleet's trusted keys and have the same file layout (same file
  names: a fine-tune of the same architecture, e.g. ``MODEL-ft-RUN`` against ``MODEL``);
- the delta is smaller than :data:`MAX_DELTA_FRACTION` of B's archive (otherwise the full
  archive is no worse and needs no base).

Each delta is built once and cached next to the archives (``artifacts/deltas/A-B.delta``),
written atomically like them, and signed with this coordinator's signing key. A pair that
does not qualify is remembered as such (an empty sidecar) so it is not recomputed per call.
``edgefleet_artifact_delta_bytes_total`` counts bytes saved (archive size minus delta size)
per delta served from byte 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter

from edgefleet.bundle import MANIFEST_NAME, SIGNATURE_NAME, Bundle, BundleError, load_bundle
from edgefleet.coordinator.artifacts import CachedArchive
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.shared_store import bundle_dir_of
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.delta import build_delta
from edgefleet.fsutil import atomic_write
from edgefleet.variant_store import StoreError, VariantStore

__all__ = ["MAX_DELTA_FRACTION", "DeltaCache", "delta_base_for"]

log = logging.getLogger(__name__)

#: A delta at or above this fraction of the full archive is not worth a base dependency.
MAX_DELTA_FRACTION = 0.8


def delta_base_for(record: DeviceRecord, have_variant: str, target: str, offset: int) -> str:
    """The base to build a delta against, or "" for a full archive (see module docstring)."""
    if offset != 0 or not have_variant or have_variant == target:
        return ""
    if have_variant not in (record.active_variant, record.previous_variant):
        return ""
    return have_variant


class DeltaCache:
    """Signed deltas between verified bundles, built once per pair and kept on disk."""

    def __init__(
        self,
        variants: VariantStore,
        directory: Path,
        trusted_keys: Callable[[], Sequence[str]] | None = None,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._variants = variants
        self._trusted_keys = trusted_keys
        self.directory = directory
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.saved: Counter | None = None
        if metrics is not None:
            self.saved = Counter(
                "edgefleet_artifact_delta_bytes",
                "Bytes not sent because a device got a delta instead of the full archive "
                "(archive size minus delta size, per delta download from byte 0).",
                registry=metrics.registry,
            )
        self.served = 0  # deltas served (diagnostics and tests)

    async def get(self, base: str, target: str, archive: CachedArchive) -> CachedArchive | None:
        """The delta from ``base`` to ``target``, or None when the pair does not qualify."""
        lock = self._locks.setdefault((base, target), asyncio.Lock())
        async with lock:
            try:
                return await asyncio.to_thread(self._load_or_build, base, target, archive.size)
            except OSError as exc:  # a full disk must not cost the device its download
                log.warning("no delta %s -> %s: %s", base[:12], target[:12], exc)
                return None

    def count_served(self, delta: CachedArchive, archive: CachedArchive) -> None:
        self.served += 1
        if self.saved is not None:
            self.saved.inc(max(0, archive.size - delta.size))

    def _paths(self, base: str, target: str) -> tuple[Path, Path]:
        stem = self.directory / f"{base}-{target}"
        return stem.with_suffix(".delta"), stem.with_suffix(".json")

    def _load_or_build(self, base: str, target: str, full_size: int) -> CachedArchive | None:
        path, meta_path = self._paths(base, target)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            if not meta:
                return None  # known not to qualify
            try:
                if path.stat().st_size == int(meta["size"]):
                    return CachedArchive(target, path, int(meta["size"]), str(meta["sha256"]))
            except (OSError, KeyError, TypeError, ValueError):
                pass
        return self._build(base, target, full_size)

    def _load(self, variant_id: str) -> Bundle:
        directory = bundle_dir_of(self._variants, variant_id)
        if self._trusted_keys is None:
            return load_bundle(directory, [self._variants.public_key()], variant_id)
        keys = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in self._trusted_keys()]
        return load_bundle(directory, keys, variant_id)

    def _build(self, base: str, target: str, full_size: int) -> CachedArchive | None:
        path, meta_path = self._paths(base, target)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            a, b = self._load(base), self._load(target)
        except (BundleError, StoreError) as exc:
            log.info("no delta %s -> %s: %s", base[:12], target[:12], exc)
            return None  # not remembered: the base may arrive in this replica's store later
        if set(a.files) != set(b.files):
            log.info("no delta %s -> %s: different file layout", base[:12], target[:12])
            atomic_write(meta_path, "{}")
            return None
        blob = build_delta(
            base,
            a.files,
            target,
            (b.path / MANIFEST_NAME).read_bytes(),
            (b.path / SIGNATURE_NAME).read_bytes(),
            b.files,
            self._variants.signing_key(),
            xor=False,  # the payload holds target bytes only, never base bytes mixed in
        )
        if len(blob) >= MAX_DELTA_FRACTION * full_size:
            log.info(
                "no delta %s -> %s: %d bytes is not much smaller than the %d-byte archive",
                base[:12],
                target[:12],
                len(blob),
                full_size,
            )
            atomic_write(meta_path, "{}")
            return None
        sha = hashlib.sha256(blob).hexdigest()
        atomic_write(path, blob)
        atomic_write(meta_path, json.dumps({"size": len(blob), "sha256": sha}))
        log.info(
            "built delta %s -> %s: %d bytes (archive %d)",
            base[:12],
            target[:12],
            len(blob),
            full_size,
        )
        return CachedArchive(target, path, len(blob), sha)

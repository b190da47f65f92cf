"""The variant store every replica and worker reads: verified, content-addressed blobs in Redis.

``open_store(data_dir, redis=...)`` is the one factory. Without ``redis`` it returns a
:class:`LocalStore`: the embedded single-node default, exactly the data dir layout of
:mod:`edgefleet.variant_store` (plus ``blobs/`` for uploaded sources and datasets). With a
Redis URL (or a synchronous client) it returns a :class:`SharedStore`: the same methods
(``put/load/resolve/models/model/add_model/add_variant/remove`` and the blob methods), with
Redis as the truth and the data dir as a read-through cache, so a variant put by a worker on
one machine is served by any replica on another.

Why Redis and not an object store: a bundle is a few KB (MCU int8) to a few MB (fp32 phone
models), an uploaded checkpoint or dataset a few MB; the fleet state already lives in one Redis
that every replica and worker reaches, with its persistence, Sentinel/Cluster failover and
hash-tagged keys. Values this size cost Redis nothing worth a second service. An object store
(S3/MinIO/GCS behind a standard client) would change only where blob bytes live: blobs of
hundreds of MB (large checkpoints, audio datasets) would go there under the same sha256 names,
Redis would keep the index and the variant -> archive mapping, and verification on read would be
unchanged (a blob's name is its hash, so any store that returns other bytes is caught).

Size: over 500 lines because the two stores are one interface (the shared one overrides each
method of the local one) and the Redis scripts sit beside the methods that run them; splitting
them would scatter one key layout over several files.

Layout in Redis (every key under the fleet's hash tag, so one Cluster slot and atomic scripts):

- ``store:blob:<sha256>``: hash ``size``, ``n`` and chunks ``0..n-1`` (1 MiB each). Written
  under a temporary name and RENAMEd into place, so a blob is either whole or absent; the
  sha256 is checked on every read (a corrupt or truncated blob raises :class:`CorruptBlobError`).
- ``store:variant:<id>``: the sha256 of the variant's deterministic archive
  (:mod:`edgefleet.archive`); ``store:variants``: the set of variant ids (prefix lookups).
- ``store:manifest:<id>``: the bundle's ``manifest.json`` bytes (a few KB; their sha256 is the
  variant id, so a read is checked for free). Selection, explain and rollouts read only this,
  never the archive (KB to MB) it came in. One script sets it, the variant record and the set
  entry, and only if the archive blob exists: a variant is visible only once complete. A variant
  published before this key existed (archive only) is read from its archive once, and its key
  is written then (:meth:`SharedStore.manifests`).
- ``store:models``: hash name -> the model entry's JSON (without its variant list);
  ``store:model:<name>:variants``: its variant ids in order; ``store:model:<name>:labels``:
  recipe label -> variant id, so rebuilding a recipe replaces its row instead of adding one.
  The scripts refuse an index entry naming a variant that is not stored.

Uploaded models (the API's ``AddModel``) are registered *pending* (``base == ""``) with their
blobs named in ``source["upload"]``; whoever builds the base (a worker job) reads them with
:meth:`LocalStore.blob_path` and replaces the pending entry with :meth:`add_model`. A model
whose dataset is a blob gets it materialized under ``datasets/<name>.npz`` on first
:meth:`model` read, where ``edgefleet.modelops.data.load_dataset`` looks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from edgefleet.archive import UnsafeArchiveError, pack_directory, unpack_archive
from edgefleet.bundle import MANIFEST_NAME, Bundle, load_bundle
from edgefleet.coordinator.state.connect import kind, parse_multi_host
from edgefleet.coordinator.state.keys import DEFAULT_PREFIX
from edgefleet.fsutil import atomic_write
from edgefleet.variant_store import (
    ModelEntry,
    StoreError,
    UnknownModelError,
    UnknownVariantError,
    VariantStore,
)

__all__ = [
    "CHUNK_BYTES",
    "BlobError",
    "CorruptBlobError",
    "LocalStore",
    "SharedStore",
    "open_store",
]

CHUNK_BYTES = 1 << 20
DATASETS_DIR = "datasets"  # where modelops.data.load_dataset looks for a stored copy
_SHA = re.compile(r"[0-9a-f]{64}")
#: under the data dir: one empty file per bundle that is a cache copy of a shared variant
_CACHE_MARKS = "shared-cache"
#: under the data dir: one empty file per locally built model published to the shared store
_ADOPTED_MARKS = "shared-adopted"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: how often (seconds) a shared store looks for builds made straight into its data dir on the
#: hot path (every index read); a miss (an id or model name Redis lacks) looks at once
ADOPT_INTERVAL_S = 1.0
#: manifests a shared store keeps in memory (~1.5 KB each): a fleet's catalog, not a bound on it
MANIFEST_MEMORY = 4096
SyncRedis = redis.Redis | RedisCluster


class BlobError(StoreError):
    """A blob that is not stored (or a malformed blob name)."""


class CorruptBlobError(BlobError):
    """A stored blob whose bytes do not hash to its name: refused, never used."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha(sha: str) -> str:
    if not _SHA.fullmatch(sha):
        raise BlobError(f"blob name {sha[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return sha


def check_model_name(name: str) -> str:
    """Model names become file and key names: 1-64 of ``A-Za-z0-9_.-``, not starting with one
    of ``_.-``."""
    if not _NAME.fullmatch(name):
        raise StoreError(
            f"illegal model name {name[:80]!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def _recipe_label(manifest: Mapping[str, Any]) -> str:
    return str(manifest.get("recipe_label") or "")


class LocalStore(VariantStore):
    """The data-dir store (single node) with blobs, recipe-deduplicated rows and ``remove``."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.blobs_dir = self.root / "blobs"
        #: write a model's dataset blob to ``datasets/`` on :meth:`model` (builders need it;
        #: a coordinator, which only reads models, sets this False)
        self.materialize_datasets = True

    # --- blobs ------------------------------------------------------------------------

    def put_blob(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data``; return its sha256. ``sha256`` (the sender's claim) must match."""
        actual = sha256_hex(data)
        if sha256 is not None and sha256 != actual:
            raise CorruptBlobError(
                f"upload does not match its sha256: sent {sha256[:12]}, got {actual[:12]}"
            )
        self._put_local_blob(actual, data)
        return actual

    def _put_local_blob(self, sha: str, data: bytes) -> Path:
        path = self.blobs_dir / sha
        if not path.is_file():
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return path

    def has_blob(self, sha: str) -> bool:
        return (self.blobs_dir / _check_sha(sha)).is_file()

    def blob(self, sha: str) -> bytes:
        """The verified bytes of blob ``sha`` (:class:`CorruptBlobError` if they do not hash)."""
        path = self.blobs_dir / _check_sha(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"unknown blob {sha[:12]}") from None
        if sha256_hex(data) != sha:
            raise CorruptBlobError(f"blob {sha[:12]} is corrupt (its bytes do not hash to it)")
        return data

    def blob_path(self, sha: str) -> Path:
        """A local file holding the verified bytes of blob ``sha``."""
        self.blob(sha)
        return self.blobs_dir / sha

    def _drop_blob(self, sha: str) -> None:
        (self.blobs_dir / sha).unlink(missing_ok=True)

    # --- variants ---------------------------------------------------------------------

    def bundle_dir(self, variant_id: str) -> Path:
        """The local directory of a stored bundle (not verified: :meth:`load` verifies)."""
        path = self.variants_dir / variant_id
        if not (path / MANIFEST_NAME).is_file():
            raise UnknownVariantError(f"unknown variant {variant_id[:12]}")
        return path

    def manifest(self, variant_id: str) -> dict[str, Any]:
        """A stored bundle's manifest, unverified (what selection reads; agents verify)."""
        try:
            data = json.loads((self.bundle_dir(variant_id) / MANIFEST_NAME).read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(f"variant {variant_id[:12]}: unreadable manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise StoreError(f"variant {variant_id[:12]}: manifest is not an object")
        return data

    def manifests(self, variant_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The manifests of several variants (one round trip in the shared store)."""
        return {v: self.manifest(v) for v in variant_ids}

    def has_variant(self, variant_id: str) -> bool:
        return (self.variants_dir / variant_id / MANIFEST_NAME).is_file()

    # --- index ------------------------------------------------------------------------

    def add_model(self, entry: ModelEntry) -> None:
        """Add a model, or replace a *pending* one (base not built yet) of that name."""
        check_model_name(entry.name)
        for v in [entry.base, *entry.variants]:
            if v and not self.has_variant(v):
                raise UnknownVariantError(f"model {entry.name!r} names unstored variant {v[:12]}")
        self._keep_dataset(entry)
        with self._locked():
            index = self._read_index()
            old = index["models"].get(entry.name)
            if old is not None and old.get("base"):
                raise StoreError(f"model {entry.name!r} already exists")
            index["models"][entry.name] = entry.to_json()
            self._write_index(index)

    def _keep_dataset(self, entry: ModelEntry) -> None:
        """Record the stored copy of a user dataset as a blob (so it travels with the model)."""
        path = self.root / DATASETS_DIR / f"{entry.dataset}.npz"
        if "dataset_blob" not in entry.source and path.is_file():
            entry.source["dataset_blob"] = self.put_blob(path.read_bytes())

    def add_variant(self, name: str, variant_id: str) -> None:
        """Append a variant; one built from a recipe already listed replaces that row."""
        label = _recipe_label(self.manifest(variant_id))
        with self._locked():
            index = self._read_index()
            model = index["models"].get(name)
            if model is None:
                raise UnknownModelError(f"unknown model {name!r}")
            variants: list[str] = model["variants"]
            if variant_id not in variants:
                same = [
                    i
                    for i, v in enumerate(variants)
                    if v != model["base"]
                    and label
                    and self.has_variant(v)
                    and _recipe_label(self.manifest(v)) == label
                ]
                if same:
                    variants[same[0]] = variant_id
                else:
                    variants.append(variant_id)
            self._write_index(index)

    def model(self, name: str) -> ModelEntry:
        entry = super().model(name)
        self._materialize_dataset(entry)
        return entry

    def _materialize_dataset(self, entry: ModelEntry) -> None:
        sha = entry.source.get("dataset_blob")
        if (
            not self.materialize_datasets
            or not isinstance(sha, str)
            or not _NAME.fullmatch(entry.dataset)
        ):
            return
        path = self.root / DATASETS_DIR / f"{entry.dataset}.npz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, self.blob(sha))

    def remove(self, name: str) -> list[str]:
        """Remove model ``name``; return the variant ids no other model uses (deleted too)."""
        with self._locked():
            index = self._read_index()
            data = index["models"].pop(name, None)
            if data is None:
                raise UnknownModelError(f"unknown model {name!r}")
            self._write_index(index)
            rest = [ModelEntry.from_json(m) for m in index["models"].values()]
        entry = ModelEntry.from_json(data)
        gone = self._unreferenced(entry, rest)
        for v in gone:
            shutil.rmtree(self.variants_dir / v, ignore_errors=True)
        for sha in self._unreferenced_blobs(entry, rest):
            self._drop_blob(sha)
        return gone

    @staticmethod
    def _unreferenced(entry: ModelEntry, rest: list[ModelEntry]) -> list[str]:
        used = {v for m in rest for v in [m.base, *m.variants]}
        return [v for v in dict.fromkeys([entry.base, *entry.variants]) if v and v not in used]

    @staticmethod
    def _unreferenced_blobs(entry: ModelEntry, rest: list[ModelEntry]) -> list[str]:
        used = {sha for m in rest for sha in source_blobs(m)}
        return [sha for sha in source_blobs(entry) if sha not in used]


def source_blobs(entry: ModelEntry) -> list[str]:
    """The blob names a model's entry refers to (its uploaded files and its dataset)."""
    found: list[str] = []
    dataset = entry.source.get("dataset_blob")
    if isinstance(dataset, str):
        found.append(dataset)
    upload = entry.source.get("upload")
    if isinstance(upload, Mapping):
        for value in upload.values():
            if isinstance(value, str) and _SHA.fullmatch(value):
                found.append(value)
    return found


# Every script gets all its keys through KEYS (Redis Cluster), see state/keys.py.
# KEYS: archive blob, variant, variants, manifest; ARGV: archive sha, variant id, manifest bytes
_PUT_VARIANT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
# KEYS: variant, manifest; ARGV: manifest bytes (a variant published before manifest keys;
# never recreates the key of a variant removed meanwhile)
_BACKFILL_MANIFEST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
# KEYS: models, list, labels, variant keys...; ARGV: name, json, (unused), ids...
# (a pending entry, base "", is replaced: its base was built by a worker)
_ADD_MODEL = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and cjson.decode(old)['base'] ~= '' then return 'exists' end
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return 'missing:' .. ARGV[i] end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
for i = 4, #KEYS do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 'ok'
"""
# KEYS: models, list, labels, variant, superseded; ARGV: name, variant id, recipe label, base id
# (a replaced row's variant is kept, a device may run it, and remembered for `remove`)
_ADD_VARIANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'unknown' end
if redis.call('EXISTS', KEYS[4]) == 0 then return 'missing' end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for _, v in ipairs(ids) do if v == ARGV[2] then return 'ok' end end
local old = false
if ARGV[3] ~= '' then old = redis.call('HGET', KEYS[3], ARGV[3]) end
if old and old ~= ARGV[4] and redis.call('LPOS', KEYS[2], old) then
  redis.call('LSET', KEYS[2], redis.call('LPOS', KEYS[2], old), ARGV[2])
  redis.call('SADD', KEYS[5], old)
else
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], ARGV[2]) end
return 'ok'
"""
# KEYS: models, list, labels, superseded; ARGV: name
# -> the removed entry's JSON, its variant ids, "", the ids its rebuilt recipes replaced
_REMOVE_MODEL = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
table.insert(ids, 1, old)
table.insert(ids, '')
for _, v in ipairs(redis.call('SMEMBERS', KEYS[4])) do table.insert(ids, v) end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return ids
"""


class SharedStore(LocalStore):
    """Redis holds the truth (blobs, variants, index); the data dir caches what was read."""

    def __init__(
        self,
        data_dir: Path,
        client: SyncRedis,
        prefix: str = DEFAULT_PREFIX,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(data_dir)
        self.redis = client
        self._p = f"{prefix}store:"
        self._put_variant = client.register_script(_PUT_VARIANT)
        self._backfill_manifest = client.register_script(_BACKFILL_MANIFEST)
        self._add_model = client.register_script(_ADD_MODEL)
        self._add_variant = client.register_script(_ADD_VARIANT)
        self._remove_model = client.register_script(_REMOVE_MODEL)
        #: ``models.json``'s (mtime, inode, size) when this data dir was last adopted
        self._adopted_stamp: tuple[int, int, int] | None = None
        self._clock = clock
        #: when (``clock``) :meth:`_adopt_local` last looked at the data dir
        self._adopt_looked: float | None = None
        #: manifest bytes that hash to their variant id, least recently read first
        self._manifest_memory: OrderedDict[str, bytes] = OrderedDict()

    # --- key names --------------------------------------------------------------------

    def _blob_key(self, sha: str) -> str:
        return f"{self._p}blob:{sha}"

    def _variant_key(self, variant_id: str) -> str:
        return f"{self._p}variant:{variant_id}"

    def _manifest_key(self, variant_id: str) -> str:
        return f"{self._p}manifest:{variant_id}"

    @property
    def _variants_key(self) -> str:
        return f"{self._p}variants"

    @property
    def _models_key(self) -> str:
        return f"{self._p}models"

    def _list_key(self, name: str) -> str:
        return f"{self._p}model:{name}:variants"

    def _labels_key(self, name: str) -> str:
        return f"{self._p}model:{name}:labels"

    def _superseded_key(self, name: str) -> str:
        return f"{self._p}model:{name}:superseded"

    # --- blobs ------------------------------------------------------------------------

    def put_blob(self, data: bytes, sha256: str | None = None) -> str:
        sha = super().put_blob(data, sha256)  # checks the claim, caches locally
        key = self._blob_key(sha)
        if self.redis.exists(key):
            return sha
        tmp = f"{self._p}blob-tmp:{uuid.uuid4().hex}"
        chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(tmp, mapping={"size": len(data), "n": len(chunks)})
            for i, chunk in enumerate(chunks):
                pipe.hset(tmp, str(i), chunk)
            pipe.execute()
            self.redis.rename(tmp, key)  # whole or absent: never a partial blob under its name
        finally:
            self.redis.delete(tmp)
        return sha

    def has_blob(self, sha: str) -> bool:
        return bool(self.redis.exists(self._blob_key(_check_sha(sha))))

    def blob(self, sha: str) -> bytes:
        """Verified bytes: the local copy if it hashes right, else Redis (then cached)."""
        _check_sha(sha)
        with contextlib.suppress(BlobError):
            return super().blob(sha)
        key = self._blob_key(sha)
        n_raw = self.redis.hget(key, "n")
        if n_raw is None:
            raise BlobError(f"unknown blob {sha[:12]}")
        n = int(n_raw)
        parts = self.redis.hmget(key, [str(i) for i in range(n)]) if n else []
        if any(p is None for p in parts):
            raise CorruptBlobError(f"blob {sha[:12]} is corrupt (chunks missing)")
        data = b"".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
        if sha256_hex(data) != sha:
            raise CorruptBlobError(f"blob {sha[:12]} is corrupt (its bytes do not hash to it)")
        self._put_local_blob(sha, data)
        return data

    def blob_path(self, sha: str) -> Path:
        self.blob(sha)
        return self.blobs_dir / sha

    def _drop_blob(self, sha: str) -> None:
        self.redis.delete(self._blob_key(sha))
        super()._drop_blob(sha)

    # --- variants ---------------------------------------------------------------------

    def put(self, manifest_body: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
        """Sign and store locally, then publish: archive blob first, variant record last."""
        variant_id = super().put(manifest_body, files)
        self._mark_cached(variant_id)
        self._publish(variant_id)
        return variant_id

    def _publish(self, variant_id: str) -> None:
        """Put the local bundle of ``variant_id`` in Redis: archive blob first, record last."""
        bundle = self.variants_dir / variant_id
        buf = io.BytesIO()
        pack_directory(bundle, buf)
        archive = self.put_blob(buf.getvalue())
        manifest = (bundle / MANIFEST_NAME).read_bytes()
        keys = [
            self._blob_key(archive),
            self._variant_key(variant_id),
            self._variants_key,
            self._manifest_key(variant_id),
        ]
        if not self._put_variant(keys=keys, args=[archive, variant_id, manifest]):
            raise BlobError(f"variant {variant_id[:12]}: its archive blob vanished while stored")

    def _adopt_local(self, *, now: bool = False) -> None:
        """Publish what was built straight into this data dir (``models add/build --data-dir``
        on this host, before or while the coordinator runs) so the shared store serves it too.

        Every index read calls this, so it is nearly free: it looks at the data dir at most
        once per ``ADOPT_INTERVAL_S`` (a clock read otherwise), and then does work only if
        ``models.json`` changed (one ``stat``: mtime, inode and size, since the index is
        replaced by rename and two writes can share an mtime tick). A local build is therefore
        served within a second; ``now`` (a lookup of an id or name Redis lacks, which may be
        that build) looks at once. A model Redis lacks is added whole; for a model Redis has,
        only variants Redis has never stored are appended (one it stored and dropped from the
        list was rebuilt away or removed, and stays so). Models removed through the shared
        store are dropped from the local index too (:meth:`remove`), so they do not come back.
        """
        t = self._clock()
        if not now and self._adopt_looked is not None and t - self._adopt_looked < ADOPT_INTERVAL_S:
            return
        self._adopt_looked = t
        try:
            st = self.index_path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp == self._adopted_stamp:
            return
        self._adopted_stamp = stamp
        try:
            local = VariantStore.models(self)
        except StoreError:
            return
        adopted = self.root / _ADOPTED_MARKS
        for entry in local:
            shared = self.redis.hget(self._models_key, entry.name) is not None
            if not shared and (adopted / entry.name).exists():
                continue  # shared once, removed since: the local copy does not bring it back
            ids = [v for v in dict.fromkeys([entry.base, *entry.variants]) if v]
            new = [v for v in ids if not self._in_redis(v) and self._own_local(v)]
            if not all(self._in_redis(v) or v in new for v in ids):
                continue  # a bundle named by the local index is missing here: nothing to share
            for v in new:
                self._publish(v)
            try:
                if not shared:
                    self.add_model(entry)
                    adopted.mkdir(parents=True, exist_ok=True)
                    (adopted / entry.name).touch()
                else:
                    for v in new:
                        if v != entry.base:
                            self.add_variant(entry.name, v)
            except StoreError:
                continue  # another replica adopted or changed it meanwhile: theirs stands

    def has_variant(self, variant_id: str) -> bool:
        """Stored in Redis (after publishing this data dir's own builds: _adopt_local).

        Only variants the local index names are adopted: the other bundles in this data dir
        are cache copies of shared ones, and one removed through another replica stays gone.
        """
        if self._in_redis(variant_id):
            return True
        self._adopt_local(now=True)
        if self._in_redis(variant_id):
            return True
        if self._own_local(variant_id):  # put here by a plain VariantStore, no index entry
            self._publish(variant_id)
            return True
        return False

    def _own_local(self, variant_id: str) -> bool:
        """A bundle this data dir holds that is not a cache copy of a shared variant."""
        return (
            bool(_SHA.fullmatch(variant_id))
            and LocalStore.has_variant(self, variant_id)
            and not (self.root / _CACHE_MARKS / variant_id).exists()
        )

    def _mark_cached(self, variant_id: str) -> None:
        """Note that the local bundle of ``variant_id`` came from (or went to) the shared
        store, so removing it there is never undone by adopting this copy back."""
        marks = self.root / _CACHE_MARKS
        marks.mkdir(parents=True, exist_ok=True)
        (marks / variant_id).touch()

    def _in_redis(self, variant_id: str) -> bool:
        return bool(self.redis.exists(self._variant_key(variant_id)))

    def variant_ids(self) -> list[str]:
        return sorted(_text(v) for v in self.redis.smembers(self._variants_key))

    def resolve(self, prefix: str) -> str:
        self._adopt_local()
        prefix = prefix.strip().lower()
        if len(prefix) < 6:
            raise UnknownVariantError(f"variant id {prefix!r} is too short (give 6+ hex digits)")
        if _SHA.fullmatch(prefix):
            if self.has_variant(prefix):
                return prefix
            raise UnknownVariantError(f"unknown variant {prefix[:12]}")
        hits = [v for v in self.variant_ids() if v.startswith(prefix)]
        if not hits:
            self._adopt_local(now=True)  # a local build made within the last second?
            hits = [v for v in self.variant_ids() if v.startswith(prefix)]
        if not hits:
            raise UnknownVariantError(f"unknown variant {prefix!r}")
        if len(hits) > 1:
            raise UnknownVariantError(f"variant prefix {prefix!r} is ambiguous ({len(hits)} match)")
        return hits[0]

    def bundle_dir(self, variant_id: str) -> Path:
        """The local directory of a bundle, unpacked from its verified archive blob if this
        host has not seen it yet (unpacked aside and renamed in, so never seen half-done)."""
        path = self.variants_dir / variant_id
        if (path / MANIFEST_NAME).is_file():
            return path
        archive = self.redis.get(self._variant_key(variant_id))
        if archive is None:
            raise UnknownVariantError(f"unknown variant {variant_id[:12]}")
        data = self.blob(_text(archive))
        self.variants_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.variants_dir))
        try:
            staging = tmp / "bundle"
            staging.mkdir()
            try:
                unpack_archive(io.BytesIO(data), staging)
            except UnsafeArchiveError as exc:
                raise CorruptBlobError(f"variant {variant_id[:12]}: bad archive: {exc}") from exc
            self._mark_cached(variant_id)
            try:
                os.rename(staging, path)
            except OSError:
                if not (path / MANIFEST_NAME).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def load(self, variant: str) -> Bundle:
        variant_id = self.resolve(variant)
        return load_bundle(self.bundle_dir(variant_id), [self.public_key()], variant_id)

    def manifests(self, variant_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Manifests without touching archives: from this process's memory, or this host's
        cached bundle, else the manifest keys (one MGET for all of them).

        A manifest's sha256 is its variant id, so every read is checked for free, and one that
        hashes right never changes: it is remembered (the last ``MANIFEST_MEMORY`` of them,
        ~1.5 KB each), and a selection repeated over the same variants reads no manifest from
        Redis at all. A variant published before manifest keys (or whose key is missing or
        wrong) is read from its verified archive once, and its key written then. Beyond that
        hash, unverified like :meth:`LocalStore.manifest`: agents verify the bundles they run.
        """
        found: dict[str, bytes] = {}
        remote = []
        for v in dict.fromkeys(variant_ids):
            if v in self._manifest_memory:
                found[v] = self._manifest_memory[v]
                self._manifest_memory.move_to_end(v)
            elif LocalStore.has_variant(self, v):
                try:
                    found[v] = (self.variants_dir / v / MANIFEST_NAME).read_bytes()
                except OSError as exc:
                    raise StoreError(f"variant {v[:12]}: unreadable manifest ({exc})") from exc
            else:
                remote.append(v)
        if remote:
            raws = self.redis.mget([self._manifest_key(v) for v in remote])
            for v, raw in zip(remote, raws, strict=True):
                data = raw if isinstance(raw, bytes) or raw is None else str(raw).encode()
                if data is None or sha256_hex(data) != v:
                    data = self._manifest_from_archive(v)
                found[v] = data
        out = {v: _parse_manifest(v, found[v]) for v in variant_ids}
        for v, data in found.items():
            if v not in self._manifest_memory and sha256_hex(data) == v:
                self._manifest_memory[v] = data
        while len(self._manifest_memory) > MANIFEST_MEMORY:
            self._manifest_memory.popitem(last=False)
        return out

    def manifest(self, variant_id: str) -> dict[str, Any]:
        return self.manifests([variant_id])[variant_id]

    def _manifest_from_archive(self, variant_id: str) -> bytes:
        """The manifest of a variant whose manifest key is missing or wrong, from its archive
        (fetched and cached by :meth:`bundle_dir`); its key is (re)written if it hashes right."""
        path = self.bundle_dir(variant_id) / MANIFEST_NAME
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"variant {variant_id[:12]}: unreadable manifest ({exc})") from exc
        if sha256_hex(data) == variant_id:
            keys = [self._variant_key(variant_id), self._manifest_key(variant_id)]
            self._backfill_manifest(keys=keys, args=[data])
        return data

    # --- index ------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        self._adopt_local()
        raw = self.redis.hgetall(self._models_key)
        names = sorted(_text(k) for k in raw)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.lrange(self._list_key(name), 0, -1)
        lists = pipe.execute()
        by_name = {_text(k): _text(v) for k, v in raw.items()}
        return [self._entry(by_name[n], ids) for n, ids in zip(names, lists, strict=True)]

    @staticmethod
    def _entry(data: str, ids: Iterable[bytes | str]) -> ModelEntry:
        body = json.loads(data)
        body["variants"] = [_text(v) for v in ids]
        return ModelEntry.from_json(body)

    def model(self, name: str) -> ModelEntry:
        self._adopt_local()
        data = self.redis.hget(self._models_key, name)
        if data is None:
            self._adopt_local(now=True)  # a local build made within the last second?
            data = self.redis.hget(self._models_key, name)
        if data is None:
            raise UnknownModelError(f"unknown model {name!r} (see `edgefleet models ls`)")
        entry = self._entry(_text(data), self.redis.lrange(self._list_key(name), 0, -1))
        self._materialize_dataset(entry)
        return entry

    def add_model(self, entry: ModelEntry) -> None:
        """Add a model (or replace a pending one); every variant it names must be stored."""
        check_model_name(entry.name)
        if entry.base and not self.has_variant(entry.base):
            raise UnknownVariantError(
                f"model {entry.name!r} names unstored variant {entry.base[:12]}"
            )
        self._keep_dataset(entry)
        ids = list(dict.fromkeys(v for v in entry.variants if v))
        body = entry.to_json()
        body.pop("variants")
        keys = [self._models_key, self._list_key(entry.name), self._labels_key(entry.name)]
        keys += [self._variant_key(v) for v in ids]
        args = [entry.name, json.dumps(body, sort_keys=True), "", *ids]
        result = _text(self._add_model(keys=keys, args=args))
        if result == "exists":
            raise StoreError(f"model {entry.name!r} already exists")
        if result.startswith("missing:"):
            missing = result.split(":", 1)[1]
            raise UnknownVariantError(f"model {entry.name!r} names unstored variant {missing[:12]}")

    def add_variant(self, name: str, variant_id: str) -> None:
        label = _recipe_label(self.manifest(variant_id))
        base = self.model(name).base
        keys = [
            self._models_key,
            self._list_key(name),
            self._labels_key(name),
            self._variant_key(variant_id),
            self._superseded_key(name),
        ]
        result = _text(self._add_variant(keys=keys, args=[name, variant_id, label, base]))
        if result == "unknown":
            raise UnknownModelError(f"unknown model {name!r}")
        if result == "missing":
            raise UnknownVariantError(f"variant {variant_id[:12]} is not stored")

    def remove(self, name: str) -> list[str]:
        keys = [
            self._models_key,
            self._list_key(name),
            self._labels_key(name),
            self._superseded_key(name),
        ]
        result = [_text(v) for v in self._remove_model(keys=keys, args=[name]) or []]
        if not result:
            raise UnknownModelError(f"unknown model {name!r}")
        cut = result.index("")
        entry = self._entry(result[0], result[1:cut])
        entry.variants += result[cut + 1 :]  # rows rebuilt away: deleted with the model
        rest = self.models()
        gone = self._unreferenced(entry, rest)
        for v in gone:
            archive = self.redis.get(self._variant_key(v))
            self.redis.delete(self._variant_key(v), self._manifest_key(v))
            self.redis.srem(self._variants_key, v)
            if archive is not None:
                self._drop_blob(_text(archive))
            shutil.rmtree(self.variants_dir / v, ignore_errors=True)
        for sha in self._unreferenced_blobs(entry, rest):
            self._drop_blob(sha)
        with self._locked():  # a copy in this data dir's index must not be adopted back
            index = self._read_index()
            if index["models"].pop(name, None) is not None:
                self._write_index(index)
        return gone


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_manifest(variant_id: str, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"variant {variant_id[:12]}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise StoreError(f"variant {variant_id[:12]}: manifest is not an object")
    return manifest


def sync_client(url: str) -> SyncRedis:
    """A synchronous client for ``url`` (one server, ``redis+cluster://`` or
    ``redis+sentinel://``, as :mod:`edgefleet.coordinator.state.connect` reads them); bytes
    are returned undecoded (blobs are binary)."""
    which = kind(url)
    if which == "cluster":
        u = parse_multi_host(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in u.nodes],  # type: ignore[no-untyped-call]
            username=u.username,
            password=u.password,
            ssl=u.tls,
        )
    if which == "sentinel":
        from redis.sentinel import Sentinel

        u = parse_multi_host(url)
        if not u.path:
            raise StoreError("redis+sentinel:// needs the service name: HOST:PORT/SERVICE")
        sentinel = Sentinel(list(u.nodes), socket_timeout=5.0)  # type: ignore[no-untyped-call]
        db = int(u.path[1]) if len(u.path) > 1 and u.path[1].isdigit() else 0
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            u.path[0], username=u.username, password=u.password, db=db, ssl=u.tls
        )
        return master
    return redis.Redis.from_url(url)


def open_store(
    data_dir: Path | str,
    redis: str | SyncRedis | None = None,
    *,
    signing_key_path: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> LocalStore:
    """The variant store for this process: shared through Redis when ``redis`` (a URL or a
    synchronous client) is given, else the data dir alone (the embedded single-node default).

    ``signing_key_path``: the fleet's signing key where it is mounted (default: the data dir's).
    """
    root = Path(data_dir)
    store: LocalStore
    if redis is None:
        store = LocalStore(root)
    else:
        client = sync_client(redis) if isinstance(redis, str) else redis
        store = SharedStore(root, client, prefix)
    if signing_key_path is not None:
        store.key_path = signing_key_path
    return store


def bundle_dir_of(store: VariantStore, variant_id: str) -> Path:
    """The local directory of a stored bundle, fetched first if the store is shared (callers
    that may hold a plain :class:`VariantStore`, e.g. tests, use this)."""
    if isinstance(store, LocalStore):
        return store.bundle_dir(variant_id)
    path = store.variants_dir / variant_id
    if not (path / MANIFEST_NAME).is_file():
        raise UnknownVariantError(f"unknown variant {variant_id[:12]}")
    return path


def manifests_of(store: VariantStore, variant_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The manifests of ``variant_ids`` (:meth:`LocalStore.manifests`: in a shared store, from
    the small manifest keys, never the archives); a plain :class:`VariantStore` (tests) reads
    its files. Raises :class:`StoreError` naming the variant."""
    if isinstance(store, LocalStore):
        return store.manifests(variant_ids)
    out: dict[str, dict[str, Any]] = {}
    for v in variant_ids:
        try:
            data = (bundle_dir_of(store, v) / MANIFEST_NAME).read_bytes()
        except OSError as exc:
            raise StoreError(f"variant {v[:12]}: unreadable manifest ({exc})") from exc
        out[v] = _parse_manifest(v, data)
    return out


def has_variant_in(store: VariantStore, variant_id: str) -> bool:
    if isinstance(store, LocalStore):
        return store.has_variant(variant_id)
    return (store.variants_dir / variant_id / MANIFEST_NAME).is_file()

"""The shared variant store (issue 18.3): two data dirs on one real Redis see one store.

Each test uses a real ``redis-server`` (the session fixture) and two stores with separate
data dirs, standing for two replicas or a worker and a replica on different machines.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import redis

from edgefleet.bundle import FileHashMismatch
from edgefleet.coordinator.shared_store import (
    ADOPT_INTERVAL_S,
    CHUNK_BYTES,
    BlobError,
    CorruptBlobError,
    LocalStore,
    SharedStore,
    open_store,
)
from edgefleet.coordinator.variants import VariantReadError, model_variants
from edgefleet.variant_store import ModelEntry, StoreError, UnknownModelError, UnknownVariantError
from tests.fleetkit import variant_manifest

MANIFEST_KEY = "{edgefleet}:store:manifest:"


class CountingRedis(redis.Redis):
    """A real client that records (command, first key) of every call it makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        key = args[1] if len(args) > 1 else ""
        self.calls.append((str(args[0]), key.decode() if isinstance(key, bytes) else str(key)))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def blob_reads(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if ":store:blob:" in c[1]]


def _pair(tmp_path: Path, url: str) -> tuple[SharedStore, SharedStore]:
    a = open_store(tmp_path / "a", url, signing_key_path=tmp_path / "key.pem")
    b = open_store(tmp_path / "b", url, signing_key_path=tmp_path / "key.pem")
    assert isinstance(a, SharedStore) and isinstance(b, SharedStore)
    return a, b


def _variant(store: LocalStore, model: str, recipe: str, payload: bytes) -> str:
    body = variant_manifest(model, recipe, "fp32", 0.9, len(payload), 1024, 1000, 0.1)
    return store.put(body, {"model.onnx": payload})


def test_no_redis_means_the_local_data_dir(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    assert type(store) is LocalStore
    vid = _variant(store, "m", "fp32", b"x" * 100)
    assert (tmp_path / "d" / "variants" / vid).is_dir()


def test_a_variant_put_on_one_host_loads_verified_on_another(
    tmp_path: Path, redis_url: str
) -> None:
    a, b = _pair(tmp_path, redis_url)
    payload = bytes(range(256)) * (CHUNK_BYTES // 100)  # > 2 chunks
    base = _variant(a, "m", "fp32", payload)
    a.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", base, [base]))
    assert [m.name for m in b.models()] == ["m"]
    assert b.model("m").base == base
    assert b.resolve(base[:8]) == base
    assert b.load(base).file("model.onnx") == payload
    assert (tmp_path / "b" / "variants" / base).is_dir()  # cached on read


def test_a_rebuilt_recipe_replaces_its_row(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, redis_url)
    base = _variant(a, "m", "fp32", b"base")
    a.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", base, [base]))
    first = _variant(a, "m", "int8-static", b"one")
    b.add_variant("m", first)
    again = _variant(b, "m", "int8-static", b"two")  # rebuilt: other bytes, other id
    a.add_variant("m", again)
    a.add_variant("m", again)
    assert a.model("m").variants == [base, again]


def test_the_index_never_names_an_unstored_variant(tmp_path: Path, redis_url: str) -> None:
    a, _ = _pair(tmp_path, redis_url)
    with pytest.raises(UnknownVariantError, match="unstored variant"):
        a.add_model(ModelEntry("m", {}, "digits", "ab" * 32, ["ab" * 32]))
    assert a.models() == []
    base = _variant(a, "m", "fp32", b"base")
    a.add_model(ModelEntry("m", {}, "digits", base, [base]))
    with pytest.raises(StoreError, match="already exists"):
        a.add_model(ModelEntry("m", {}, "digits", base, [base]))


def test_corrupt_blobs_are_refused(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, redis_url)
    sha = a.put_blob(b"dataset bytes" * 1000)
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{{edgefleet}}:store:blob:{sha}", "0", b"tampered")
    with pytest.raises(CorruptBlobError, match="corrupt"):
        b.blob(sha)  # b has no local copy: reads Redis, refuses
    assert a.blob(sha)  # a's verified local copy is still good
    with pytest.raises(CorruptBlobError, match="does not match its sha256"):
        a.put_blob(b"abc", "0" * 64)
    with pytest.raises(BlobError, match="not a sha256"):
        a.blob("../etc/passwd")


def test_a_tampered_cached_bundle_fails_verification(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, redis_url)
    vid = _variant(a, "m", "fp32", b"weights" * 10)
    b.load(vid)
    (tmp_path / "b" / "variants" / vid / "model.onnx").write_bytes(b"evil")
    with pytest.raises(FileHashMismatch):
        b.load(vid)


def test_remove_drops_the_model_its_variants_and_its_blobs(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, redis_url)
    base = _variant(a, "m", "fp32", b"base")
    dataset = a.put_blob(b"npz")
    a.add_model(ModelEntry("m", {}, "digits", base, [base], {"upload": {"dataset": dataset}}))
    assert b.remove("m") == [base]
    assert a.models() == []
    assert not a.has_variant(base)
    assert not a.has_blob(dataset)
    assert not redis.Redis.from_url(redis_url).exists(MANIFEST_KEY + base)
    with pytest.raises(UnknownModelError):
        a.remove("m")
    with pytest.raises(UnknownVariantError):
        a.resolve(base)


def test_the_store_works_on_a_real_three_node_redis_cluster(tmp_path: Path) -> None:
    """Every key shares the fleet's hash tag and every script declares its keys: blobs,
    variants, the index, deduplication and removal work on Redis Cluster as on one server."""
    from tests.redis_procs import redis_cluster

    with redis_cluster(tmp_path / "cluster") as cluster:
        a, b = _pair(tmp_path, cluster.url)
        payload = bytes(range(256)) * (CHUNK_BYTES // 128)  # > 2 chunks
        base = _variant(a, "m", "fp32", payload)
        a.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", base, [base]))
        first = _variant(a, "m", "int8-static", b"one")
        a.add_variant("m", first)
        again = _variant(b, "m", "int8-static", b"two")
        b.add_variant("m", again)
        assert b.model("m").variants == [base, again]
        assert b.load(base[:8]).file("model.onnx") == payload
        c = open_store(tmp_path / "c", cluster.url, signing_key_path=tmp_path / "key.pem")
        assert list(c.manifests([again, base])) == [again, base]  # one MGET in the fleet's slot
        assert not (tmp_path / "c" / "variants").exists()  # no archive was fetched
        assert sorted(a.remove("m")) == sorted([base, again, first])  # the replaced one too
        assert b.models() == []


def test_what_was_built_straight_into_a_data_dir_is_shared(tmp_path: Path, redis_url: str) -> None:
    """`models add/build --data-dir` on a replica's host (no shared store in the loop): the
    replica's shared store publishes that model and its later variants, and a removal made
    through the shared store is not undone by the local copy."""
    local = LocalStore(tmp_path / "a")
    local.key_path = tmp_path / "key.pem"
    base = _variant(local, "m", "fp32", b"base")
    local.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", base, [base]))
    now = [0.0]
    a = SharedStore(tmp_path / "a", redis.Redis.from_url(redis_url), clock=lambda: now[0])
    a.key_path = tmp_path / "key.pem"
    _, b = _pair(tmp_path, redis_url)
    assert [m.name for m in b.models()] == []  # b's data dir holds nothing of it
    assert [m.name for m in a.models()] == ["m"]  # a adopts its own data dir's build
    assert b.model("m").base == base and b.load(base).file("model.onnx") == b"base"
    later = _variant(local, "m", "int8-static", b"later")
    local.add_variant("m", later)
    assert a.model("m").variants == [base]  # index reads within the interval do not look
    now[0] += ADOPT_INTERVAL_S
    assert a.model("m").variants == [base, later]
    bare = _variant(local, "x", "fp32", b"bare")  # a bundle with no index entry
    assert b.has_variant(bare) is False and a.has_variant(bare) is True
    assert b.load(bare).file("model.onnx") == b"bare"
    assert sorted(b.remove("m")) == sorted([base, later])
    assert a.models() == [] and b.models() == []
    local.add_model(ModelEntry("n", {"name": "synthetic"}, "digits", bare, [bare]))
    assert a.model("n").base == bare  # a name Redis lacks looks at once, whatever the clock
    assert [m.name for m in a.models()] == ["n"]  # a later local build is shared; m stays gone
    with pytest.raises(UnknownModelError):
        a.model("m")


def test_selection_reads_manifest_keys_never_archives(tmp_path: Path, redis_url: str) -> None:
    """A replica that has seen none of a model's bundles reads every manifest in one MGET of
    the small manifest keys and fetches no archive blob; a variant published before manifest
    keys (key missing) or with a wrong key falls back to its archive once and gets its key."""
    a = open_store(tmp_path / "a", redis_url, signing_key_path=tmp_path / "key.pem")
    ids = [_variant(a, "m", f"r{i}", bytes([i]) * 5000) for i in range(6)]
    a.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", ids[0], ids))

    def fresh(name: str) -> tuple[SharedStore, CountingRedis]:
        client = CountingRedis.from_url(redis_url)
        assert isinstance(client, CountingRedis)
        store = SharedStore(tmp_path / name, client)
        store.key_path = tmp_path / "key.pem"
        return store, client

    b, client = fresh("b")
    assert [f.id for f in model_variants(b, "m")] == ids
    assert client.blob_reads() == []
    assert [c for c in client.calls if c[0] == "MGET"] == [("MGET", MANIFEST_KEY + ids[0])]
    assert not (tmp_path / "b" / "variants").exists()
    client.calls.clear()
    assert [f.id for f in model_variants(b, "m")] == ids
    assert [c[0] for c in client.calls if MANIFEST_KEY in c[1]] == []  # remembered (immutable)

    raw = redis.Redis.from_url(redis_url)
    raw.delete(MANIFEST_KEY + ids[1])  # as published before manifest keys existed
    raw.set(MANIFEST_KEY + ids[2], b'{"model": "forged"}')  # bytes that do not hash to the id
    c, client = fresh("c")
    assert [f.model for f in model_variants(c, "m")] == ["m"] * 6
    fetched = {key.rsplit(":", 1)[1] for _, key in client.blob_reads()}
    assert len(fetched) == 2  # the two archives, nothing else
    for v in ids[1:3]:
        stored = raw.get(MANIFEST_KEY + v)
        assert isinstance(stored, bytes) and hashlib.sha256(stored).hexdigest() == v  # backfilled
    d, client = fresh("d")
    assert len(model_variants(d, "m")) == 6 and client.blob_reads() == []
    raw.delete(f"{{edgefleet}}:store:variant:{ids[5]}", MANIFEST_KEY + ids[5])  # lost records
    e, _ = fresh("e")
    with pytest.raises(VariantReadError, match=f"unknown variant {ids[5][:12]}"):
        model_variants(e, "m")

"""Delta deployment: a fine-tuned variant goes to a device holding its base as a signed delta.

A real coordinator process (real Redis) serves bundles built like a fine-tune: same file
layout, a safetensors file with a few tensors changed, an ONNX file changed in place. The real
agent cache and reconciler fetch them. The device reports what it holds with a real heartbeat
(the coordinator builds a delta only against a variant the device reported).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
import redis
from safetensors.numpy import save

from edgefleet.agent.artifacts import ArtifactCache
from edgefleet.agent.desired import Desired
from edgefleet.agent.reconcile import Reconciler
from edgefleet.bundle import MANIFEST_NAME, SIGNATURE_NAME, public_key_hex
from edgefleet.delta import DeltaError, apply_delta, build_delta, read_header
from edgefleet.v1 import artifact_pb2_grpc
from edgefleet.variant_store import VariantStore
from tests.conftest import CoordinatorProc, free_port
from tests.fleetkit import ScriptedDevice

T = TypeVar("T")


def _tensors(seed: int, head_seed: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"conv{i}.weight": rng.standard_normal((64, 64, 3)).astype(np.float32) for i in range(4)}
    out["conv0.bias"] = rng.standard_normal(64).astype(np.float32)
    head = np.random.default_rng(head_seed if head_seed is not None else seed + 1)
    out["head.weight"] = head.standard_normal((12, 64)).astype(np.float32)
    out["head.bias"] = head.standard_normal(12).astype(np.float32)
    return out


def _files(head_seed: int | None = None, graph_tag: bytes = b"") -> dict[str, bytes]:
    graph = bytearray(hashlib.shake_256(b"graph").digest(30_000))
    graph[100 : 100 + len(graph_tag)] = graph_tag  # a few initializer bytes differ in place
    return {"weights.safetensors": save(_tensors(1, head_seed)), "model.onnx": bytes(graph)}


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@dataclass
class Env:
    proc: CoordinatorProc
    store: VariantStore
    redis_url: str
    base: str
    tuned: str
    tuned2: str


@pytest.fixture(scope="module")
def env(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    url = redis_server.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    data_dir = Path(tmp_path_factory.mktemp("delta")) / "coord"
    store = VariantStore(data_dir)
    meta = {"model": "kws", "recipe": "test"}
    base = store.put({**meta, "name": "kws"}, _files())
    tuned = store.put({**meta, "name": "kws-ft-1"}, _files(head_seed=7, graph_tag=b"tuned"))
    tuned2 = store.put({**meta, "name": "kws-ft-2"}, _files(head_seed=8, graph_tag=b"again"))
    proc = CoordinatorProc(data_dir, free_port(), ["--redis-url", url]).start()
    yield Env(proc, store, url, base, tuned, tuned2)
    proc.stop()


class Agent:
    """A real agent cache and reconciler behind a scripted (real-heartbeat) device identity."""

    def __init__(self, env: Env, state: Path) -> None:
        self.env = env
        self.device = ScriptedDevice.register(env.proc.address, "delta-test", "rpi4")
        keys = [public_key_hex(env.store.public_key())]
        self.cache = ArtifactCache(state, keys)
        self.rec = Reconciler(self.cache, device_id=self.device.device_id, wait_seconds=None)

    def deploy(self, variant: str, report: bool = True) -> None:
        with redis.Redis.from_url(self.env.redis_url) as r:
            r.hset(f"{{edgefleet}}:device:{self.device.device_id}", "desired_variant", variant)
        meta = (("authorization", f"Bearer {self.device.credential}"),)

        async def body() -> None:
            async with grpc.aio.insecure_channel(self.env.proc.address) as ch:
                stub = artifact_pb2_grpc.ArtifactServiceStub(ch)
                await self.rec.reconcile(Desired(generation=1, variant_id=variant), stub, meta)

        _run(body())
        if report:  # what the agent's next heartbeat says
            self.device.active = self.cache.current()
            self.device.previous = self.cache.previous()
            self.device.heartbeat()


def _archive_size(env: Env, variant: str) -> int:
    meta = env.store.root / "artifacts" / f"{variant}.json"
    return int(json.loads(meta.read_text())["size"])


def _delta_saved(env: Env) -> float:
    text = urllib.request.urlopen(env.proc.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("edgefleet_artifact_delta_bytes_total "):
            return float(line.split()[1])
    raise AssertionError("edgefleet_artifact_delta_bytes_total not exported")


def test_fine_tune_goes_out_as_a_verified_delta_smaller_than_the_bundle(
    env: Env, tmp_path: Path
) -> None:
    agent = Agent(env, tmp_path / "agent")
    agent.deploy(env.base)
    first = agent.rec.last_download
    assert first is not None and first.delta_base == ""  # nothing held: the full archive
    saved_before = _delta_saved(env)
    agent.deploy(env.tuned)
    got = agent.rec.last_download
    assert got is not None and got.delta_base == env.base
    full = _archive_size(env, env.tuned)
    assert 0 < got.bytes_received < full / 4
    served = agent.cache.load_current()
    assert served is not None and served.variant_id == env.tuned
    assert dict(served.files) == _files(head_seed=7, graph_tag=b"tuned")
    assert agent.cache.delta_fallbacks == []
    assert list(agent.cache.downloads_dir.iterdir()) == []
    assert _delta_saved(env) - saved_before == full - got.bytes_received


def test_tampered_delta_falls_back_to_the_full_bundle_and_ends_on_target(
    env: Env, tmp_path: Path
) -> None:
    # A delta correctly signed by the fleet key whose rebuilt tensor is not the target's:
    # only the verification after applying can catch it.
    base_dir, t_dir = (env.store.variants_dir / v for v in (env.base, env.tuned2))
    wrong = _files(head_seed=9, graph_tag=b"again")
    blob = build_delta(
        env.base,
        {n: (base_dir / n).read_bytes() for n in _files()},
        env.tuned2,
        (t_dir / MANIFEST_NAME).read_bytes(),
        (t_dir / SIGNATURE_NAME).read_bytes(),
        wrong,
        env.store.signing_key(),
    )
    deltas = env.store.root / "artifacts" / "deltas"
    deltas.mkdir(parents=True, exist_ok=True)
    (deltas / f"{env.base}-{env.tuned2}.delta").write_bytes(blob)
    sidecar = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (deltas / f"{env.base}-{env.tuned2}.json").write_text(json.dumps(sidecar))
    agent = Agent(env, tmp_path / "agent")
    agent.deploy(env.base)
    agent.deploy(env.tuned2)
    got = agent.rec.last_download
    assert got is not None and got.delta_base == ""
    assert len(agent.cache.delta_fallbacks) == 1
    assert "rebuilt bundle refused" in agent.cache.delta_fallbacks[0]
    assert agent.cache.current() == env.tuned2
    assert (
        agent.cache.load(env.tuned2).files["weights.safetensors"]
        == _files(head_seed=8)["weights.safetensors"]
    )


def test_device_without_the_base_or_not_reporting_it_gets_the_full_bundle(
    env: Env, tmp_path: Path
) -> None:
    fresh = Agent(env, tmp_path / "fresh")
    fresh.deploy(env.tuned)
    got = fresh.rec.last_download
    assert got is not None and got.delta_base == ""
    assert got.total_bytes == _archive_size(env, env.tuned)
    # Holds the base but never reported it: the coordinator builds no delta against a variant
    # the device is not known to hold (a delta must not leak a variant it was never given).
    silent = Agent(env, tmp_path / "silent")
    silent.deploy(env.base, report=False)
    silent.deploy(env.tuned)
    got = silent.rec.last_download
    assert got is not None and got.delta_base == "" and silent.cache.delta_fallbacks == []
    assert silent.cache.current() == env.tuned


# --- the delta format, without a server ---------------------------------------------------------


def _pair(env: Env) -> tuple[dict[str, bytes], bytes]:
    base = _files()
    t_dir = env.store.variants_dir / env.tuned
    blob = build_delta(
        env.base,
        base,
        env.tuned,
        (t_dir / MANIFEST_NAME).read_bytes(),
        (t_dir / SIGNATURE_NAME).read_bytes(),
        _files(head_seed=7, graph_tag=b"tuned"),
        env.store.signing_key(),
    )
    return base, blob


def test_delta_is_tensor_wise_for_safetensors_and_per_file_otherwise(env: Env) -> None:
    base, blob = _pair(env)
    header, _ = read_header(blob, [env.store.public_key()])
    ops = header["files"]
    assert ops["weights.safetensors"]["op"] == "tensors"
    assert sorted(ops["weights.safetensors"]["tensors"]) == ["head.bias", "head.weight"]
    assert ops["model.onnx"]["op"] in ("xor", "blocks")  # per file: no tensors to name
    plan = apply_delta(blob, env.base, base, [env.store.public_key()])
    assert plan.files == _files(head_seed=7, graph_tag=b"tuned")


def _retarget(blob: bytes) -> bytes:
    """The same delta claiming another target (one hex digit changed in its signed header)."""
    at = blob.index(b'"target":"') + len(b'"target":"')
    return blob[:at] + (b"0" if blob[at : at + 1] != b"0" else b"1") + blob[at + 1 :]


def test_shifted_file_goes_as_copies_of_the_base_and_a_bad_program_is_refused(env: Env) -> None:
    # An ONNX/TFLite re-export moves unchanged tensors when one changes size: no XOR fits,
    # the copy program finds them again at their new offsets.
    old = hashlib.shake_256(b"tensors").digest(40_000)
    new = old[:1000] + b"a longer changed tensor" + old[1010:]
    m = env.store.variants_dir / env.tuned / MANIFEST_NAME
    manifest = json.loads(m.read_bytes())
    manifest["files"] = {
        "model.onnx": {"sha256": hashlib.sha256(new).hexdigest(), "bytes": len(new)}
    }
    raw = json.dumps(manifest).encode()
    key = env.store.signing_key()
    blob = build_delta(
        env.base, {"model.onnx": old}, env.tuned, raw, b"{}", {"model.onnx": new}, key
    )
    header, _ = read_header(blob, [env.store.public_key()])
    assert header["files"]["model.onnx"]["op"] == "blocks"
    assert len(blob) < len(new) // 10
    plan = apply_delta(blob, env.base, {"model.onnx": old}, [env.store.public_key()])
    assert plan.files["model.onnx"] == new
    with pytest.raises(DeltaError, match="needs base file"):  # a base without that file
        apply_delta(blob, env.base, {"other.onnx": old}, [env.store.public_key()])
    with pytest.raises(DeltaError, match=r"outside its inputs|rebuilds"):  # a shorter base
        apply_delta(blob, env.base, {"model.onnx": old[:20_000]}, [env.store.public_key()])


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "payload sha256"),
        (_retarget, "signature does not verify"),
        (lambda b: b"NOTDELTA" + b[8:], "bad magic"),
        (lambda b: b[:100], "out of range"),
    ],
)
def test_bad_deltas_are_refused_in_one_line(
    env: Env, mutate: Callable[[bytes], bytes], why: str
) -> None:
    base, blob = _pair(env)
    with pytest.raises(DeltaError, match=why):
        apply_delta(mutate(blob), env.base, base, [env.store.public_key()])


def test_delta_for_another_base_or_untrusted_key_is_refused(env: Env) -> None:
    base, blob = _pair(env)
    with pytest.raises(DeltaError, match="not "):
        apply_delta(blob, env.tuned2, base, [env.store.public_key()])
    other = VariantStore(env.store.root.parent / "other-keys")
    with pytest.raises(DeltaError, match="untrusted key"):
        apply_delta(blob, env.base, base, [other.public_key()])

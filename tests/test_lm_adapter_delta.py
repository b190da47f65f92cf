"""LoRA adapters as a small delta on the LM variant a device holds (issue 20, item 5).

A tiny ByteLM (1 layer, width 32) is exported once into fp32 and int4-g32 graphs, registered
(weights as ONNX external data), and given adapter variants from non-zero adapters. Checked:
the fp32 adapter variant's logits equal the merged model's; the int4 variant keeps its base's
quantized weights byte for byte and its delta ships ``same`` for them; a real coordinator
serves an agent holding the base the adapter variant as a delta, the agent's onnxruntime loads
it from verified bytes, and a corrupted delta falls back to the full bundle; a target or a
graph that does not fit is refused in one line.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch

from edgefleet.agent.artifacts import ArtifactCache
from edgefleet.agent.desired import Desired
from edgefleet.agent.generation import empty_cache
from edgefleet.agent.reconcile import Reconciler
from edgefleet.agent.runtimes.ort import OrtRuntime
from edgefleet.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Bundle,
    MissingFileError,
    public_key_hex,
)
from edgefleet.catalog import get_profile
from edgefleet.coordinator.rollouts.lm_planning import select_lm_device, select_lm_devices
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.delta import build_delta
from edgefleet.lora import LoRAConfig, adapter_arrays, add_lora, load_adapter_arrays, merge_lora
from edgefleet.modelops.lm_adapter_variant import (
    AdapterVariantError,
    adapter_graph,
    adapter_slices,
    build_adapter_variants,
)
from edgefleet.modelops.lm_build import build_lm_recipes
from edgefleet.modelops.lm_bundle import LM_WEIGHTS_FILE, load_lm_graph, register_lm_model
from edgefleet.modelops.lm_compress import build_lm_variants
from edgefleet.v1 import artifact_pb2_grpc
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.zoo import ByteLM
from tests.conftest import CoordinatorProc, free_port
from tests.fleetkit import ScriptedDevice

LORA = LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "proj", "up", "down"))
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 12)).astype(np.int64)


@dataclass
class Built:
    store: VariantStore
    data_dir: Path
    model: ByteLM
    adapters: dict[str, np.ndarray]
    merged: ByteLM
    base: dict[str, str]  # recipe -> base variant id
    tuned: dict[str, str]  # recipe -> adapter variant id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("lmadapter")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ByteLM(dim=32, layers=1, heads=2, context=64).eval()
    variants = build_lm_variants(model, root / "onnx", ("fp32", "int4-g32"))
    adapted = add_lora(copy.deepcopy(model), LORA)
    rng = np.random.default_rng(1)
    adapters = {
        k: (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in adapter_arrays(adapted).items()
    }  # B non-zero: the branch changes the logits
    load_adapter_arrays(adapted, adapters)
    merged = merge_lora(adapted)
    torch.set_num_threads(threads)
    data_dir = root / "coord"
    store = VariantStore(data_dir)
    entry = register_lm_model(store, "tiny-lm", model, variants, dataset="none")
    ft = build_adapter_variants(store, "tiny-lm", adapters, LORA, "tiny-lm-ft-r1", measure=False)

    def by_recipe(ids: list[str]) -> dict[str, str]:
        return {str(store.load(i).manifest["recipe_label"]): i for i in ids}

    return Built(
        store,
        data_dir,
        model,
        adapters,
        merged,
        by_recipe([entry.base, *entry.variants]),
        by_recipe([ft.base, *ft.variants]),
    )


def _logits(bundle: Bundle) -> np.ndarray:
    """The bundle's next-byte logits for TOKENS, through the agent's own runtime."""
    rt = OrtRuntime(get_profile("rpi4"))
    rt.load(bundle)
    lm = rt.language_model
    assert lm is not None
    logits = rt.lm_step({"tokens": TOKENS, **empty_cache(lm, batch=2)})[0]
    rt.unload()
    return np.asarray(logits, np.float32)


def _torch_logits(model: ByteLM) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(TOKENS), *model.empty_cache(2))[0].numpy()
    return out


def _ops(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<I", blob[8:12])
    return {k: v["op"] for k, v in json.loads(blob[12 : 12 + n])["files"].items()}


def _delta(store: VariantStore, base: str, target: str) -> bytes:
    a, b = store.load(base), store.load(target)
    manifest, signature = ((b.path / n).read_bytes() for n in (MANIFEST_NAME, SIGNATURE_NAME))
    return build_delta(
        base, a.files, target, manifest, signature, b.files, store.signing_key(), xor=False
    )


def test_fp32_adapter_variant_computes_the_merged_model(built: Built) -> None:
    tuned = built.store.load(built.tuned["fp32"])
    got = _logits(tuned)
    merged, base = _torch_logits(built.merged), _torch_logits(built.model)
    assert np.abs(got - merged).max() < 1e-4
    assert np.abs(base - merged).max() > 1e-2  # the adapters matter: the check can fail
    assert tuned.manifest["parent"] == built.base["fp32"]
    assert tuned.manifest["adapter"]["rank"] == 4 and tuned.manifest["adapter"]["merged"] is False


def test_int4_adapter_variant_keeps_the_quantized_base_and_ships_same_for_it(built: Built) -> None:
    base = built.store.load(built.base["int4-g32"])
    tuned = built.store.load(built.tuned["int4-g32"])
    assert tuned.files[LM_WEIGHTS_FILE] == base.files[LM_WEIGHTS_FILE]
    assert tuned.file("model.onnx") != base.file("model.onnx")
    # the quantized branch is the int4 base plus the adapters: closer to the merged model
    merged = _torch_logits(built.merged)
    assert np.abs(_logits(tuned) - merged).max() < np.abs(_logits(base) - merged).max()
    blob = _delta(built.store, built.base["int4-g32"], built.tuned["int4-g32"])
    assert _ops(blob)[LM_WEIGHTS_FILE] == "same"
    full = sum(len(b) for b in tuned.files.values())
    adapter = int(tuned.manifest["adapter"]["bytes"])
    assert len(blob) < adapter + len(base.file("model.onnx")) and len(blob) < full / 2


def test_models_build_of_an_external_data_lm_reads_its_weights(built: Built) -> None:
    # the fp16 recipe derived from the registered fp32 base (graph + model.onnx.data)
    (fp16,) = build_lm_recipes(built.store, "tiny-lm", ["fp16"])
    bundle = built.store.load(fp16)
    assert LM_WEIGHTS_FILE in bundle.files
    assert bundle.manifest["runtimes"]["onnxruntime"]["external_data"] == [LM_WEIGHTS_FILE]
    rt = OrtRuntime(get_profile("phone-flagship"))
    rt.load(bundle)
    lm = rt.language_model
    assert lm is not None and lm.kv_dtype == "float16"
    logits = np.asarray(rt.lm_step({"tokens": TOKENS, **empty_cache(lm, batch=2)})[0], np.float32)
    assert np.abs(logits - _torch_logits(built.model)).max() < 0.05


def test_targets_or_graphs_that_do_not_fit_are_refused_in_one_line(built: Built) -> None:
    config = built.model.config()
    extra = dict(built.adapters)
    extra["blocks.3.qkv.lora_a.q"] = extra["blocks.0.qkv.lora_a.q"]
    with pytest.raises(AdapterVariantError, match=r"blocks\.3\.qkv.* not in the graph") as e:
        adapter_slices(extra, LORA, config)
    assert "\n" not in str(e.value)
    only_qv = LoRAConfig(rank=4, alpha=8.0, targets=("q", "v"))
    with pytest.raises(AdapterVariantError, match="not among the run's targets"):
        adapter_slices(built.adapters, only_qv, config)
    short = {k: v[:, :3] if ".lora_a." in k else v for k, v in built.adapters.items()}
    with pytest.raises(AdapterVariantError, match=r"A \(4, 3\), B .*; expected \(4, \d+\)"):
        adapter_slices(short, LORA, config)
    # a graph of another model (two layers where the config says one): no target mapping
    slices = adapter_slices(built.adapters, LORA, config)
    graph = built.store.load(built.base["fp32"]).file("model.onnx")
    with pytest.raises(AdapterVariantError, match="not this model's graph") as e:
        adapter_graph(graph, slices, LORA, {**config, "layers": 2})
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterVariantError, match="base model 'no-such-model'"):
        build_adapter_variants(built.store, "no-such-model", built.adapters, LORA, "x")
    with pytest.raises(AdapterVariantError, match="has no variant 'int4-g64'"):
        build_adapter_variants(
            built.store, "tiny-lm", built.adapters, LORA, "x", recipes=["int4-g64"]
        )
    half = {k: v for k, v in built.adapters.items() if k != "blocks.0.qkv.lora_b.v"}
    with pytest.raises(AdapterVariantError, match=r"blocks\.0\.qkv v: A or B missing"):
        adapter_slices(half, LORA, config)
    with pytest.raises(AdapterVariantError, match="not a byte-lm LoRA tensor name"):
        adapter_slices({"head.weight": np.zeros((4, 4), np.float32)}, LORA, config)
    with pytest.raises(AdapterVariantError, match="no adapters given"):
        adapter_slices({}, LORA, config)
    clf = built.store.put({"model": "clf", "task": "classification"}, {"model.onnx": b"x"})
    built.store.add_model(ModelEntry("clf", {"arch": "mlp"}, "digits", clf))
    with pytest.raises(AdapterVariantError, match="'clf' is not a language model"):
        build_adapter_variants(built.store, "clf", built.adapters, LORA, "x")


def test_an_lm_graph_whose_external_data_is_missing_or_short_is_refused(built: Built) -> None:
    bundle = built.store.load(built.base["int4-g32"])
    assert load_lm_graph(bundle).graph.node  # the whole graph, weights in memory
    lacking = replace(bundle, files={"model.onnx": bundle.file("model.onnx")})
    with pytest.raises(MissingFileError, match=r"model\.onnx\.data"):
        load_lm_graph(lacking)
    short = replace(bundle, files={**bundle.files, LM_WEIGHTS_FILE: b"\0" * 16})
    with pytest.raises(ValueError, match=r"lies outside 'model\.onnx\.data'"):
        load_lm_graph(short)


# -- a real coordinator and a real agent -------------------------------------------------------


@dataclass
class Fleet:
    proc: CoordinatorProc
    redis_url: str


@pytest.fixture(scope="module")
def fleet(built: Built, redis_server: str) -> Iterator[Fleet]:
    url = redis_server.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    proc = CoordinatorProc(built.data_dir, free_port(), ["--redis-url", url]).start()
    yield Fleet(proc, url)
    proc.stop()


class Agent:
    """The agent's real cache and reconciler behind a scripted (real-heartbeat) device."""

    def __init__(self, built: Built, fleet: Fleet, state: Path) -> None:
        self.fleet = fleet
        self.device = ScriptedDevice.register(fleet.proc.address, "lm-adapter", "rpi4")
        self.cache = ArtifactCache(state, [public_key_hex(built.store.public_key())])
        self.rec = Reconciler(self.cache, device_id=self.device.device_id, wait_seconds=None)

    def deploy(self, variant: str) -> Any:
        with redis.Redis.from_url(self.fleet.redis_url) as r:
            r.hset(f"{{edgefleet}}:device:{self.device.device_id}", "desired_variant", variant)
        meta = (("authorization", f"Bearer {self.device.credential}"),)

        async def body() -> None:
            async with grpc.aio.insecure_channel(self.fleet.proc.address) as ch:
                stub = artifact_pb2_grpc.ArtifactServiceStub(ch)
                await self.rec.reconcile(Desired(generation=1, variant_id=variant), stub, meta)

        asyncio.run(body())
        self.device.active = self.cache.current()
        self.device.previous = self.cache.previous()
        self.device.heartbeat()
        return self.rec.last_download


def test_agent_holding_the_int4_base_gets_the_adapter_variant_as_a_delta(
    built: Built, fleet: Fleet, tmp_path: Path
) -> None:
    agent = Agent(built, fleet, tmp_path / "agent")
    base, tuned = built.base["int4-g32"], built.tuned["int4-g32"]
    assert agent.deploy(base).delta_base == ""
    got = agent.deploy(tuned)
    full = sum(len(b) for b in built.store.load(tuned).files.values())
    assert got.delta_base == base and got.bytes_received < full / 2
    assert agent.cache.delta_fallbacks == [] and agent.cache.current() == tuned
    served = agent.cache.load_current()
    assert served is not None
    np.testing.assert_array_equal(_logits(served), _logits(built.store.load(tuned)))


def test_corrupted_lm_delta_falls_back_to_the_full_bundle(
    built: Built, fleet: Fleet, tmp_path: Path
) -> None:
    base, tuned = built.base["fp32"], built.tuned["fp32"]
    blob = bytearray(_delta(built.store, base, tuned))
    blob[-10] ^= 0xFF  # a payload byte: the signed header's payload sha256 no longer matches
    deltas = built.data_dir / "artifacts" / "deltas"
    deltas.mkdir(parents=True, exist_ok=True)
    (deltas / f"{base}-{tuned}.delta").write_bytes(bytes(blob))
    sidecar = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (deltas / f"{base}-{tuned}.json").write_text(json.dumps(sidecar))
    agent = Agent(built, fleet, tmp_path / "agent")
    agent.deploy(base)
    got = agent.deploy(tuned)
    assert got.delta_base == ""  # the full archive, after the refused delta
    assert len(agent.cache.delta_fallbacks) == 1
    assert "payload sha256" in agent.cache.delta_fallbacks[0]
    assert agent.cache.current() == tuned
    served = agent.cache.load_current()
    assert served is not None and dict(served.files) == dict(built.store.load(tuned).files)


def test_rollout_plans_the_adapter_variant_of_the_precision_the_device_runs(built: Built) -> None:
    manifests = [(i, dict(built.store.load(i).manifest)) for i in built.tuned.values()]

    def record(active: str) -> DeviceRecord:
        return DeviceRecord(
            "d1", "pi", get_profile("rpi4"), "k", "c", 0.0, 0.0, active_variant=active
        )

    (fresh,), _ = select_lm_devices([record("")], manifests)
    assert fresh[1].winner is not None
    assert fresh[1].winner.facts.id == built.tuned["int4-g32"]  # fewest bytes read per token
    (held,), _ = select_lm_devices([record(built.base["fp32"])], manifests)
    assert held[1].winner is not None and held[1].winner.facts.id == built.tuned["fp32"]
    assert "kept fp32 over int4-g32: the device runs its parent" in held[1].reason
    # what `devices explain` says is what the rollout plans
    explained = select_lm_device(record(built.base["fp32"]), manifests)
    assert explained.winner is not None and explained.winner.facts.id == built.tuned["fp32"]

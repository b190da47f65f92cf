"""Streaming generation on the device, and LM variants as ordinary signed bundles.

A tiny ByteLM (1 layer, width 32) is exported once per module into fp32 and int4-g32 KV-cache
graphs, signed into a variant store as a language-model model, and served by the agent's real
Serving and InferenceServer (onnxruntime, loopback gRPC): ``Generate`` streams tokens,
deterministically with a seed, respects max_tokens and stop sequences, refuses bad fields in
one line and a classifier with FAILED_PRECONDITION; the CLI streams the same answer; the
interval metrics carry time to first token and tokens/s; explain names the context budget.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from prometheus_client import generate_latest
from typer.testing import CliRunner

from edgefleet.agent.generation import GenerateParams, check_params, sample
from edgefleet.agent.inference_server import InferenceServer
from edgefleet.agent.runtimes import InputError
from edgefleet.agent.serving import Serving
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.cli.app import app
from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.lm_explain import explain_lm, is_lm_manifest, lm_facts
from edgefleet.coordinator.lm_selection import LMPolicy
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.modelops.lm_bundle import lm_manifest, register_lm_model
from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants
from edgefleet.modelops.lm_measure import LMMeasurement
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ByteLM
from tests.conftest import ADMIN_TOKEN, CoordinatorProc
from tests.fleetkit import ScriptedDevice

CONTEXT = 64


@dataclass
class Served:
    store: VariantStore
    ids: dict[str, str]  # recipe -> variant id
    serving: Serving
    port: int
    state_dir: Path
    model: ByteLM
    variants: list[LMVariantFile]

    def bundle(self, recipe: str) -> Bundle:
        return self.store.load(self.ids[recipe])

    def stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{self.port}")
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("lmgen")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ByteLM(dim=32, layers=1, heads=2, context=CONTEXT).eval()
    variants = build_lm_variants(model, root / "onnx", ("fp32", "int4-g32"))
    torch.set_num_threads(threads)
    store = VariantStore(root / "coord")
    entry = register_lm_model(store, "tiny-lm", model, variants, dataset="none")
    ids = {store.load(i).manifest["recipe_label"]: i for i in [entry.base, *entry.variants]}
    serving = Serving(get_profile("rpi4"))
    assert serving.load(store.load(ids["fp32"]), "onnxruntime") is None
    loop = asyncio.new_event_loop()
    server = InferenceServer(serving, 0)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    state = root / "agent-state"
    state.mkdir()
    (state / "inference.json").write_text(
        json.dumps({"address": f"127.0.0.1:{server.bound_port}", "port": server.bound_port})
    )
    yield Served(store, ids, serving, server.bound_port, state, model, variants)
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def _gen(s: Served, **fields: object) -> list[inference_pb2.GenerateChunk]:
    if "data" not in fields:
        fields.setdefault("text", "def ")
    return list(s.stub().Generate(inference_pb2.GenerateRequest(**fields), timeout=60))  # type: ignore[arg-type]


def _text(chunks: list[inference_pb2.GenerateChunk]) -> bytes:
    return b"".join(c.data for c in chunks)


def test_generate_streams_tokens_deterministically_with_a_seed(served: Served) -> None:
    a = _gen(served, max_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    b = _gen(served, max_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    c = _gen(served, max_tokens=12, temperature=1.0, seed=8)
    assert [x.index for x in a] == list(range(12))
    assert _text(a) == _text(b) and _text(a) != _text(c)
    last = a[-1]
    assert last.finish_reason == "length" and all(not x.finish_reason for x in a[:-1])
    assert last.prompt_tokens == 4 and last.context_limit == CONTEXT
    assert last.variant_id == served.ids["fp32"]
    assert last.time_to_first_token_ms > 0 and last.tokens_per_second > 0
    # the context limit ends generation even when max_tokens would go on
    long = _gen(served, data=b"x" * (CONTEXT - 5), max_tokens=100)
    assert len(long) == 5 and long[-1].finish_reason == "context"
    # the interval metrics carry the generation figures the coordinator relays
    m = served.serving.take_interval().metrics()
    assert m["generation_count"] >= 4 and m["generation_tokens"] >= 12 * 3 + 5
    assert m["generation_ttft_ms"] > 0 and m["generation_tokens_per_s"] > 0
    # ... which the coordinator's /metrics exports as the agent reports them
    relay = CoordinatorMetrics()
    for name, value in m.items():
        relay.relay_device_metric(name, value, served.ids["fp32"], "rpi4", lambda _: True)
    text = generate_latest(relay.registry).decode()
    label = f'{{profile="rpi4",variant="{served.ids["fp32"][:12]}"}}'
    ttft = (
        f"edgefleet_generation_time_to_first_token_seconds{label} {m['generation_ttft_ms'] / 1000}"
    )
    assert ttft in text
    assert f"edgefleet_generation_tokens_per_second{label} " in text


def test_generate_ends_at_a_stop_sequence_which_it_includes(served: Served) -> None:
    free = _text(_gen(served, max_tokens=20))  # greedy: the same answer every time
    stop = free[5:7]
    cut = free[: free.index(stop) + len(stop)]
    chunks = _gen(served, max_tokens=20, stop=[b"\x00never", stop])
    assert _text(chunks) == cut and chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": ""}, "prompt is empty"),
        ({"max_tokens": 5000}, "max_tokens must be 1..4096"),
        ({"temperature": -1.0}, "temperature must be"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"stop": [b""]}, "a stop sequence must be 1..64 bytes"),
        ({"stop": [b"x"] * 9}, "9 stop sequences"),
        ({"data": b"y" * CONTEXT}, f"the variant holds {CONTEXT} positions"),
    ],
)
def test_bad_fields_are_refused_in_one_line(
    served: Served, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _gen(served, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert message in details and "\n" not in details


def test_a_classifier_or_nothing_active_is_a_failed_precondition(
    served: Served, tmp_path: Path
) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.ones(8, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    body = {
        "model": "clf",
        "precision": "fp32",
        "input": {"shape": [1, 4], "dtype": "float32"},
        "runtimes": {"onnxruntime": {"file": "model.onnx"}},
    }
    clf = served.store.put(body, {"model.onnx": proto.SerializeToString()})
    try:
        assert served.serving.load(served.store.load(clf), "onnxruntime") is None
        with pytest.raises(grpc.RpcError) as err:
            _gen(served)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not a language model" in (err.value.details() or "")
        served.serving.unload()
        with pytest.raises(grpc.RpcError) as err:
            _gen(served)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        assert served.serving.load(served.bundle("fp32"), "onnxruntime") is None
    # and an LM refuses Infer in one line
    with pytest.raises(InputError, match="call Generate"):
        served.serving.infer(np.zeros((1, 1), np.int64))


def test_the_int4_bundle_is_served_and_the_cli_streams_the_answer(served: Served) -> None:
    runner = CliRunner()
    args = ["infer", str(served.state_dir), "--prompt", "def ", "--max-tokens", "10"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    want = _text(_gen(served, max_tokens=10))
    assert first.stdout_bytes == want + b"\n"
    assert "10 tokens after a 4-token prompt" in first.stderr and "stopped: length" in first.stderr
    bad = runner.invoke(app, ["infer", f"127.0.0.1:{served.port}", "--prompt", ""])
    assert bad.exit_code == 1 and "INVALID_ARGUMENT: prompt is empty" in bad.stderr
    nowhere = runner.invoke(app, ["infer", "not-a-device", "--prompt", "x"])
    assert nowhere.exit_code == 1 and "neither HOST:PORT nor an agent state" in nowhere.stderr
    try:
        bundle = served.bundle("int4-g32")
        assert bundle.manifest["precision"] == "int4-weight-only"
        assert served.serving.load(bundle, "onnxruntime") is None
        out = _gen(served, max_tokens=6, seed=1, temperature=0.7)
        assert len(out) == 6 and out[-1].variant_id == served.ids["int4-g32"]
    finally:
        assert served.serving.load(served.bundle("fp32"), "onnxruntime") is None


def test_lm_bundles_carry_what_devices_and_selection_need_and_explain_names_the_budget(
    served: Served,
) -> None:
    manifests = [(i, served.store.load(i).manifest) for i in served.ids.values()]
    assert all(is_lm_manifest(m) for _, m in manifests)
    lm = manifests[0][1]["language_model"]
    assert lm["context"] == CONTEXT and lm["kv_bytes_per_position"] == 2 * 1 * 2 * 16 * 4
    short = explain_lm(get_profile("rpi4"), manifests, LMPolicy(min_context=128))
    assert short.winner is None and "model context: 64 < policy minimum 128" in short.reason
    sel = explain_lm(get_profile("rpi4"), manifests)
    assert sel.winner is not None and sel.winner.context_limit == CONTEXT
    assert "set by the model context budget" in sel.reason
    # measured numbers travel in the manifest and reach selection
    measured = LMMeasurement(6.5, 900.0, 400.0, {32: 2_000_000}, {32: 4096})
    fp32 = next(v for v in served.variants if v.recipe == "fp32")
    body = lm_manifest("tiny-lm", served.model, fp32, measured)
    assert body["metrics"]["decode_tok_s"] == 400.0 and body["precision"] == "fp32"
    facts = lm_facts("x" * 64, body)
    assert facts.perplexity == 6.5 and facts.max_context == CONTEXT
    assert facts.activation_bytes == 2_000_000 - fp32.bytes - 256 * 32
    with pytest.raises(ValueError, match="not a language-model bundle"):
        lm_facts("x" * 64, {"metrics": {}})
    mcu = explain_lm(get_profile("cortex-m4"), manifests)
    assert mcu.winner is None and mcu.reason.startswith("refused")


def test_devices_explain_for_a_language_model_names_the_context_budget(
    served: Served, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    coord = coordinator_factory(data_dir=served.store.root)  # its own store: the module's
    pi = ScriptedDevice.register(coord.address, "pi", "rpi4")
    mcu = ScriptedDevice.register(coord.address, "m4", "cortex-m4")
    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        got = admin.explain_device(pi.device_id, "tiny-lm")
        assert got.chosen_variant in served.ids.values()
        assert "64 positions, set by the model context budget" in got.reason
        refused = admin.explain_device(mcu.device_id, "tiny-lm")
        assert refused.reason.startswith("refused") and refused.chosen_variant == ""


def test_sampling_rules() -> None:
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert sample(logits, 0.0, 0, 1.0, rng) == 1
    assert {sample(logits, 1.0, 1, 1.0, rng) for _ in range(20)} == {1}  # top-k 1 is greedy
    picks = {sample(logits, 1.0, 0, 0.6, rng) for _ in range(50)}
    assert picks == {1, 2}  # the nucleus holds the two likeliest
    with pytest.raises(InputError, match="top_k must be >= 0"):
        check_params(GenerateParams(b"a", top_k=-1), 8)


def test_the_context_limit_from_the_coordinator_holds_generation(served: Served) -> None:
    """A rollout's desired state carries LM selection's context limit for the device; Serving
    holds Generate to it (not to the manifest's context), per variant, until it is lifted."""
    fp32 = served.ids["fp32"]
    served.serving.limit_context(fp32, 16)
    try:
        assert served.serving.context_limit() == 16
        with pytest.raises(grpc.RpcError) as err:
            _gen(served, data=b"y" * 20)  # fits the manifest's 64 positions, not the 16
        assert "the variant holds 16 positions" in (err.value.details() or "")
        chunks = _gen(served, data=b"y" * 10, max_tokens=50)
        assert len(chunks) == 6 and chunks[-1].finish_reason == "context"
        assert chunks[-1].context_limit == 16
        served.serving.limit_context(served.ids["int4-g32"], 8)  # another variant's: no effect
        assert served.serving.context_limit() == 16
    finally:
        served.serving.limit_context(fp32, 0)
    assert served.serving.context_limit() == CONTEXT

"""The int8 KV cache (``+kv8`` recipes): graph, agent loop, manifest, selection.

A tiny ByteLM (1 layer, width 32, random weights) is exported once into fp32 and fp32+kv8
graphs. Its kv8 graph gives the fp32 graph's logits within a stated tolerance on the same
tokens and the same greedy continuation; the agent's loop (through the real OrtRuntime) carries
int8 arrays and fp32 scales between steps, one position more per step; a manifest with a
cache dtype the agent does not know is refused at load in one line; selection gives the int8
cache a longer context where RAM binds, and says so (not where bandwidth binds: the graph
dequantizes each layer to fp32 every step).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import torch
from onnx import TensorProto, helper

from edgefleet.agent.generation import GenerateParams, generate, lm_spec
from edgefleet.agent.runtimes import BundleFormatError
from edgefleet.agent.runtimes.ort import OrtRuntime
from edgefleet.catalog import get_profile
from edgefleet.coordinator import lm_selection as lms
from edgefleet.coordinator.lm_explain import lm_facts
from edgefleet.modelops.lm_bundle import lm_manifest, lm_variant_body
from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants, parse_lm_recipe
from edgefleet.modelops.lm_kv8 import KVGraphError, int8_kv_cache
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ByteLM

LAYERS, HEADS, DIM = 1, 2, 32
HEAD_DIM = DIM // HEADS
#: logits of the kv8 graph vs fp32 on the same tokens: at most this fraction of fp32's logit
#: range (per-token symmetric int8 keeps about 0.4 % of each vector's max; measured ~0.1 %)
LOGIT_TOLERANCE = 0.02


@dataclass
class Built:
    model: ByteLM
    variants: dict[str, LMVariantFile]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ByteLM(dim=DIM, layers=LAYERS, heads=HEADS, context=64).eval()
    out = build_lm_variants(model, tmp_path_factory.mktemp("kv8"), ("fp32", "fp32+kv8"))
    torch.set_num_threads(threads)
    return Built(model, {v.recipe: v for v in out})


def _session(path: Path) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _spec(built: Built, recipe: str) -> Any:
    spec = lm_spec(lm_manifest("tiny", built.model, built.variants[recipe]))
    assert spec is not None
    return spec


def _stepper(sess: Any, seen: list[dict[str, npt.NDArray[Any]]] | None = None) -> Any:
    def step(feeds: Mapping[str, npt.NDArray[Any]]) -> Sequence[npt.NDArray[Any]]:
        if seen is not None:
            seen.append(dict(feeds))
        out: list[npt.NDArray[Any]] = sess.run(None, dict(feeds))
        return out

    return step


def test_kv8_graph_matches_fp32_logits_and_greedy_tokens(built: Built) -> None:
    fp32, kv8 = (built.variants[r] for r in ("fp32", "fp32+kv8"))
    s32, s8 = _session(fp32.path), _session(kv8.path)
    assert [i.name for i in s8.get_inputs()] == [
        "tokens", "past_k", "past_k_scale", "past_v", "past_v_scale",
    ]  # fmt: skip
    assert {i.name: i.type for i in s8.get_inputs()}["past_k"] == "tensor(int8)"
    prompt = GenerateParams(b"def main(", max_tokens=16)
    greedy32 = b"".join(t.data for t in generate(_stepper(s32), _spec(built, "fp32"), prompt))
    greedy8 = b"".join(t.data for t in generate(_stepper(s8), _spec(built, "fp32+kv8"), prompt))
    assert len(greedy8) == 16 and greedy8 == greedy32
    # teacher-forced on the same bytes: every decode step reads the quantized cache back
    tokens = np.frombuffer(b"def main(" + greedy32, np.uint8).astype(np.int64)[None, :]
    want = s32.run(["logits"], {"tokens": tokens, **_empty(LAYERS, np.float32)})[0]
    cache = _empty(LAYERS, np.int8)
    got = []
    for i in range(tokens.shape[1]):
        out = s8.run(None, {"tokens": tokens[:, i : i + 1], **cache})
        names = ("past_k", "past_k_scale", "past_v", "past_v_scale")
        cache = {n: np.concatenate((cache[n], x), axis=0) for n, x in zip(names, out[1:], strict=True)}  # fmt: skip
        got.append(out[0])
    diff = float(np.abs(np.concatenate(got, axis=1) - want).max())
    assert 0.0 < diff < LOGIT_TOLERANCE * float(want.max() - want.min())


def _empty(layers: int, dtype: Any) -> dict[str, npt.NDArray[Any]]:
    if dtype == np.int8:  # positions first
        q = np.zeros((0, layers, 1, HEADS, HEAD_DIM), dtype)
        s = np.zeros((0, layers, 1, HEADS, 1), np.float32)
        return {"past_k": q, "past_k_scale": s, "past_v": q, "past_v_scale": s}
    z = np.zeros((layers, 1, HEADS, 0, HEAD_DIM), dtype)
    return {"past_k": z, "past_v": z}


def _store_bundle(tmp_path: Path, built: Built, recipe: str, **lm: object) -> Any:
    body = lm_manifest("tiny", built.model, built.variants[recipe])
    body["language_model"].update(lm)
    store = VariantStore(tmp_path / "store")
    vid = store.put(body, {"model.onnx": built.variants[recipe].path.read_bytes()})
    return store.load(vid)


def test_agent_loop_carries_an_int8_cache_between_steps(built: Built, tmp_path: Path) -> None:
    bundle = _store_bundle(tmp_path, built, "fp32+kv8")
    lm = bundle.manifest["language_model"]
    per_position = 2 * LAYERS * HEADS * (HEAD_DIM + 4)  # int8 elements + an fp32 scale each
    assert (lm["kv_dtype"], lm["kv_bytes_per_position"]) == ("int8", per_position)
    rt = OrtRuntime(get_profile("rpi4"))
    rt.load(bundle)  # checks the graph's int8 I/O and runs a warm-up prefill
    assert rt.language_model is not None and rt.language_model.kv_dtype == "int8"
    seen: list[dict[str, npt.NDArray[Any]]] = []
    views: list[npt.NDArray[Any]] = []

    def step(feeds: Mapping[str, npt.NDArray[Any]]) -> Sequence[npt.NDArray[Any]]:
        seen.append({n: np.array(a) for n, a in feeds.items()})  # copies: what this step got
        views.append(feeds["past_k"])
        return rt.lm_step(feeds)

    prompt = b"import os"
    out = list(generate(step, rt.language_model, GenerateParams(prompt, max_tokens=6)))
    assert len(out) == 6 and len(seen) == 6  # a prefill, then one step per later token
    # grown in place: every decode step is fed a contiguous view of one buffer, and a position
    # once written keeps its int8 values and scale (nothing is requantized)
    assert all(v.flags.c_contiguous and np.shares_memory(v, views[-1]) for v in views[1:])
    for n in ("past_k", "past_k_scale", "past_v", "past_v_scale"):
        assert np.array_equal(seen[1][n], seen[-1][n][: len(prompt)])
    for i, feeds in enumerate(seen):
        positions = 0 if i == 0 else len(prompt) + i - 1
        k, ks = feeds["past_k"], feeds["past_k_scale"]
        assert k.dtype == np.int8 and feeds["past_v"].dtype == np.int8
        assert ks.dtype == np.float32 and ks.shape == (positions, LAYERS, 1, HEADS, 1)
        assert k.nbytes == LAYERS * HEADS * positions * HEAD_DIM
        cache = sum(feeds[n].nbytes for n in ("past_k", "past_k_scale", "past_v", "past_v_scale"))
        assert cache == per_position * positions
    # the cache a float32 graph would hold at the last step: 4 bytes per element, no scales
    last = len(prompt) + 4
    assert 2 * LAYERS * HEADS * HEAD_DIM * 4 * last > 3 * per_position * last


@pytest.mark.parametrize(
    ("recipe", "kv", "says"),
    [
        ("fp32+kv8", "int4", "language_model.kv_dtype must be float32, float16, int8, got 'int4'"),
        ("fp32", "int8", "language model (int8 cache) has inputs tokens/past_k/past_v"),
    ],
)
def test_a_cache_the_agent_cannot_serve_is_one_line(
    built: Built, tmp_path: Path, recipe: str, kv: str, says: str
) -> None:
    bundle = _store_bundle(tmp_path, built, recipe, kv_dtype=kv)
    with pytest.raises(BundleFormatError) as err:
        OrtRuntime(get_profile("rpi4")).load(bundle)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_kv8_recipes_parse_and_bad_ones_are_one_line() -> None:
    assert parse_lm_recipe("int4-g64+kv8") == (4, 64)
    assert parse_lm_recipe("int8+kv8") == (8, 32)
    for bad, says in (
        ("fp16+kv8", "fp16+kv8 is not built"),
        ("int4-g32+kv4", "unknown LM recipe 'int4-g32+kv4'"),
        ("fp32+kv8+kv8", "unknown LM recipe 'fp32+kv8+kv8'"),
    ):
        with pytest.raises(ValueError, match="^" + says.replace("+", r"\+")) as err:
            parse_lm_recipe(bad)
        assert "\n" not in str(err.value)


def _graph(reads: list[Any], cache: int = TensorProto.FLOAT, name: str = "past_k") -> Any:
    """A stand-in graph whose past_k is read by ``reads`` (past_v passes through)."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            *reads,
            helper.make_node("Identity", ["past_v"], ["present_v"]),
            helper.make_node("Cast", ["tokens"], ["logits"], to=f),
        ],
        "g",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info(name, cache, [1, 1, 1, 0, 2]),
            helper.make_tensor_value_info("past_v", f, [1, 1, 1, 0, 2]),
        ],
        [helper.make_tensor_value_info(n, f, None) for n in ("logits", "present_k", "present_v")],
        [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    return helper.make_model(graph)


def _reads(op: str, *inputs: str, **attrs: int) -> list[Any]:
    node = helper.make_node(op, list(inputs), ["present_k"])
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return [node]


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (_graph(_reads("Identity", "past_k")), "past_k is read by a Identity node"),
        (
            _graph(_reads("Identity", "cache"), name="cache"),
            "inputs are ['tokens', 'cache', 'past_v']",
        ),
        (
            _graph(_reads("Identity", "past_k"), TensorProto.FLOAT16),
            "derived from the fp32 graph",
        ),
        (_graph(_reads("Shape", "past_k", start=0)), "past_k's shape is read as {'start': 0}"),
        (
            _graph(_reads("Gather", "past_k", "zero", axis=0)),
            "layer 0 of past_k is not grown by a Concat(past, new)",
        ),
    ],
)
def test_a_graph_the_rewrite_does_not_know_is_refused_in_one_line(model: Any, says: str) -> None:
    with pytest.raises(KVGraphError) as err:
        int8_kv_cache(model)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_int8_cache_refuses_to_grow_past_its_context(built: Built) -> None:
    from edgefleet.agent.generation import KVCache
    from edgefleet.agent.runtimes import InferenceError

    cache = KVCache(replace(_spec(built, "fp32+kv8"), context=4))
    k = np.zeros((5, LAYERS, 1, HEADS, HEAD_DIM), np.int8)
    s = np.zeros((5, LAYERS, 1, HEADS, 1), np.float32)
    with pytest.raises(InferenceError, match="holds 4 positions; this step needs 5"):
        cache.update([np.zeros(1), k, s, k, s])
    assert cache.positions == 0


def test_selection_gives_the_int8_cache_a_longer_context_where_ram_binds(built: Built) -> None:
    base = lm_manifest("tiny", built.model, built.variants["fp32"])
    body = lm_variant_body(base, built.variants["fp32+kv8"])
    assert body["language_model"]["kv_dtype"] == "int8"
    assert body["language_model"]["kv_bytes_per_position"] == 2 * LAYERS * HEADS * (HEAD_DIM + 4)
    facts = lm_facts("v8", {**body, "metrics": {"size_bytes": 1000}})
    assert facts.kv_dtype == "int8" and facts.kv_bytes_per_token == 2 * HEADS * (HEAD_DIM + 4)
    # SmolLM2-135M-sized int4 weights, a long model context. On a 1 GiB phone RAM sets the
    # float cache's context; a cache a quarter the size (plus scales) reaches further, until
    # decode speed stops it
    kv32, kv8 = 2 * 30 * 3 * 64 * 4, 2 * 30 * 3 * (64 + 4)
    f32 = lms.LMFacts(
        id="int4", recipe="int4-g32", precision="fp32", bundle_bytes=85_000_000,
        weight_bytes=85_000_000, kv_bytes_per_token=kv32, activation_bytes=20_000_000,
        activation_bytes_per_token=0, perplexity=10.4, max_context=65536,
    )  # fmt: skip
    f8 = replace(f32, id="int4kv8", recipe="int4-g32+kv8", kv_bytes_per_token=kv8, kv_dtype="int8")
    small = get_profile("phone-budget").model_copy(update={"ram_bytes": 1 << 30})
    alone = lms.select_lm(small, [f32])
    both = lms.select_lm(small, [f32, f8])
    assert alone.winner is not None and both.winner is not None
    assert (alone.winner.budget, both.winner.budget) == ("ram", "decode speed")
    assert both.winner.facts.recipe == "int4-g32+kv8"
    assert both.winner.context_limit > 1.3 * alone.winner.context_limit
    assert "KV cache int8, 12.0 KiB/position" in both.reason
    assert f"int4-g32 holds {alone.winner.context_limit} positions, set by ram" in both.reason
    assert "KV int8" in lms.explain_line(both)
    # where bandwidth binds (a Zero 2 W) the int8 cache buys nothing: this graph dequantizes
    # every layer's cache to fp32 each step, so decode moves at least the float cache's bytes
    zero = lms.select_lm(get_profile("rpi-zero2w"), [f32, f8])
    assert zero.winner is not None and zero.winner.facts.recipe == "int4-g32"
    by_recipe = {v.facts.recipe: v for v in zero.verdicts}
    assert by_recipe["int4-g32+kv8"].context_limit <= by_recipe["int4-g32"].context_limit
    # scaled from benchmark rows, an int8 row keeps an int8 cache at SmolLM2's shape
    scaled = lms.scale_facts([f32, f8], lms.SMOLLM2_135M, 128)
    assert [s.kv_bytes_per_token for s in scaled] == [kv32, kv8]


def test_kv8_graph_loads_in_onnx_checker(built: Built) -> None:
    model = onnx.load(str(built.variants["fp32+kv8"].path))
    outs = [o.name for o in model.graph.output]
    assert outs == ["logits", "new_k", "new_k_scale", "new_v", "new_v_scale"]
    ops = [n.op_type for n in model.graph.node]
    # dequantized where each layer is read (Cast + Mul), quantized once on the way out
    assert ops.count("Cast") >= 2 * LAYERS + 2 and "present_k" not in {
        o for n in model.graph.node for o in n.output
    }


def test_models_build_makes_a_kv8_recipe_from_a_registered_lm(built: Built, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.app import app
    from edgefleet.modelops.lm_bundle import register_lm_model

    root = tmp_path / "store"
    register_lm_model(VariantStore(root), "tiny", built.model, [built.variants["fp32"]])
    got = CliRunner().invoke(
        app,
        ["models", "build", "tiny", "--recipes", "int4-g32+kv8", "--json", "--data-dir", str(root)],
    )
    assert got.exit_code == 0, got.output
    (vid,) = json.loads(got.stdout)
    bundle = VariantStore(root).load(vid)
    lm = bundle.manifest["language_model"]
    assert (bundle.manifest["recipe_label"], bundle.manifest["precision"]) == (
        "int4-g32+kv8",
        "int4-weight-only",
    )
    assert (lm["kv_dtype"], lm["kv_bytes_per_position"]) == ("int8", 2 * HEADS * (HEAD_DIM + 4))
    rt = OrtRuntime(get_profile("rpi4"))
    rt.load(bundle)  # the agent serves what the build made: int8 cache in, new positions out
    assert rt.language_model is not None and rt.language_model.kv_dtype == "int8"
    bad = CliRunner().invoke(
        app, ["models", "build", "tiny", "--recipes", "fp16+kv8", "--data-dir", str(root)]
    )
    assert bad.exit_code != 0 and "fp16+kv8 is not built: an fp16 cache is half" in bad.output
    assert len(bad.output.strip().splitlines()) == 1

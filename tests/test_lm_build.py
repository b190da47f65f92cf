"""``models build`` of a language model builds its own recipes from the base's fp32 graph.

The base is a hand-made graph with the KV-cache graph's interface (tokens, past_k, past_v in;
logits, present_k, present_v out) and a real weight ``MatMul``: what the recipes transform.
Exporting a real ByteLM costs a torch export (tests/test_lm_generate.py does one), and nothing
here depends on the network's depth. A classifier recipe on an LM, an LM recipe on a
classifier and a measured base whose text cannot be loaded are each refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.modelops.lm_compress import LM_RECIPES
from edgefleet.variant_store import ModelEntry, VariantStore
from tests.fleetkit import make_model

DIM = 64


def kv_graph() -> bytes:
    """Embedding -> weight MatMul -> logits; the caches pass through."""
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((256, DIM)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((DIM, 256)).astype(np.float32), "w")
    cache = ["L", "B", "H", "P", "D"]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "tokens"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["logits"]),
            helper.make_node("Identity", ["past_k"], ["present_k"]),
            helper.make_node("Identity", ["past_v"], ["present_v"]),
        ],
        "kv",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "N"]),
            helper.make_tensor_value_info("past_k", TensorProto.FLOAT, cache),
            helper.make_tensor_value_info("past_v", TensorProto.FLOAT, cache),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "N", 256]),
            helper.make_tensor_value_info("present_k", TensorProto.FLOAT, cache),
            helper.make_tensor_value_info("present_v", TensorProto.FLOAT, cache),
        ],
        [emb, w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def add_lm_base(root: Path, name: str, **metrics: Any) -> str:
    store = VariantStore(root)
    graph = kv_graph()
    body = {
        "model": name,
        "task": "language-model",
        "kind": "language-model",
        "dataset": "nowhere.txt",
        "architecture": {"arch": "byte-lm", "config": {}},
        "recipe_label": "fp32",
        "recipe": {"name": "fp32", "bits": 32, "group": 0},
        "precision": "fp32",
        "input": {"shape": [1, 1], "dtype": "int64"},
        "language_model": {
            "vocab": 256, "layers": 1, "heads": 2, "head_dim": 32, "context": 64,
            "kv_dtype": "float32", "kv_bytes_per_position": 2 * 1 * 2 * 32 * 4,
        },
        "runtimes": {"onnxruntime": {"file": "model.onnx"}},
        "metrics": {"size_bytes": len(graph), **metrics},
    }  # fmt: skip
    base = store.put(body, {"model.onnx": graph})
    store.add_model(
        ModelEntry(
            name, {"arch": "byte-lm", "config": {}}, "text", base, [], {"task": "language-model"}
        )
    )
    return base


def build(root: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["models", "build", *args, "--data-dir", str(root)])


def test_models_build_makes_an_lms_recipes_from_its_base_graph(tmp_path: Path) -> None:
    root = tmp_path / "store"
    base = add_lm_base(root, "lm")
    got = build(root, "lm", "--recipes", "int4-g32,fp16", "--json")
    assert got.exit_code == 0, got.output
    int4, fp16 = json.loads(got.stdout)
    store = VariantStore(root)
    m4, m16 = store.load(int4).manifest, store.load(fp16).manifest
    assert (m4["recipe_label"], m4["precision"], m4["parent"]) == (
        "int4-g32",
        "int4-weight-only",
        base,
    )
    assert m4["language_model"]["kv_bytes_per_position"] == 512 and m4["task"] == "language-model"
    assert m16["language_model"]["kv_dtype"] == "float16"
    assert m16["language_model"]["kv_bytes_per_position"] == 256  # an fp16 cache: half
    ops = {n.op_type for n in onnx.load_from_string(store.load(int4).file("model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    # the weight MatMul (64 KB in fp32) is 4-bit now; the embedding (a Gather) stays fp32
    assert m4["metrics"]["size_bytes"] < store.load(base).manifest["metrics"]["size_bytes"] - 40_000
    again = build(root, "lm", "--recipes", "int4-g32", "--json")  # idempotent
    assert json.loads(again.stdout) == [int4] and store.model("lm").variants == [int4, fp16]
    rest = build(root, "lm", "--json")  # no --recipes: every LM recipe it lacks
    assert rest.exit_code == 0, rest.output
    labels = {store.load(v).manifest["recipe_label"] for v in store.model("lm").variants}
    assert labels | {"fp32"} == set(LM_RECIPES) and len(json.loads(rest.stdout)) == 3
    done = build(root, "lm")
    assert done.exit_code == 0 and "nothing to build" in done.stdout


@pytest.mark.parametrize(
    ("model", "recipes", "message"),
    [
        ("lm", "prune-channels", "'lm' is a language model: its recipes are fp32, fp16, int8"),
        ("digits", "int4-g32", "unknown recipe"),
        ("measured", "int8", "the base's perplexity was measured on 'nowhere.txt', which"),
    ],
)
def test_models_build_refuses_what_does_not_apply_in_one_line(
    tmp_path: Path, model: str, recipes: str, message: str
) -> None:
    root = tmp_path / "store"
    add_lm_base(root, "lm")
    add_lm_base(root, "measured", perplexity=3.5)
    make_model(root)
    before = VariantStore(root).model(model).variants
    got = build(root, model, "--recipes", recipes)
    assert got.exit_code != 0 and message in got.output
    assert len(got.output.strip().splitlines()) == 1
    assert VariantStore(root).model(model).variants == before  # nothing was built

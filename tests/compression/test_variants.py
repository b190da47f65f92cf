"""Built variants: real sizes, real accuracies, runtimes that agree, bundles that verify.

All numbers are measured in the session fixture (``conftest.built``): a DS-CNN at width 0.5
trained for 10 epochs on digits, compressed by each recipe family.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import load as load_np

from edgefleet.bundle import FileHashMismatch
from edgefleet.modelops.build import load_torch_model, manifest_summary
from edgefleet.modelops.data import Dataset
from edgefleet.modelops.measure import count_macs
from edgefleet.modelops.memplan import plan_memory
from edgefleet.modelops.onnx_export import export_onnx
from edgefleet.modelops.train import predict
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec, build_model

from .conftest import BuiltModel


def _row(built: BuiltModel, key: str) -> dict[str, Any]:
    vid = built.base if key == "base" else built.ids[key]
    return manifest_summary(built.store.load(vid))


def _ort_logits(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_base_model_learned_digits(built: BuiltModel) -> None:
    assert _row(built, "base")["accuracy"] > 0.93


def test_static_int8_is_small_and_accurate(built: BuiltModel) -> None:
    base, int8 = _row(built, "base"), _row(built, "int8")
    assert int8["weight_bytes"] < 0.35 * base["weight_bytes"]
    assert int8["bytes"] < 0.45 * base["bytes"]
    assert int8["accuracy"] >= base["accuracy"] - 0.02
    assert int8["peak_memory_bytes"] * 4 == base["peak_memory_bytes"]  # same graph, 1 B/elem


def test_fp16_halves_weights_and_keeps_accuracy(built: BuiltModel) -> None:
    base, fp16 = _row(built, "base"), _row(built, "fp16")
    assert fp16["weight_bytes"] < 0.55 * base["weight_bytes"]
    assert abs(fp16["accuracy"] - base["accuracy"]) <= 0.005
    assert set(fp16["runtimes"]) == {"onnxruntime", "torch"}


def test_channel_pruning_plus_int8_is_six_times_smaller(built: BuiltModel) -> None:
    base, pruned = _row(built, "base"), _row(built, "pruned_int8")
    assert pruned["weight_bytes"] * 6 <= base["weight_bytes"]
    assert pruned["macs"] < 0.5 * base["macs"]
    assert pruned["accuracy"] >= base["accuracy"] - 0.05


def test_unstructured_pruning_reaches_its_sparsity(built: BuiltModel) -> None:
    bundle = built.store.load(built.ids["unstructured"])
    assert bundle.manifest["metrics"]["sparsity"] >= 0.49
    model = load_torch_model(bundle)
    weights = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.49  # the zeros survived fine-tuning and serialisation


def test_distilled_student_is_narrower_and_close(built: BuiltModel) -> None:
    base, student = _row(built, "base"), _row(built, "distilled")
    assert student["params"] < 0.4 * base["params"]
    assert student["accuracy"] >= base["accuracy"] - 0.05


def test_low_rank_saves_params_and_macs(built: BuiltModel) -> None:
    base, lr = _row(built, "base"), _row(built, "low_rank")
    manifest = built.store.load(built.ids["low_rank"]).manifest
    assert manifest["architecture"]["low_rank"]  # the factorised layers are recorded
    assert lr["params"] < base["params"] and lr["macs"] < base["macs"]
    assert lr["accuracy"] >= base["accuracy"] - 0.05


@pytest.mark.parametrize("key", ["base", "unstructured", "distilled", "low_rank"])
def test_torch_and_onnxruntime_agree(built: BuiltModel, digits: Dataset, key: str) -> None:
    """The manifest alone rebuilds the torch network; it predicts what the ONNX graph does."""
    bundle = built.store.load(built.base if key == "base" else built.ids[key])
    torch_pred = predict(load_torch_model(bundle), digits.x_test).argmax(1)
    ort_pred = _ort_logits(bundle.file("model.onnx"), digits.x_test).argmax(1)
    assert (torch_pred == ort_pred).mean() >= 0.995


def test_recipe_is_recorded_in_manifest(built: BuiltModel) -> None:
    m = built.store.load(built.ids["pruned_int8"]).manifest
    assert [s["kind"] for s in m["recipe"]] == ["prune-channels", "int8-static"]
    assert m["recipe"][0]["params"]["ratio"] == 0.5
    assert m["parent"] == built.base
    assert m["input"]["shape"] == [1, 1, 8, 8]


def test_variants_are_listed_in_the_index(built: BuiltModel) -> None:
    entry = built.store.model("digits-dscnn")
    assert entry.variants == [built.base, *built.ids.values()]


def test_signing_key_is_private(built: BuiltModel) -> None:
    mode = stat.S_IMODE(os.stat(built.store.key_path).st_mode)
    assert mode == 0o600


def test_tampered_variant_is_refused_by_the_store(
    store_copy: VariantStore, built: BuiltModel
) -> None:
    path = store_copy.variants_dir / built.ids["int8"] / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FileHashMismatch):
        store_copy.load(built.ids["int8"])


# --- MCU export: checked by executing it with integers only ---------------------------------


def _requant(acc: np.ndarray, mult: Any, shift: Any) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (rounding doubling high-mul + rounding shift)."""
    mult, shift = np.asarray(mult, np.int64), np.asarray(shift, np.int64)
    x = acc.astype(np.int64) * (np.int64(1) << np.maximum(shift, 0))
    ab = x * mult
    hi = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    hi = np.where(hi >= 0, hi >> 31, -((-hi) >> 31))
    right = np.maximum(-shift, 0)
    mask = (np.int64(1) << right) - 1
    return (hi >> right) + ((hi & mask) > ((mask >> 1) + (hi < 0)))


def _run_mcu(graph: dict[str, Any], t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    meta = graph["tensors"]
    q_in = meta[graph["input"]]
    q = np.round(x.reshape(q_in["shape"]) / q_in["scale"]) + q_in["zero_point"]
    vals = {graph["input"]: np.clip(q, -128, 127).astype(np.int64)}
    for op in graph["ops"]:
        x_q = vals[op["inputs"][0]]
        if op["op"] in ("conv2d", "depthwise_conv2d", "fully_connected"):
            w = t[op["weight"]].astype(np.int64)
            xs = x_q - meta[op["inputs"][0]]["zero_point"]
            mult, shift = t[op["multiplier"]], t[op["shift"]]
            if op["op"] == "fully_connected":
                acc = xs.reshape(1, -1) @ w.T + t[op["bias"]]
                y = _requant(acc, mult[None], shift[None])
            else:
                pt, pl, pb, pr = op["padding"]
                (sh, sw), g = op["stride"], op["groups"]
                xp = np.pad(xs, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
                o, ig, kh, kw = w.shape
                ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
                acc = np.zeros((1, o, ho, wo), np.int64)
                per = o // g
                for gi in range(g):
                    xg = xp[0, gi * ig : (gi + 1) * ig]
                    cols = np.stack(
                        [
                            xg[:, i : i + sh * ho : sh, j : j + sw * wo : sw]
                            for i in range(kh)
                            for j in range(kw)
                        ],
                        1,
                    ).reshape(ig * kh * kw, ho, wo)
                    wg = w[gi * per : (gi + 1) * per].reshape(per, -1)
                    acc[0, gi * per : (gi + 1) * per] = np.einsum("ok,khw->ohw", wg, cols)
                acc += t[op["bias"]][None, :, None, None]
                y = _requant(acc, mult[None, :, None, None], shift[None, :, None, None])
            y = np.clip(y + op["output_zero_point"], op["activation_min"], op["activation_max"])
        elif op["op"] in ("global_average_pool", "reshape"):
            acc = x_q - op["input_zero_point"]
            if op["op"] == "global_average_pool":
                acc = acc.sum(axis=(2, 3))
            y = np.clip(
                _requant(acc, op["multiplier"], op["shift"]) + op["output_zero_point"], -128, 127
            )
        elif op["op"] == "add":
            a, b = (
                _requant((vals[n] - z) << op["left_shift"], m, s)
                for n, z, m, s in zip(
                    op["inputs"],
                    op["input_zero_points"],
                    op["input_multipliers"],
                    op["input_shifts"],
                    strict=True,
                )
            )
            y = np.clip(
                _requant(a + b, op["multiplier"], op["shift"]) + op["output_zero_point"], -128, 127
            )
        else:
            raise AssertionError(f"unexpected op {op['op']}")
        vals[op["output"]] = y.reshape(meta[op["output"]]["shape"])
    return vals[graph["output"]]


@pytest.mark.parametrize("key", ["int8", "pruned_int8"])
def test_mcu_export_runs_integer_only_and_matches_onnxruntime(
    built: BuiltModel, digits: Dataset, key: str
) -> None:
    bundle = built.store.load(built.ids[key])
    graph = json.loads(bundle.file("mcu.json"))
    tensors = load_np(bundle.file("mcu.safetensors"))
    assert {v.dtype for k, v in tensors.items() if k.endswith(".weight")} == {np.dtype(np.int8)}
    assert {v.dtype for k, v in tensors.items() if k.endswith(".bias")} == {np.dtype(np.int32)}
    x = digits.x_test[:120]
    mcu = np.array([_run_mcu(graph, tensors, x[i : i + 1]).argmax() for i in range(len(x))])
    ref = _ort_logits(bundle.file("model.onnx"), x).argmax(1)
    assert (mcu == ref).mean() >= 0.97
    mcu_metrics = bundle.manifest["metrics"]["mcu"]
    base_bytes = manifest_summary(built.store.load(built.base))["weight_bytes"]
    # the int8 .tflite itself (graph, per-channel quantization and int32 biases included)
    assert mcu_metrics["model_bytes"] < 0.5 * base_bytes
    # flash adds the runtime's code for the ops it links (edgefleet.mcu_flash)
    assert mcu_metrics["flash_bytes"] == mcu_metrics["model_bytes"] + mcu_metrics["code_bytes"]


# --- measurement primitives on graphs whose answer is known ----------------------------------


def test_macs_and_peak_memory_of_an_mlp_are_exact() -> None:
    spec = ArchitectureSpec.zoo("mlp", width=1.0)  # 64 -> 128 -> 64 -> 10
    graph = export_onnx(build_model(spec), spec.input_shape)
    assert count_macs(graph) == 64 * 128 + 128 * 64 + 64 * 10
    plan = plan_memory(graph, bytes_per_element=4)
    # Busiest moment: the 128-float hidden layer read while the 64-float one is written
    # (ReLU runs in place; the 64-float input is dead by then).
    assert plan.lower_bound_bytes == (128 + 64) * 4
    assert plan.arena_bytes >= plan.lower_bound_bytes
    assert plan.arena_bytes <= (64 + 128 + 64 + 10) * 4  # better than one buffer per tensor


def test_exported_onnx_has_no_debug_metadata(built: BuiltModel) -> None:
    model = onnx.load_from_string(built.store.load(built.base).file("model.onnx"))
    assert not any(n.metadata_props for n in model.graph.node)
    assert not model.graph.value_info

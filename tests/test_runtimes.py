"""Agent runtimes: the three implementations agree with each other and refuse what cannot run.

A real model is trained once per session (DS-CNN width 0.5 on digits, as the compression
tests do) and compiled to fp32, fp16 and static-int8 variants; every claim below is checked on
the digits test split (360 images). The mcu-sim emulator is held to onnxruntime running the
*same* quantised graph: argmax agreement >= 99% and int8 logits within ``LSB_TOLERANCE``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_np

from edgefleet.agent.runtimes import (
    BudgetExceededError,
    BundleFormatError,
    InputDtypeError,
    InputShapeError,
    NotLoadedError,
    PrecisionUnsupportedError,
    RuntimeMissingError,
    RuntimeUnavailableError,
    TrainingUnsupportedError,
    open_runtime,
)
from edgefleet.agent.runtimes.mcu_sim import McuSimRuntime, requantize
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.cycles import CORE_COSTS, STALL_FACTOR, Core
from edgefleet.mcu_format import MCU_FORMAT, MCU_FORMAT_VERSION
from edgefleet.modelops.build import BuildOptions, build_variants, register_model
from edgefleet.modelops.data import Dataset, load_dataset
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.perf import mcu_latency_ms
from edgefleet.profiles import DeviceProfile
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec

#: Largest |mcu-sim - onnxruntime| on the int8 output tensor we accept, in LSBs (output
#: quantisation steps). The two differ only in rounding: onnxruntime requantises with a float
#: scale and rounds half to even, the MCU with a Q31 multiplier and rounds half away from zero,
#: so one layer can be 1 LSB apart and that difference can grow by a step downstream.
LSB_TOLERANCE = 3
ARGMAX_AGREEMENT = 0.99


@dataclass(frozen=True)
class Variants:
    store: VariantStore
    fp32: Bundle
    fp16: Bundle
    int8: Bundle


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Variants:
    store = VariantStore(tmp_path_factory.mktemp("runtimes-store"))
    options = BuildOptions(latency=LatencyConfig(warmup=2, runs=5))
    spec = ArchitectureSpec.zoo("ds-cnn", width=0.5)
    entry = register_model(store, "digits-dscnn", spec, "digits", epochs=10, options=options)
    int8, fp16 = build_variants(store, "digits-dscnn", ["int8-static", "fp16"], options=options)
    return Variants(store, store.load(entry.base), store.load(fp16), store.load(int8))


@pytest.fixture(scope="module")
def resnet_int8(variants: Variants) -> Bundle:
    """ResNet-8 exercises the residual int8 ADD that DS-CNN lacks."""
    options = BuildOptions(latency=LatencyConfig(warmup=2, runs=5))
    spec = ArchitectureSpec.zoo("resnet-8", width=0.5)
    register_model(variants.store, "digits-resnet8", spec, "digits", epochs=5, options=options)
    (int8,) = build_variants(variants.store, "digits-resnet8", ["int8-static"], options=options)
    return variants.store.load(int8)


def _profile(base: str, **changes: Any) -> DeviceProfile:
    return get_profile(base).model_copy(update=changes)


# --- accuracy match -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["ds-cnn", "resnet-8"])
def test_mcu_sim_matches_onnxruntime_on_the_digits_test_split(
    arch: str, request: pytest.FixtureRequest, digits: Dataset, record_property: Any
) -> None:
    if arch == "ds-cnn":
        bundle = request.getfixturevalue("variants").int8
    else:
        bundle = request.getfixturevalue("resnet_int8")
    assert any(op["op"] == "add" for op in json.loads(bundle.file("mcu.json"))["ops"]) == (
        arch == "resnet-8"
    )
    mcu = open_runtime("mcu-sim", get_profile("cortex-m7"))
    ort = open_runtime("onnxruntime", get_profile("rpi4"))
    mcu.load(bundle)
    ort.load(bundle)
    assert isinstance(mcu, McuSimRuntime)
    x = digits.x_test
    q_mcu = mcu.run_int8(mcu.quantize_input(x)).reshape(len(x), -1)
    assert q_mcu.dtype == np.int8
    out = mcu.graph.tensors[mcu.graph.output]
    # onnxruntime's logits are DequantizeLinear of its int8 output: recover the integers.
    ref = ort.infer(x)
    q_ort = np.round(ref / out.scale).astype(np.int32) + out.zero_point
    lsb = np.abs(q_mcu.astype(np.int32) - q_ort)
    agreement = float((q_mcu.argmax(1) == ref.argmax(1)).mean())
    record_property("argmax_agreement", agreement)
    record_property("max_lsb_diff", int(lsb.max()))
    print(
        f"\n{arch}: mcu-sim vs onnxruntime on {len(x)} test images: argmax agreement "
        f"{agreement:.2%}, max |diff| {int(lsb.max())} LSB, mean {lsb.mean():.3f} LSB"
    )
    assert agreement >= ARGMAX_AGREEMENT
    assert lsb.max() <= LSB_TOLERANCE
    # infer() is the same integers, dequantised
    np.testing.assert_array_equal(mcu.infer(x).argmax(1), q_mcu.argmax(1))
    assert float((mcu.predict(x) == digits.y_test).mean()) > 0.9


def test_torch_matches_onnxruntime_for_fp32_and_fp16(variants: Variants, digits: Dataset) -> None:
    profile = get_profile("jetson-nano")  # fp32 + fp16, torch + onnxruntime
    x = digits.x_test
    for bundle, atol in ((variants.fp32, 1e-4), (variants.fp16, 5e-2)):
        logits = {}
        for name in ("torch", "onnxruntime"):
            rt = open_runtime(name, profile)
            rt.load(bundle)
            logits[name] = rt.infer(x)
            assert logits[name].dtype == np.float32 and logits[name].shape == (len(x), 10)
        agreement = (logits["torch"].argmax(1) == logits["onnxruntime"].argmax(1)).mean()
        assert agreement >= 0.99, bundle.manifest["precision"]
        np.testing.assert_allclose(logits["torch"], logits["onnxruntime"], atol=atol, rtol=1e-2)


@settings(max_examples=300, deadline=None)
@given(
    acc=st.integers(-(2**24), 2**24),
    multiplier=st.integers(2**30, 2**31 - 1),
    shift=st.integers(-31, 6),
)
def test_requantize_is_tflites_fixed_point_arithmetic(
    acc: int, multiplier: int, shift: int
) -> None:
    """Vectorised requantize == TFLite's scalar MultiplyByQuantizedMultiplier, bit for bit."""

    def high_mul(a: int, b: int) -> int:
        ab = a * b
        nudged = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
        return abs(nudged) // (1 << 31) * (1 if nudged >= 0 else -1)  # truncate toward zero

    def divide_by_pot(x: int, exponent: int) -> int:
        mask = (1 << exponent) - 1
        threshold = (mask >> 1) + (1 if x < 0 else 0)
        return (x >> exponent) + (1 if (x & mask) > threshold else 0)

    x = max(-(2**31), min(2**31 - 1, acc * (1 << max(shift, 0))))
    want = divide_by_pot(high_mul(x, multiplier), max(-shift, 0))
    got = requantize(np.array([acc], np.int32), multiplier, shift)
    assert got.dtype == np.int32 and int(got[0]) == want
    if x == acc * (1 << max(shift, 0)):  # unsaturated: within one rounding of the real value
        assert abs(want - acc * multiplier * 2.0 ** (shift - 31)) <= 1.0


# --- refusals -------------------------------------------------------------------------------


def test_wrong_input_shape_or_dtype_is_refused_by_every_runtime(
    variants: Variants, digits: Dataset
) -> None:
    cases = [("torch", variants.fp32, "rpi4"), ("onnxruntime", variants.int8, "rpi4")]
    cases.append(("mcu-sim", variants.int8, "cortex-m7"))
    for name, bundle, profile in cases:
        rt = open_runtime(name, get_profile(profile))
        with pytest.raises(NotLoadedError):
            rt.infer(digits.x_test[:1])
        rt.load(bundle)
        for bad in (
            np.zeros((1, 1, 8, 9), np.float32),
            np.zeros((1, 64), np.float32),
            np.zeros((0, 1, 8, 8), np.float32),
        ):
            with pytest.raises(InputShapeError, match=r"\[N, 1, 8, 8\]"):
                rt.infer(bad)
        with pytest.raises(InputDtypeError, match="float64"):
            rt.infer(digits.x_test[:2].astype(np.float64))
        assert rt.infer(digits.x_test[:3]).shape == (3, 10)  # still serving


def test_a_bundle_without_the_runtimes_files_is_refused(variants: Variants) -> None:
    with pytest.raises(RuntimeMissingError, match="no mcu-sim files"):
        open_runtime("mcu-sim", get_profile("cortex-m4")).load(variants.fp32)
    with pytest.raises(RuntimeMissingError, match="no torch files"):
        open_runtime("torch", get_profile("rpi4")).load(variants.int8)


def test_fp16_bundle_on_an_int8_only_profile_is_refused_and_the_old_variant_keeps_serving(
    variants: Variants, digits: Dataset
) -> None:
    int8_only = _profile("rpi4", name="rpi4-int8", precisions=("int8",))
    rt = open_runtime("onnxruntime", int8_only)
    rt.load(variants.int8)
    with pytest.raises(PrecisionUnsupportedError, match=r"fp16.*supports only int8"):
        rt.load(variants.fp16)
    with pytest.raises(PrecisionUnsupportedError):
        rt.load(variants.fp32)
    assert rt.variant_id == variants.int8.variant_id
    assert rt.infer(digits.x_test[:4]).shape == (4, 10)


def test_mcu_refuses_a_variant_whose_arena_exceeds_sram_naming_both_numbers(
    variants: Variants,
) -> None:
    ok = open_runtime("mcu-sim", get_profile("cortex-m4"))
    ok.load(variants.int8)
    assert isinstance(ok, McuSimRuntime) and ok.plan is not None
    arena = ok.plan.arena_bytes
    # The arena is TFLM's own tensor arena (its head, as TFLM reports it for model.tflite,
    # PAD buffers for ONNX paddings SAME cannot express included) plus CMSIS-NN scratch.
    tflm_head = variants.int8.manifest["metrics"]["mcu"]["tflite"]["arena_head_bytes"]
    assert variants.int8.manifest["metrics"]["peak_memory_bytes"] <= arena
    assert tflm_head <= arena <= 1.25 * tflm_head
    assert ok.plan.lower_bound_bytes <= arena
    small = _profile("cortex-m4", name="cortex-m4-tiny", ram_bytes=arena - 1)
    with pytest.raises(BudgetExceededError) as err:
        open_runtime("mcu-sim", small).load(variants.int8)
    assert err.value.resource == "SRAM arena"
    assert (err.value.needed, err.value.available) == (arena, arena - 1)
    assert f"{arena} bytes" in str(err.value) and f"{arena - 1} bytes" in str(err.value)


def test_mcu_refuses_a_variant_that_does_not_fit_flash(variants: Variants) -> None:
    files = variants.int8.manifest["files"]
    model = files["model.tflite"]["bytes"]  # mcu-sim runs the same file TFLM loads
    # ... plus the TFLM code its ops link: the build's figure is the one the agent checks
    mcu = variants.int8.manifest["metrics"]["mcu"]
    flash = mcu["flash_bytes"]
    assert flash == model + mcu["code_bytes"] and mcu["code_bytes"] > 0
    small = _profile("cortex-m4", name="cortex-m4-tiny", storage_bytes=flash // 2)
    with pytest.raises(BudgetExceededError, match=rf"flash: bundle needs {flash} bytes") as err:
        open_runtime("mcu-sim", small).load(variants.int8)
    assert err.value.available == flash // 2


def test_open_runtime_refuses_runtimes_the_profile_does_not_run() -> None:
    with pytest.raises(RuntimeUnavailableError, match="does not run torch"):
        open_runtime("torch", get_profile("cortex-m4"))
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime"):
        open_runtime("tflite", get_profile("rpi4"))


def test_importing_the_runtime_package_loads_no_numerical_library() -> None:
    code = (
        "import sys, edgefleet.agent.runtimes; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- memory, training ------------------------------------------------------------------------


def test_memory_reports_and_training_hook(variants: Variants) -> None:
    torch_rt = open_runtime("torch", get_profile("rpi4"))
    torch_rt.load(variants.fp32)
    usage = torch_rt.memory()
    assert usage.weights > 4 * variants.fp32.manifest["metrics"]["params"] * 0.99
    assert usage.working > 0 and torch_rt.memory_bytes() == usage.total
    assert torch_rt.supports_training
    counts = {}
    for scope in ("full", "tinytl", "head"):
        model = torch_rt.trainable(scope)
        counts[scope] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["full"] == variants.fp32.manifest["metrics"]["params"]
    assert counts["full"] > counts["tinytl"] > counts["head"] > 0
    ort = open_runtime("onnxruntime", get_profile("rpi4"))
    ort.load(variants.int8)
    assert not ort.supports_training and ort.memory().weights == len(
        variants.int8.file("model.onnx")
    )
    with pytest.raises(TrainingUnsupportedError):
        ort.trainable()


# --- cycle model ----------------------------------------------------------------------------


def test_cycle_model_latency_scales_with_clock_and_counts_the_models_macs(
    variants: Variants, digits: Dataset
) -> None:
    m7 = get_profile("cortex-m7")
    fast = open_runtime("mcu-sim", m7)
    slow = open_runtime("mcu-sim", _profile("cortex-m7", name="m7-half", cpu_mhz=m7.cpu_mhz // 2))
    for rt in (fast, slow):
        rt.load(variants.int8)
    assert isinstance(fast, McuSimRuntime) and isinstance(slow, McuSimRuntime)
    assert fast.estimate is not None and slow.estimate is not None
    assert fast.estimate.macs == variants.int8.manifest["metrics"]["macs"]
    # the coordinator's per-op prediction (the network: this variant has no frontend)
    assert fast.estimate.source == "manifest"
    assert fast.estimate.latency_ms == pytest.approx(mcu_latency_ms(m7, variants.int8.manifest))
    assert slow.estimate.latency_ms == pytest.approx(2 * fast.estimate.latency_ms)
    fast.infer(digits.x_test[:5])
    assert fast.latency_source == "cycle-model"
    assert fast.last_latency_ms == pytest.approx(5 * fast.estimate.latency_ms)
    # A Cortex-M4 (fewer MACs per cycle, lower clock) is slower on the same variant.
    m4 = open_runtime("mcu-sim", get_profile("cortex-m4"))
    m4.load(variants.int8)
    assert isinstance(m4, McuSimRuntime) and m4.estimate is not None
    assert m4.estimate.latency_ms > 3 * fast.estimate.latency_ms


def test_cycle_model_latency_grows_with_macs() -> None:
    profile = get_profile("cortex-m7")
    estimates = []
    for width in (16, 64, 256):
        rt = McuSimRuntime(profile)
        rt.load(_synthetic_bundle([_fc_op()], [1, 64], [1, width]))
        assert rt.estimate is not None
        estimates.append(rt.estimate)
    assert [e.macs for e in estimates] == [64 * 16, 64 * 64, 64 * 256]
    assert {e.source for e in estimates} == {"graph"}  # no op counts in these manifests
    lat = [e.latency_ms for e in estimates]
    assert lat[0] < lat[1] < lat[2]
    # MAC cycles dominate as the layer widens: 16x the MACs costs more than 8x the time.
    assert lat[2] / lat[0] > 8
    mac_cycles = estimates[2].macs * CORE_COSTS[Core.M7].fc * STALL_FACTOR
    assert mac_cycles / estimates[2].cycles > 0.5


# --- the ops the exporter does not emit yet, against float references ----------------------

_SCALE = 0.05


def _fc_op() -> dict[str, Any]:
    return {"op": "fully_connected", "inputs": ["x"], "output": "y", "output_zero_point": 0}


def _synthetic_bundle(
    ops: list[dict[str, Any]],
    in_shape: list[int],
    out_shape: list[int],
    *,
    out_scale: float = _SCALE,
    out_zp: int = 0,
) -> Bundle:
    """A one-op integer graph (unsigned: these tests exercise the emulator, not the signer)."""
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for i, op in enumerate(ops):
        if op["op"] == "fully_connected":
            k, n = math.prod(in_shape), math.prod(out_shape)
            tensors[f"op{i}.weight"] = rng.integers(-127, 128, (n, k), dtype=np.int8)
            tensors[f"op{i}.bias"] = np.zeros(n, np.int32)
            tensors[f"op{i}.multiplier"] = np.full(n, 1 << 30, np.int32)
            tensors[f"op{i}.shift"] = np.full(n, -8, np.int8)
            op.update(weight=f"op{i}.weight", bias=f"op{i}.bias")
            op.update(multiplier=f"op{i}.multiplier", shift=f"op{i}.shift")
    graph = {
        "format": MCU_FORMAT,
        "version": MCU_FORMAT_VERSION,
        "layout": "NCHW",
        "input": "x",
        "output": "y",
        "tensors": {
            "x": {"shape": in_shape, "scale": _SCALE, "zero_point": 0, "dtype": "int8"},
            "y": {"shape": out_shape, "scale": out_scale, "zero_point": out_zp, "dtype": "int8"},
        },
        "ops": ops,
    }
    files = {"mcu.json": json.dumps(graph).encode(), "mcu.safetensors": save_np(tensors)}
    manifest: Mapping[str, Any] = {
        "precision": "int8",
        "runtimes": {"mcu-sim": {"graph": "mcu.json", "tensors": "mcu.safetensors"}},
        "input": {"shape": in_shape, "dtype": "float32"},
    }
    return Bundle("0" * 64, manifest, files, Path("."), "test")


def _run_synthetic(bundle: Bundle, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    rt = McuSimRuntime(get_profile("cortex-m7"))
    rt.load(bundle)
    return rt.run_int8(rt.quantize_input(x.astype(np.float32)))


def _pool_input() -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(1)
    return np.round(rng.uniform(-6, 6, (3, 2, 6, 6)) / _SCALE) * _SCALE


def test_max_and_average_pooling_match_float_pooling() -> None:
    import torch
    import torch.nn.functional as F

    x = _pool_input()
    op = {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0, 0, 0]}
    mx = _run_synthetic(
        _synthetic_bundle(
            [{"op": "max_pool2d", "inputs": ["x"], "output": "y", **op}], [1, 2, 6, 6], [1, 2, 3, 3]
        ),
        x,
    )
    ref = F.max_pool2d(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(mx.astype(np.int32), np.round(ref / _SCALE).astype(np.int32))
    pad = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1]}
    av = _run_synthetic(
        _synthetic_bundle(
            [{"op": "average_pool2d", "inputs": ["x"], "output": "y", **pad}],
            [1, 2, 6, 6],
            [1, 2, 6, 6],
        ),
        x,
    )
    ref = F.avg_pool2d(torch.from_numpy(x), 3, 1, 1, count_include_pad=False).numpy() / _SCALE
    assert np.abs(av.astype(np.float64) - ref).max() <= 0.5 + 1e-9  # correctly rounded


def test_relu6_clamp_and_int8_softmax() -> None:
    x = _pool_input()
    six = round(6 / _SCALE)
    relu6 = {"op": "clamp", "inputs": ["x"], "output": "y", "activation_min": 0}
    y = _run_synthetic(
        _synthetic_bundle([{**relu6, "activation_max": six}], [1, 2, 6, 6], [1, 2, 6, 6]), x
    )
    np.testing.assert_allclose(y * _SCALE, np.clip(x, 0, 6), atol=1e-9)
    logits = x.reshape(3, -1)[:, :10]
    soft = _run_synthetic(
        _synthetic_bundle(
            [{"op": "softmax", "inputs": ["x"], "output": "y", "beta": 1.0}],
            [1, 10],
            [1, 10],
            out_scale=1 / 256,
            out_zp=-128,
        ),
        logits,
    )
    probs = (soft.astype(np.float64) + 128) / 256
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.abs(probs - ref).max() <= 2 / 256
    np.testing.assert_array_equal(soft.argmax(1), logits.argmax(1))


def test_unknown_ops_and_format_versions_are_refused_at_load() -> None:
    rt = McuSimRuntime(get_profile("cortex-m7"))
    gelu = _synthetic_bundle([{"op": "gelu", "inputs": ["x"], "output": "y"}], [1, 4], [1, 4])
    with pytest.raises(BundleFormatError, match="unsupported op 'gelu'"):
        rt.load(gelu)
    ok = _synthetic_bundle([{"op": "clamp", "inputs": ["x"], "output": "y",
                             "activation_min": 0, "activation_max": 127}], [1, 4], [1, 4])  # fmt: skip
    graph = json.loads(ok.file("mcu.json"))
    graph["version"] = MCU_FORMAT_VERSION + 1
    newer = Bundle("1" * 64, ok.manifest, {**ok.files, "mcu.json": json.dumps(graph).encode()},
                   Path("."), "test")  # fmt: skip
    with pytest.raises(BundleFormatError, match="version"):
        rt.load(newer)
    rt.load(ok)
    assert rt.predict(np.array([[0.1, -0.2, 0.3, 0.0]], np.float32)).tolist() == [2]

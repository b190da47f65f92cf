"""The ``tflm`` and ``litert`` agent runtimes over a full-integer ``model.tflite``.

Two kinds of model: ones written here with the TFLite schema (``tests/tflite_models.py``: a
linear digits classifier whose float reference is exact numpy, and deliberately broken files),
so every refusal is reached on purpose; and the int8 variants the builder makes, which must
score what onnxruntime scores on the same test split within 0.1 point in both interpreters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtimes import (
    BudgetExceededError,
    BundleFormatError,
    RuntimeUnavailableError,
    open_runtime,
)
from edgefleet.agent.runtimes.litert import LiteRtRuntime
from edgefleet.agent.runtimes.tflite_io import (
    TensorQuant,
    input_mapper,
    quant_from_details,
    tflite_ops,
)
from edgefleet.agent.runtimes.tflm import TflmRuntime, _c_stderr, _interpreter, measure_arena
from edgefleet.agent.serving import Serving
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.coordinator.variant_selection import (
    LatencyPredictor,
    Policy,
    VariantFacts,
    judge,
)
from edgefleet.mcu_flash import flash_image
from edgefleet.modelops.data import Dataset, load_dataset
from edgefleet.perf import cycles_per_mac, mcu_latency_ms
from edgefleet.profiles import DeviceProfile, ProfileError, validate_profile
from edgefleet.variant_store import VariantStore
from tests.tflite_models import (
    FLOAT32,
    LinearInt8,
    built_int8_digits,
    fc_model,
    linear_digits_model,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def linear(digits: Dataset) -> LinearInt8:
    return linear_digits_model(digits.x_train, digits.y_train.astype(np.int64), 10)


def _bundle(
    model: bytes,
    input_spec: dict[str, Any],
    layout: str | None = "NHWC",
    macs: int = 640,
    ops: list[dict[str, Any]] | None = None,
) -> Bundle:
    entry: dict[str, Any] = {"file": "model.tflite"}
    if layout is not None:
        entry["layout"] = layout
    metrics: dict[str, Any] = {"macs": macs} if ops is None else {"macs": macs, "ops": ops}
    manifest = {
        "precision": "int8",
        "runtimes": {"tflm": entry, "litert": entry},
        "input": input_spec,
        "metrics": metrics,
    }
    return Bundle("0" * 64, manifest, {"model.tflite": model}, Path("."), "test")


def mcu(base: str = "cortex-m7", **changes: Any) -> DeviceProfile:
    """An MCU profile that runs tflm (whatever the catalog lists today)."""
    return get_profile(base).model_copy(update={"runtimes": ("tflm", "mcu-sim"), **changes})


def pi() -> DeviceProfile:
    return get_profile("rpi4").model_copy(update={"runtimes": ("litert", "onnxruntime")})


# --- the two interpreters on a model whose float answer is known -----------------------------


def test_tflm_and_litert_score_the_float_reference_on_the_digits_test_split(
    linear: LinearInt8, digits: Dataset
) -> None:
    bundle = _bundle(linear.tflite, digits.input_spec())
    tflm, litert = TflmRuntime(mcu()), LiteRtRuntime(pi())
    tflm.load(bundle)
    litert.load(bundle)
    x, y = digits.x_test, digits.y_test
    ref = x.reshape(len(x), -1).astype(np.float64) @ linear.weight.T + linear.bias
    a, b = tflm.infer(x), litert.infer(x)
    outputs: dict[str, np.ndarray[Any, Any]] = {"ref": ref, "tflm": a, "litert": b}
    acc = {name: float((out.argmax(1) == y).mean()) for name, out in outputs.items()}
    print(f"accuracy on {len(y)} test digits: {acc}")
    assert abs(acc["tflm"] - acc["ref"]) <= 0.001 and abs(acc["litert"] - acc["ref"]) <= 0.001
    # Same int8 model, same int8 input: the two interpreters are at most 1 LSB apart
    # (XNNPACK's requantisation vs TFLM's reference kernel) and agree on the class.
    qa = tflm.run_int8(tflm.quantize_input(x)).astype(int)
    qb = litert.run_int8(litert.quantize_input(x)).astype(int)
    assert np.abs(qa - qb).max() <= 1
    assert (qa.argmax(1) == qb.argmax(1)).mean() >= 0.99


def test_tflm_arena_is_the_smallest_tflm_accepts_and_memory_reports_it(
    linear: LinearInt8, digits: Dataset
) -> None:
    arena, it = measure_arena(linear.tflite)
    assert it is not None
    assert arena.reported_bytes > 0 and arena.arena_bytes >= arena.reported_bytes
    with _c_stderr():
        assert _interpreter(linear.tflite, arena.arena_bytes) is not None
        assert _interpreter(linear.tflite, arena.arena_bytes - 1) is None
    rt = TflmRuntime(mcu())
    rt.load(_bundle(linear.tflite, digits.input_spec()))
    usage = rt.memory()
    # flash: the model plus the TFLM code its ops link (one FULLY_CONNECTED here, after the
    # flatten's RESHAPE), the one figure the build, selection and both MCU runtimes use
    image = flash_image(len(linear.tflite), tflite_ops(linear.tflite))
    assert set(image.kernel_bytes) == {"RESHAPE", "FULLY_CONNECTED"} or set(image.kernel_bytes) == {
        "FULLY_CONNECTED"
    }
    assert (usage.weights, usage.working) == (image.total, arena.arena_bytes)
    assert usage.weights > len(linear.tflite)
    assert str(arena.reported_bytes) in usage.method and str(image.code_bytes) in usage.method
    rt.unload()
    assert rt.memory().total == 0


def test_tflm_refuses_flash_and_sram_it_does_not_have_naming_both_numbers(
    linear: LinearInt8, digits: Dataset
) -> None:
    bundle = _bundle(linear.tflite, digits.input_spec())
    need = flash_image(len(linear.tflite), tflite_ops(linear.tflite)).total
    with pytest.raises(
        BudgetExceededError,
        match=rf"flash: bundle needs {need} bytes .*\(model {len(linear.tflite)} \+ TFLM code",
    ):
        TflmRuntime(mcu(storage_bytes=need - 1)).load(bundle)
    TflmRuntime(mcu(storage_bytes=need)).load(bundle)  # exactly enough fits
    arena, _ = measure_arena(linear.tflite)
    with pytest.raises(
        BudgetExceededError,
        match=rf"SRAM arena: .*needs {arena.arena_bytes} bytes but the device has 1024",
    ):
        TflmRuntime(mcu(ram_bytes=1024)).load(bundle)


def test_tflm_latency_is_the_coordinators_per_op_prediction_not_host_time(
    linear: LinearInt8, digits: Dataset
) -> None:
    """The agent reports what selection predicted: :func:`edgefleet.perf.mcu_latency_ms` over
    the manifest's per-op counts, on the profile's core at its clock."""
    profile = mcu("cortex-m4")
    cheap = [{"op": "fc", "macs": 640, "outputs": 10}]
    dear = [{"op": "depthwise", "macs": 640, "outputs": 10}, *cheap]  # the FC + a depthwise
    got: list[float] = []
    for ops in (cheap, dear):
        bundle = _bundle(linear.tflite, digits.input_spec(), ops=ops)
        rt = TflmRuntime(profile)
        rt.load(bundle)
        rt.infer(digits.x_test[:3])
        assert rt.last_latency_ms == pytest.approx(3 * mcu_latency_ms(profile, bundle.manifest))
        got.append(rt.last_latency_ms or 0.0)
    assert got[1] > got[0] > 0  # per op: a second layer of a dearer kind costs more
    # a manifest without op counts: its MACs as one pointwise layer, as the coordinator does
    bundle = _bundle(linear.tflite, digits.input_spec(), macs=1_000_000)
    rt = TflmRuntime(profile)
    rt.load(bundle)
    rt.infer(digits.x_test[:1])
    latency = rt.last_latency_ms
    assert latency == pytest.approx(mcu_latency_ms(profile, bundle.manifest))
    assert latency is not None
    assert latency > 1_000_000 * cycles_per_mac(profile) / (profile.cpu_mhz * 1e3)
    assert rt.latency_source == "cycle-model" and LiteRtRuntime.latency_source == "wall"


@pytest.mark.parametrize("runtime", [TflmRuntime, LiteRtRuntime])
def test_broken_tflite_files_are_refused_in_one_line(
    runtime: type[TflmRuntime | LiteRtRuntime], digits: Dataset
) -> None:
    profile = mcu() if runtime is TflmRuntime else pi()
    spec = digits.input_spec()
    rng = np.random.default_rng(0)
    w, b = rng.integers(-127, 128, (10, 64)).astype(np.int8), np.zeros(10, np.int32)
    inconsistent = fc_model(  # a float input reshaped straight into the int8 FC: no kernel takes it
        w,
        b,
        in_q=(0.1, 0),
        w_scale=0.01,
        out_q=(0.5, 0),
        input_shape=[1, 8, 8, 1],
        input_type=FLOAT32,
    )
    wrong_size = fc_model(w[:, :32], b, in_q=(0.1, 0), w_scale=0.01, out_q=(0.5, 0))
    cases = {
        b"not a flatbuffer at all" * 4: r"cannot (load|prepare) model\.tflite",
        wrong_size: r"model\.tflite input \[1, 32\] does not hold the variant's input",
        inconsistent: r"cannot (load|prepare) model\.tflite: .*(RESHAPE|reshape)",
    }
    for model, pattern in cases.items():
        with pytest.raises(BundleFormatError, match=pattern) as info:
            runtime(profile).load(_bundle(model, spec))
        assert "\n" not in str(info.value)


def test_only_a_per_tensor_int8_input_and_output_are_accepted() -> None:
    def details(dtype: type, scales: list[float], zeros: list[int]) -> dict[str, Any]:
        return {"dtype": dtype, "quantization_parameters": {"scales": scales, "zero_points": zeros}}

    assert quant_from_details(details(np.int8, [0.5], [-3]), "input") == TensorQuant(0.5, -3)
    with pytest.raises(BundleFormatError, match="input is float32, expected int8"):
        quant_from_details(details(np.float32, [], []), "input")
    with pytest.raises(BundleFormatError, match="output needs one positive scale"):
        quant_from_details(details(np.int8, [0.5, 0.25], [0, 0]), "output")
    with pytest.raises(BundleFormatError, match="needs one positive scale"):
        quant_from_details(details(np.int8, [0.0], [0]), "output")


def test_input_layouts_quantisation_and_nan() -> None:
    assert input_mapper([1, 3, 4, 5], [1, 4, 5, 3], None) == (0, 2, 3, 1)
    assert input_mapper([1, 3, 4, 5], [1, 3, 4, 5], None) is None
    assert input_mapper([1, 64], [1, 64], None) is None
    with pytest.raises(BundleFormatError, match="not the NHWC form"):
        input_mapper([1, 3, 4, 5], [1, 3, 4, 5], "NHWC")
    with pytest.raises(BundleFormatError, match="unknown tflite input layout"):
        input_mapper([1, 3, 4, 5], [1, 4, 5, 3], "CHWN")
    q = TensorQuant(0.5, -3)
    got = q.quantize(np.array([np.nan, np.inf, -np.inf, 0.25, 0.75, 1000.0], np.float32))
    # NaN is real 0 (the zero point); infinities saturate; halves round to even
    assert got.tolist() == [-3, 127, -128, -3, -1, 127]
    assert q.dequantize(np.array([-3, 1], np.int8)).tolist() == [0.0, 2.0]


def test_a_transposed_input_reaches_the_model_as_nhwc(linear: LinearInt8) -> None:
    """A 2-channel NCHW input to an NHWC model: element (c, h, w) lands at (h, w, c)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (4, 32)).astype(np.int8)
    model = fc_model(
        w,
        np.zeros(4, np.int32),
        in_q=(1.0, 0),
        w_scale=1.0,
        out_q=(64.0, 0),
        input_shape=[1, 4, 4, 2],
    )
    spec = {"shape": [1, 2, 4, 4], "dtype": "float32"}
    rt = TflmRuntime(mcu())
    rt.load(_bundle(model, spec, layout=None))
    x = rng.integers(-3, 4, (2, 2, 4, 4)).astype(np.float32)
    fed = rt.quantize_input(x)
    assert fed.shape == (2, 4, 4, 2)
    assert fed[1, 2, 3, 1] == x[1, 1, 2, 3]


def test_tflm_stderr_capture_gives_back_what_is_not_tflms(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with _c_stderr() as lines:
        os.write(2, b"[RecordingMicroAllocator] Arena allocation total 10 bytes\n")
        os.write(2, b"another thread's log line\n")
    out = capfd.readouterr().err
    assert "another thread's log line" in out and "RecordingMicroAllocator" not in out
    assert any("total 10 bytes" in line for line in lines)


# --- profiles, open_runtime, serving and selection -------------------------------------------


def test_profiles_offer_tflm_on_mcus_only_and_litert_off_mcus() -> None:
    m7 = get_profile("cortex-m7").model_dump()
    assert validate_profile({**m7, "runtimes": ["tflm", "mcu-sim"]}).runtimes == ("tflm", "mcu-sim")
    with pytest.raises(ProfileError, match="runs only the tflm and mcu-sim"):
        validate_profile({**m7, "runtimes": ["litert"]})
    pi4 = get_profile("rpi4").model_dump()
    assert validate_profile({**pi4, "runtimes": ["litert"]}).runtimes == ("litert",)
    with pytest.raises(ProfileError, match="tflm is only for mcu profiles"):
        validate_profile({**pi4, "runtimes": ["litert", "tflm"]})
    with pytest.raises(RuntimeUnavailableError, match="does not run tflm"):
        open_runtime("tflm", pi())
    assert isinstance(open_runtime("litert", pi()), LiteRtRuntime)
    assert isinstance(open_runtime("tflm", mcu()), TflmRuntime)


def test_a_pi_serves_through_litert_and_an_mcu_through_tflm(
    linear: LinearInt8, digits: Dataset
) -> None:
    bundle = _bundle(linear.tflite, digits.input_spec())
    x, y = digits.x_test[:50], digits.y_test[:50]
    answers = {}
    for profile in (pi(), mcu()):
        serving = Serving(profile)
        assert serving.load(bundle) is None  # the profile's first runtime the bundle carries
        result = serving.infer(x, labels=y.tolist())
        answers[serving.runtime_name] = result.argmax
        assert result.runtime == serving.runtime_name
    assert set(answers) == {"litert", "tflm"}
    assert answers["litert"] == answers["tflm"]


def test_selection_breaks_a_latency_tie_by_the_profiles_runtime_order() -> None:
    class Flat(LatencyPredictor):
        def predict_ms(self, variant: VariantFacts, runtime: str) -> float:
            return 1.0

    v = VariantFacts(
        id="a" * 64,
        model="m",
        recipe="int8-static",
        precision="int8",
        bundle_bytes=10_000,
        weight_bytes=5_000,
        peak_memory_bytes=2_000,
        accuracy=0.9,
        macs=1000,
        runtimes=("mcu-sim", "onnxruntime", "tflm"),
    )
    for order in (("tflm", "mcu-sim"), ("mcu-sim", "tflm")):
        verdict = judge(mcu(runtimes=order), v, Flat(), Policy())
        assert verdict.fits and verdict.runtime == order[0]
    litert_variant = VariantFacts(**{**v.__dict__, "runtimes": ("litert", "onnxruntime")})
    verdict = judge(pi(), litert_variant, Flat(), Policy())
    assert verdict.runtime == "litert"


# --- the builder's int8 variant: the same accuracy in TFLM, LiteRT and onnxruntime ----------


def test_a_built_int8_variant_scores_onnxruntimes_accuracy_in_tflm_and_litert(
    digits: Dataset,
) -> None:
    built = built_int8_digits()
    bundle = VariantStore(built.data_dir).load(built.int8)
    runtimes = bundle.manifest["runtimes"]
    assert runtimes["tflm"] == runtimes["litert"] == {"file": "model.tflite", "layout": "NHWC"}
    x, y = digits.x_test, digits.y_test
    acc: dict[str, float] = {}
    logits: dict[str, np.ndarray[Any, Any]] = {}
    for name, profile in (("onnxruntime", pi()), ("tflm", mcu()), ("litert", pi())):
        rt = open_runtime(name, profile)
        rt.load(bundle)
        logits[name] = rt.infer(x)
        acc[name] = float((logits[name].argmax(1) == y).mean())
        if name == "tflm":
            # TFLM's own arena, proven by serving with it; the build recorded the same model's
            # allocation report (a lower bound of what TFLM accepts).
            reported = bundle.manifest["metrics"]["mcu"]["tflite"]["arena_bytes"]
            assert rt.memory().working >= reported > 0
    print(f"accuracy on {len(y)} test digits: {acc}")
    # LiteRT (XNNPACK) requantises as onnxruntime does: the same accuracy.
    assert abs(acc["litert"] - acc["onnxruntime"]) <= 0.001
    # TFLM's reference kernels round half away from zero in fixed point where onnxruntime rounds
    # half to even in float: outputs can sit 1 LSB apart, which can only move an argmax where
    # onnxruntime's top two logits are within one output step (a near-tie). Within 0.1 pt, or
    # every disagreement is such a near-tie (this build had one exact tie, test row 107).
    step = float(np.min(np.diff(np.unique(logits["onnxruntime"]))))
    top2 = np.sort(logits["onnxruntime"], axis=1)[:, -2:]
    differ = np.flatnonzero(logits["tflm"].argmax(1) != logits["onnxruntime"].argmax(1))
    print(f"tflm vs onnxruntime: argmax differs on rows {differ.tolist()}")
    assert abs(acc["tflm"] - acc["onnxruntime"]) <= 0.001 or all(
        top2[i, 1] - top2[i, 0] <= step * 1.01 for i in differ
    )
    assert len(differ) <= 0.01 * len(y)
    assert acc["onnxruntime"] > 0.5  # a trained model, so agreement is not agreement on noise


def test_the_agent_measures_litert_call_overhead_and_none_for_tflm() -> None:
    """Selection adds each runtime's per-call overhead to its latency prediction; without
    LiteRT's, a Pi would be promised a latency its canary then misses."""
    from edgefleet.agent.runtimes.overhead import measure_call_overheads

    got = measure_call_overheads(pi(), calls=3, gap=0.0)
    assert set(got) == {"litert", "onnxruntime"} and got["litert"] > 0
    assert measure_call_overheads(mcu(), calls=3, gap=0.0) == {}


def test_a_detected_host_offers_litert_when_it_is_installed() -> None:
    from edgefleet.hostdetect import detect_host_profile

    profile = detect_host_profile()
    assert "litert" in profile.runtimes  # the dev environment installs ai-edge-litert
    assert isinstance(open_runtime("litert", profile), LiteRtRuntime)


def test_selection_offers_a_built_int8_variant_to_litert_and_tflm() -> None:
    """The manifest names tflm and litert; on a Pi the runtime with the smaller measured call
    overhead wins, on an MCU both predict the cycle model and the profile's order decides."""
    from edgefleet.coordinator.latency import DeviceLatencyModel
    from edgefleet.coordinator.variants import read_facts

    built = built_int8_digits()
    facts = read_facts(VariantStore(built.data_dir), built.int8)
    assert {"litert", "tflm", "onnxruntime", "mcu-sim"} <= set(facts.runtimes)
    rpi4 = get_profile("rpi4")
    for fast, slow in (("litert", "onnxruntime"), ("onnxruntime", "litert")):
        model = DeviceLatencyModel(rpi4, 1e9, 1e9, call_overhead_ms={fast: 0.01, slow: 0.5})
        verdict = judge(rpi4, facts, model, Policy())
        assert verdict.fits and verdict.runtime == fast
    for order in (("tflm", "mcu-sim"), ("mcu-sim", "tflm")):
        m7 = mcu("stm32h743", runtimes=order)
        model = DeviceLatencyModel(m7, 1e8, 1e9)
        assert model.predict_ms(facts, "tflm") == model.predict_ms(facts, "mcu-sim")
        assert judge(m7, facts, model, Policy()).runtime == order[0]


def test_the_inference_service_answers_through_litert_on_a_pi_and_tflm_on_an_mcu(
    digits: Dataset,
) -> None:
    """Catalog profiles, the built variant, the device's loopback gRPC endpoint: what an
    application on the device sees (the runtime and where its latency comes from)."""
    import asyncio

    import grpc

    from edgefleet.agent.inference_server import InferenceServer
    from edgefleet.v1 import inference_pb2, inference_pb2_grpc

    built = built_int8_digits()
    bundle = VariantStore(built.data_dir).load(built.int8)
    x = digits.x_test[:8]

    async def ask(profile: str, runtime: str) -> inference_pb2.InferResponse:
        serving = Serving(get_profile(profile))
        assert serving.load(bundle, runtime) is None
        server = InferenceServer(serving, 0)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                tensor = inference_pb2.Tensor(data=x.tobytes(), shape=list(x.shape))
                response: inference_pb2.InferResponse = await stub.Infer(
                    inference_pb2.InferRequest(tensor=tensor, labels=digits.y_test[:8].tolist())
                )
                return response
        finally:
            await server.stop()

    pi_answer = asyncio.run(ask("rpi4", "litert"))
    mcu_answer = asyncio.run(ask("stm32h743", "tflm"))
    assert (pi_answer.runtime, pi_answer.latency_source) == ("litert", "wall")
    assert (mcu_answer.runtime, mcu_answer.latency_source) == ("tflm", "cycle-model")
    assert pi_answer.variant_id == mcu_answer.variant_id == built.int8
    agree = [
        a.argmax == b.argmax
        for a, b in zip(pi_answer.predictions, mcu_answer.predictions, strict=True)
    ]
    assert len(agree) == 8 and sum(agree) >= 7  # one near-tie may round the other way in TFLM
    assert mcu_answer.latency_ms > 0

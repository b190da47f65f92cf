"""The MFCC frontend through the pipeline: a wav folder becomes MFCC features with the
frontend recorded (dataset, manifest), a device given raw audio computes the same features in
every runtime (float on application processors, q15 on an MCU profile), and selection charges
the frontend's SRAM and cycles to the variant.

One tiny real model per module: three "words" (a low tone, a high tone, noise bursts) as 1 s
16 kHz .wav files written with numpy + wave, a DS-CNN (width 0.5) trained a few epochs, its fp32
and static-int8 variants built for real.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtimes import (
    BundleFormatError,
    InputDtypeError,
    InputShapeError,
    open_runtime,
)
from edgefleet.agent.runtimes.base import _parse_frontend
from edgefleet.agent.serving import Serving
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.coordinator.variant_selection import (
    LatencyPredictor,
    Policy,
    VariantFacts,
    _memory_need,
    frontend_share,
    judge,
    select,
)
from edgefleet.coordinator.variants import facts_from_manifest
from edgefleet.frontend import FrontendSpec
from edgefleet.frontend.mfcc import mfcc
from edgefleet.frontend.mfcc_q15 import mfcc_q15, to_float
from edgefleet.modelops.build import BuildOptions, build_variants, register_model
from edgefleet.modelops.data import Dataset, DatasetError, load_dataset, with_frontend
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec

RATE = 16000
LABELS = ("low", "high", "hiss")
FILES_PER_LABEL = 10
#: argmax agreement of mcu-sim fed raw audio (q15 MFCC) with onnxruntime fed the float
#: features, on the same int8 graph (the fixed-point frontend's effect end to end)
Q15_AGREEMENT = 0.9


def _clip(label: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    t = np.arange(RATE) / RATE
    start = rng.integers(1000, 6000)
    env = np.zeros(RATE)
    env[start : start + 8000] = np.hanning(8000)
    if label == 0:
        sig = np.sin(2 * np.pi * rng.uniform(200, 400) * t)
    elif label == 1:
        sig = np.sin(2 * np.pi * rng.uniform(1800, 2600) * t)
    else:
        sig = rng.standard_normal(RATE) * 0.5
    x = rng.uniform(0.2, 0.8) * sig * env + 0.003 * rng.standard_normal(RATE)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2")


def write_wavs(root: Path, seed: int = 0, rate: int = RATE) -> Path:
    rng = np.random.default_rng(seed)
    for i, name in enumerate(LABELS):
        (root / name).mkdir(parents=True)
        for j in range(FILES_PER_LABEL):
            with wave.open(str(root / name / f"{j}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(_clip(i, rng).tobytes())
    return root


@dataclass(frozen=True)
class Built:
    store: VariantStore
    data: Dataset
    fp32: Bundle
    int8: Bundle


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wavs(tmp_path_factory.mktemp("wavs") / "words")


@pytest.fixture(scope="module")
def built(wavs: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    store = VariantStore(tmp_path_factory.mktemp("frontend-store"))
    options = BuildOptions(latency=LatencyConfig(warmup=1, runs=3))
    data = load_dataset(str(wavs), store.root)
    spec = ArchitectureSpec.zoo(
        "ds-cnn", width=0.5, num_classes=data.num_classes, input_shape=data.input_shape
    )
    entry = register_model(store, "words", spec, data, epochs=8, options=options)
    (int8,) = build_variants(store, "words", ["int8-static"], options=options)
    return Built(store, data, store.load(entry.base), store.load(int8))


# -- coordinator: data and manifest ---------------------------------------------------------


def test_wav_folder_becomes_mfcc_features_with_the_frontend_recorded(wavs: Path) -> None:
    data = load_dataset(str(wavs))
    assert data.input_shape == (1, 49, 10)
    assert data.frontend == FrontendSpec().to_dict()
    assert data.raw_shape == (RATE,)
    assert data.x_test_raw is not None
    np.testing.assert_array_equal(data.x_test, mfcc(data.x_test_raw))
    spec = data.input_spec()
    assert spec["shape"] == [1, 1, 49, 10]  # the network's input, what every runtime loads
    assert spec["raw"] == {
        "shape": [1, RATE],
        "dtype": "float32",
        "scale": 1 / 32768,
        "layout": "NT",
    }
    assert FrontendSpec.from_dict(spec["frontend"]) == FrontendSpec()


def test_frontend_none_keeps_raw_rows_and_mfcc_refuses_other_data(wavs: Path) -> None:
    raw = load_dataset(str(wavs), frontend="none")
    assert raw.input_shape == (1, 1, RATE) and raw.frontend is None
    assert "frontend" not in raw.input_spec()
    assert load_dataset("digits").frontend is None  # auto leaves images alone
    with pytest.raises(DatasetError, match="--frontend mfcc needs raw audio rows"):
        load_dataset("digits", frontend="mfcc")
    with pytest.raises(DatasetError, match="unknown frontend 'plp'"):
        with_frontend(raw, "plp")
    with pytest.raises(DatasetError, match="recorded frontend n_coeffs 50 > n_mels 40"):
        with_frontend(raw, {**FrontendSpec().to_dict(), "n_coeffs": 50})


def test_other_sample_rates_keep_the_timing(tmp_path: Path) -> None:
    data = load_dataset(str(write_wavs(tmp_path / "w8k", rate=8000)), rate=8000)
    assert data.frontend is not None
    spec = FrontendSpec.from_dict(data.frontend)
    assert (spec.window, spec.stride, spec.fft_size, spec.fmax) == (320, 160, 512, 4000.0)
    assert data.input_shape == (1, 49, 10)


def test_manifest_and_rebuilds_carry_the_frontend(built: Built) -> None:
    for bundle in (built.fp32, built.int8):
        spec = bundle.manifest["input"]
        assert spec["frontend"] == FrontendSpec().to_dict()
        assert spec["raw"]["shape"] == [1, RATE]
        assert spec["shape"] == [1, 1, 49, 10]


# -- device: raw audio in, features computed by the runtime ----------------------------------


def test_float_runtimes_compute_the_training_features(built: Built) -> None:
    raw = built.data.x_test_raw
    assert raw is not None
    for name in ("torch", "onnxruntime"):
        rt = open_runtime(name, get_profile("rpi4"))
        rt.load(built.fp32)
        np.testing.assert_array_equal(rt.features(raw), built.data.x_test)
        np.testing.assert_allclose(rt.infer(raw), rt.infer(built.data.x_test), atol=1e-6)
        as_int16 = np.rint(raw * 32768).astype(np.int16)
        np.testing.assert_allclose(rt.infer(as_int16), rt.infer(raw), atol=1e-6)
        rows = raw[:, None, None, :]  # dataset rows (N, 1, 1, T) are raw audio too
        np.testing.assert_array_equal(rt.features(rows), built.data.x_test)


def test_mcu_sim_computes_the_q15_features(built: Built) -> None:
    raw = built.data.x_test_raw
    assert raw is not None
    mcu = open_runtime("mcu-sim", get_profile("cortex-m4"))
    ort = open_runtime("onnxruntime", get_profile("rpi4"))
    mcu.load(built.int8)
    ort.load(built.int8)
    feats = mcu.features(raw)
    np.testing.assert_array_equal(feats, to_float(mfcc_q15(raw)))
    # tones 50-70 dB over the noise: near the 16-bit FFT's floor (see mfcc_q15), so the mean
    diff = np.abs(feats - built.data.x_test)
    print(f"q15 vs float features: max {diff.max():.3f} mean {diff.mean():.4f}")
    assert diff.mean() <= 0.1  # measured 0.067 (max 1.9)
    agree = (mcu.infer(raw).argmax(1) == ort.infer(built.data.x_test).argmax(1)).mean()
    assert agree >= Q15_AGREEMENT
    # predict (the integer argmax the workload replay uses) takes raw audio too
    np.testing.assert_array_equal(mcu.predict(raw), mcu.infer(raw).argmax(1))
    # the frontend's simulated cycles are part of the device's latency
    mcu.infer(raw[:2])
    with_frontend_ms = mcu.last_latency_ms
    mcu.infer(built.data.x_test[:2])
    assert with_frontend_ms is not None and mcu.last_latency_ms is not None
    assert with_frontend_ms - mcu.last_latency_ms == pytest.approx(mcu.frontend_cycle_ms(2))
    assert mcu.frontend_cycle_ms(2) > 0


def test_serving_takes_raw_audio(built: Built) -> None:
    serving = Serving(get_profile("rpi4"))
    assert serving.load(built.fp32) is None
    assert serving.input_shape() == [1, RATE]
    raw = built.data.x_test_raw
    assert raw is not None
    result = serving.infer(raw[:4], labels=[int(y) for y in built.data.y_test[:4]])
    assert len(result.argmax) == 4
    with pytest.raises(InputShapeError, match=r"or raw audio \[N, 16000\]"):
        serving.infer(raw[:2, :8000])
    with pytest.raises(InputDtypeError, match="raw audio dtype int32"):
        serving.infer(raw[:2].astype(np.int32))


def test_a_bad_frontend_in_a_manifest_refuses_the_bundle(built: Built) -> None:
    def fake(input_spec: dict[str, Any]) -> Any:
        return SimpleNamespace(manifest={"input": input_spec}, variant_id="f" * 64)

    good = dict(built.fp32.manifest["input"])
    assert _parse_frontend(fake(good)) == FrontendSpec()
    assert _parse_frontend(fake({k: v for k, v in good.items() if k != "frontend"})) is None
    bad = {**good, "frontend": {**good["frontend"], "window_fn": "boxcar"}}
    with pytest.raises(BundleFormatError, match="window_fn 'boxcar' unknown"):
        _parse_frontend(fake(bad))
    with pytest.raises(BundleFormatError, match=r"input.raw.shape must be \[1, samples\]"):
        _parse_frontend(fake({**good, "raw": {"shape": [1, 1, RATE]}}))
    with pytest.raises(BundleFormatError, match="at least 640 samples"):
        _parse_frontend(fake({**good, "raw": {"shape": [1, 100]}}))


# -- selection: the frontend's SRAM, flash and cycles count ----------------------------------


class _Fixed(LatencyPredictor):
    def predict_ms(self, variant: VariantFacts, runtime: str) -> float:
        return 1.0


def test_selection_counts_the_frontend(built: Built) -> None:
    facts = facts_from_manifest(built.int8.variant_id, built.int8.manifest)
    cost = FrontendSpec().cost(RATE)
    assert facts.frontend == cost
    bare = replace(facts, frontend=None)
    base = get_profile("cortex-m4")
    runtime = next(r for r in base.runtimes if r in facts.runtimes)
    need_bare = _memory_need(bare, runtime, base)
    assert _memory_need(facts, runtime, base) == need_bare + cost.ram_bytes
    # SRAM just big enough without the frontend: refused with it, naming the frontend
    tight = base.model_copy(update={"ram_bytes": need_bare, "sram_region_bytes": 0})
    assert judge(tight, bare, _Fixed(), Policy()).fits
    verdict = judge(tight, facts, _Fixed(), Policy())
    assert not verdict.fits
    assert any(f.startswith("sram:") and "+ frontend 37.4 KiB" in f for f in verdict.failures)
    # flash: the frontend's tables are stored next to the model
    flash = bare.mcu_flash_bytes or bare.bundle_bytes
    small = base.model_copy(update={"storage_bytes": flash})
    assert judge(small, bare, _Fixed(), Policy()).fits
    refused = judge(small, facts, _Fixed(), Policy()).failures
    assert any(f.startswith("flash:") and "frontend tables" in f for f in refused)
    # cycles: the MCU latency model includes the frontend's layers
    kinds = {layer.kind for layer in facts.layers}
    assert {"frontend-mac", "frontend-sqrt", "frontend-log"} <= kinds
    # application processors: the float MFCC's MACs at the device's rate join the prediction
    from edgefleet.coordinator.latency import DeviceLatencyModel

    model = DeviceLatencyModel(get_profile("rpi4"), 2e9, 20e9)
    added = model.predict_ms(facts, "onnxruntime") - model.predict_ms(bare, "onnxruntime")
    assert added == pytest.approx(cost.total_macs / 2e9 * 1e3) and added > 0
    # explain's reason names the frontend's share
    chosen = select(base, [facts], _Fixed())
    assert chosen.winner is not None
    assert "frontend mfcc: 37.4 KiB sram, 8.2 KiB flash" in chosen.reason
    assert "% of " in frontend_share(facts, base)
    assert frontend_share(bare, base) == ""


# -- bad input: one line each ----------------------------------------------------------------


def test_frontend_refusals_are_one_line(wavs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.main import app
    from edgefleet.frontend import FrontendError
    from edgefleet.frontend.spec import manifest_cost

    digits = load_dataset("digits")
    with pytest.raises(DatasetError, match="needs raw audio rows; digits has none"):
        with_frontend(digits, FrontendSpec().to_dict())
    with pytest.raises(DatasetError, match="at least 640 samples"):
        load_dataset(str(wavs), window_s=0.02)  # 320-sample rows: shorter than one window
    with pytest.raises(FrontendError, match="sample_rate must be an integer >= 1000"):
        FrontendSpec.for_rate(500)
    with pytest.raises(FrontendError, match=r"needs input.raw.shape \[1, samples\]"):
        manifest_cost({"input": {"frontend": FrontendSpec().to_dict()}})
    assert manifest_cost({"input": {"shape": [1, 8, 8]}}) is None
    data_dir = tmp_path / "data"
    for args, message in (
        (["--dataset", "digits", "--frontend", "mfcc"], "error: --frontend mfcc needs raw audio"),
        (["--dataset", str(wavs), "--frontend", "plp"], "error: unknown frontend 'plp'"),
    ):
        res = CliRunner().invoke(app, ["models", "add", "m", *args, "--data-dir", str(data_dir)])
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith(message) and res.stderr.count("\n") == 1
        assert not data_dir.exists()

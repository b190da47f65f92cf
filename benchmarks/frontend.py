"""The MFCC frontend on keyword-spotting clips: accuracy of each implementation, speed, device cost.

Why this benchmark: the frontend is part of the model, computed on the device from raw audio,
so three claims need numbers on the audio the models are really trained on (the built-in
``kws`` set, synthesized offline with espeak-ng):

- the float MFCC (``edgefleet.frontend.mfcc``) equals an independent reference (librosa's mel
  spectrogram + scipy's DCT) -- largest absolute difference;
- the fixed-point MFCC an MCU runs (``mfcc_q15``) is close to the float one -- max, p99 and
  mean absolute difference over every feature of the test split;
- with ``--train``: the end-to-end effect, a DS-CNN (``ds-cnn-kws``) trained on the float
  features, built as static int8, and the test split served as *raw audio* by mcu-sim on a
  Cortex-M4 profile (q15 frontend) against onnxruntime on the float features -- argmax
  agreement and both accuracies;

plus host throughput of both implementations and, per MCU board of the catalog, what the
frontend costs there (SRAM buffers, flash tables, MACs, predicted ms by the cycle model).

Usage: ``python -m benchmarks.frontend [--size tiny] [--data-dir DIR] [--train]
[--json benchmarks/results/frontend.json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.catalog import ALIASES, CATALOG
from edgefleet.cycles import frontend_layers, predict
from edgefleet.frontend import FrontendSpec
from edgefleet.frontend.mfcc import mfcc
from edgefleet.frontend.mfcc_q15 import mfcc_q15, to_float
from edgefleet.perf import mcu_core


def reference(x: np.ndarray[Any, Any], spec: FrontendSpec) -> np.ndarray[Any, Any]:
    """librosa + scipy MFCC, framed as ours (see tests/test_frontend.py::reference_mfcc)."""
    import librosa
    import scipy.fft  # type: ignore[import-untyped]

    pad = (spec.fft_size - spec.window) // 2
    out = []
    for row in x.astype(np.float64):
        y = np.concatenate([np.zeros(pad), row, np.zeros(pad)])
        mel = librosa.feature.melspectrogram(
            y=y,
            sr=spec.sample_rate,
            n_fft=spec.fft_size,
            hop_length=spec.stride,
            win_length=spec.window,
            window="hann",
            center=False,
            power=1.0,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
            htk=True,
            norm=None,
        )
        ceps = scipy.fft.dct(np.log(mel + spec.log_floor), type=2, norm="ortho", axis=0)
        out.append(ceps[: spec.n_coeffs].T)
    return np.asarray(out)[:, None]


def _rate(fn: Any, x: np.ndarray[Any, Any]) -> float:
    start = time.perf_counter()
    fn(x)
    return len(x) / (time.perf_counter() - start)


def device_costs(spec: FrontendSpec, samples: int) -> list[dict[str, Any]]:
    cost = spec.cost(samples)
    layers = frontend_layers({**cost.macs, **cost.ops})
    rows = []
    for name, profile in sorted(CATALOG.items()):
        if not profile.is_mcu or name in ALIASES:
            continue
        ms = predict(mcu_core(profile), layers, profile.cpu_mhz).ms
        rows.append(
            {
                "board": name,
                "core": mcu_core(profile).value,
                "mhz": profile.cpu_mhz,
                "frontend_ms": round(ms, 3),
                "sram_share": round(cost.ram_bytes / profile.ram_bytes, 4),
            }
        )
    return rows


def end_to_end(data_dir: Path, size: str, epochs: int) -> dict[str, Any]:
    from edgefleet.agent.runtimes import open_runtime
    from edgefleet.modelops.build import BuildOptions, build_variants, register_model
    from edgefleet.modelops.data import load_dataset
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.variant_store import VariantStore
    from edgefleet.zoo import ArchitectureSpec

    store = VariantStore(data_dir / "store")
    data = load_dataset("kws", data_dir, kws_size=size)
    spec = ArchitectureSpec.zoo(
        "ds-cnn-kws", num_classes=data.num_classes, input_shape=data.input_shape
    )
    options = BuildOptions(latency=LatencyConfig(warmup=1, runs=5))
    register_model(store, "kws", spec, data, epochs=epochs, options=options)
    (int8_id,) = build_variants(store, "kws", ["int8-static"], options=options)
    bundle = store.load(int8_id)
    mcu = open_runtime("mcu-sim", CATALOG["cortex-m4"])
    ort = open_runtime("onnxruntime", CATALOG["rpi4"])
    mcu.load(bundle)
    ort.load(bundle)
    assert data.x_test_raw is not None
    on_mcu = mcu.predict(mcu.features(data.x_test_raw))
    on_ort = ort.predict(data.x_test)
    return {
        "test_rows": len(data.y_test),
        "argmax_agreement": round(float((on_mcu == on_ort).mean()), 4),
        "accuracy_mcu_sim_raw_audio_q15": round(float((on_mcu == data.y_test).mean()), 4),
        "accuracy_onnxruntime_float_features": round(float((on_ort == data.y_test).mean()), 4),
        "epochs": epochs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", help="kws size (tiny/default/large)")
    ap.add_argument("--data-dir", type=Path, default=None, help="kws cache (default: a tmp dir)")
    ap.add_argument("--reference-clips", type=int, default=100)
    ap.add_argument("--train", action="store_true", help="also the end-to-end int8 agreement")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from edgefleet.modelops.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        raw = load_dataset("kws", data_dir, frontend="none", kws_size=args.size)
        spec = FrontendSpec()
        x = raw.x_test.reshape(len(raw.x_test), -1)
        feats = mfcc(x, spec)
        ref = reference(x[: args.reference_clips], spec)
        q = to_float(mfcc_q15(x, spec))
        d = np.abs(q - feats)
        result: dict[str, Any] = {
            "spec": spec.describe(),
            "test_clips": len(x),
            "float_vs_librosa_max_abs": float(np.abs(feats[: len(ref)] - ref).max()),
            "feature_range": [float(feats.min()), float(feats.max())],
            "q15_vs_float": {
                "max_abs": round(float(d.max()), 4),
                "p99_abs": round(float(np.percentile(d, 99)), 4),
                "mean_abs": round(float(d.mean()), 5),
            },
            "host_clips_per_s": {
                "float": round(_rate(lambda a: mfcc(a, spec), x), 1),
                "q15": round(_rate(lambda a: mfcc_q15(a, spec), x), 1),
            },
            "cost_per_inference": spec.cost(x.shape[1]).to_dict(),
            "boards": device_costs(spec, x.shape[1]),
        }
        if args.train:
            result["end_to_end"] = end_to_end(data_dir, args.size, args.epochs)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

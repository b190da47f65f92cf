"""A user's own data end to end: a 3-class ``.npz`` of sensor windows and a folder of images each
go register -> build (fp32 + static int8 with its ``.tflite``) -> load in the device runtimes a
Pi and an MCU run -> serve through the device's ``Serving``, with accuracy on the data's own
recorded test split (the rows the split put aside, never trained on).

The wav-folder path (MFCC frontend, raw audio on the device) is covered the same way in
``tests/test_frontend_pipeline.py``; a full fleet deploy runs for kws in ``make demo`` and for
digits in ``tests/test_fleet_e2e.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtimes import open_runtime
from edgefleet.agent.serving import Serving
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.modelops.build import BuildOptions, build_variants, register_model
from edgefleet.modelops.data import Dataset, load_dataset
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec


def write_sensor_npz(path: Path, seed: int = 0) -> Path:
    """3 gestures as 3-axis windows of 64 samples: a sine on one axis, noise, a step."""
    rng = np.random.default_rng(seed)
    n = 600
    y = np.arange(n) % 3
    t = np.linspace(0, 2 * np.pi, 64)
    x = rng.normal(0, 0.3, size=(n, 3, 64)).astype(np.float32)
    x[y == 0, 0] += np.sin(3 * t)
    x[y == 2, 2, 32:] += 1.5
    groups = np.asarray([f"user-{i % 9}" for i in range(n)])  # 9 users; test users held out
    np.savez(path, x=x, y=y.astype(np.int64), groups=groups)
    return path


def write_images(root: Path, seed: int = 0) -> Path:
    """Two classes of 16x16 grayscale PNGs: a bright square top-left vs bottom-right."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, (r, c) in (("tl", (2, 2)), ("br", (9, 9))):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(100):
            img = rng.integers(0, 60, size=(16, 16)).astype(np.uint8)
            img[r : r + 5, c : c + 5] = 230
            Image.fromarray(img, mode="L").save(folder / f"{i}.png")
    return root


@dataclass
class Built:
    data: Dataset
    fp32: Bundle
    int8: Bundle


def _build(source: Path, store_dir: Path, arch: str, **options: object) -> Built:
    store = VariantStore(store_dir)
    build = BuildOptions(latency=LatencyConfig(warmup=1, runs=3))
    data = load_dataset(str(source), store.root, **options)
    spec = ArchitectureSpec.zoo(
        arch, width=0.5, num_classes=data.num_classes, input_shape=data.input_shape
    )
    entry = register_model(store, "user", spec, data, epochs=30, options=build)
    (int8,) = build_variants(store, "user", ["int8-static"], options=build)
    return Built(data, store.load(entry.base), store.load(int8))


@pytest.fixture(scope="module")
def sensor(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("sensor")
    return _build(write_sensor_npz(root / "gestures.npz"), root / "store", "ds-cnn")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("images")
    return _build(write_images(root / "squares"), root / "store", "ds-cnn", size=(16, 16))


@pytest.mark.parametrize("case", ["sensor", "images"])
def test_user_data_builds_deploys_to_device_runtimes_and_serves(
    case: str, request: pytest.FixtureRequest
) -> None:
    built: Built = request.getfixturevalue(case)
    data = built.data
    # the manifest names the user's data and the test split every variant is measured on
    assert built.int8.manifest["dataset"]["sha256"] == built.fp32.manifest["dataset"]["sha256"]
    assert built.int8.manifest["dataset"]["split"]["test"] == len(data.y_test)
    for name in ("model.onnx", "model.tflite"):
        assert name in built.int8.manifest["files"]
    recorded = float(built.int8.manifest["metrics"]["accuracy"])
    assert recorded > 0.8  # a learnable task, measured on its own held-out rows
    scored = {}
    for runtime, profile in (
        ("onnxruntime", "rpi4"),
        ("litert", "rpi4"),
        ("mcu-sim", "cortex-m4"),
        ("tflm", "cortex-m4"),
    ):
        rt = open_runtime(runtime, get_profile(profile))
        rt.load(built.int8)
        scored[runtime] = float((rt.predict(data.x_test) == data.y_test).mean())
    # every device runtime of the same int8 graph scores what the build recorded
    tolerance = 2 / len(data.y_test) + 1e-9
    assert all(abs(acc - recorded) <= tolerance for acc in scored.values()), (scored, recorded)
    serving = Serving(get_profile("rpi4"))
    assert serving.load(built.int8) is None
    result = serving.infer(data.x_test[:8], labels=[int(y) for y in data.y_test[:8]])
    assert len(result.argmax) == 8


def test_the_sensor_split_holds_out_whole_users(sensor: Built) -> None:
    src = sensor.data.source
    assert src is not None and src.groups is not None
    train_users = set(src.groups[src.train].tolist())
    test_users = set(src.groups[src.test].tolist())
    assert test_users and not (train_users & test_users)

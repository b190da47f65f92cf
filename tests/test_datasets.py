"""Datasets as data (issue 16, part 1): the loaders, the split, the hash, one clear line for every
kind of bad data (and nothing written), and a user ``.npz`` through ``edgefleet models add``."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.cli.main import app
from edgefleet.datasets import (
    DatasetError,
    load_audio_dir,
    load_image_dir,
    load_npz,
    load_path,
    make_dataset,
    save_npz,
)
from edgefleet.modelops.build import build_variants
from edgefleet.variant_store import VariantStore

runner = CliRunner()


def _sensor_arrays(
    n_per_class: int = 30, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0
) -> tuple[Any, Any]:
    """Three separable classes of sensor windows."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    grid = np.indices((8, 8))
    patterns = [grid[0] % 2, grid[1] % 2, (grid[0] + grid[1]) % 2]  # rows, columns, checkers
    for c in range(3):
        base = patterns[c].astype(np.float32).reshape(shape)
        xs.append(base + 0.1 * rng.standard_normal((n_per_class, *shape)).astype(np.float32))
        ys += [c] * n_per_class
    return np.concatenate(xs), np.asarray(ys, dtype=np.int64)


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _wav(path: Path, samples: int, rate: int = 16000, channels: int = 1, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(samples)
    data = (rng.standard_normal(samples * channels) * 3000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes() if width == 2 else data.astype("<i4").tobytes())


def _image(path: Path, value: int, size: tuple[int, int] = (20, 12)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


# --- loaders -----------------------------------------------------------------------------


def test_npz_loader_splits_hashes_and_keeps_the_input_shape(tmp_path: Path) -> None:
    x, y = _sensor_arrays()
    d = load_npz(_npz(tmp_path / "sensors.npz", x=x, y=y + 5))  # labels 5, 6, 7
    assert d.input_shape == (1, 8, 8) and d.num_classes == 3
    assert d.classes == ("5", "6", "7") and set(d.y.tolist()) == {0, 1, 2}
    assert d.x.dtype == np.float32 and len(d.sha256) == 64
    rows = np.concatenate([d.train, d.val, d.test])
    assert sorted(rows.tolist()) == list(range(90))  # a partition of the rows
    for part in (d.train, d.val, d.test):
        assert set(d.y[part].tolist()) == {0, 1, 2}  # stratified
    assert (len(d.train), len(d.val), len(d.test)) == (54, 18, 18)


def test_npz_loader_takes_a_given_split_and_groups(tmp_path: Path) -> None:
    x, y = _sensor_arrays(10, shape=(64,))
    split = np.array((["train"] * 6 + ["val"] * 2 + ["test"] * 2) * 3)
    groups = np.arange(30) % 10
    d = load_npz(_npz(tmp_path / "s.npz", x=x, y=y, split=split, groups=groups))
    assert d.input_shape == (64,)
    assert d.test.tolist() == [i for i in range(30) if split[i] == "test"]
    assert d.groups is not None and d.groups[0] == "0"


def test_save_npz_round_trips_data_split_and_hash(tmp_path: Path) -> None:
    x, y = _sensor_arrays()
    groups = np.repeat(np.arange(18), 5)
    d = load_npz(_npz(tmp_path / "a.npz", x=x, y=y, groups=groups))
    save_npz(d, tmp_path / "copy.npz")
    again = load_npz(tmp_path / "copy.npz")
    assert again.sha256 == d.sha256 and again.classes == d.classes
    for a, b in ((again.train, d.train), (again.val, d.val), (again.test, d.test)):
        assert a.tolist() == b.tolist()


def test_audio_loader_cuts_one_second_windows_and_groups_by_recording(tmp_path: Path) -> None:
    root = tmp_path / "kws"
    for label in ("yes", "no"):
        for i in range(4):
            _wav(root / label / f"{i}.wav", 16000 * 2 + 100 if i == 0 else 8000)
    d = load_audio_dir(root)
    assert d.classes == ("no", "yes") and d.input_shape == (1, 1, 16000)
    assert len(d.y) == 2 * (2 + 3)  # a 2 s file gives two windows, each short file one (padded)
    assert d.groups is not None
    two = np.flatnonzero(d.groups == "yes/0.wav")
    assert (
        len(two) == 2
        and len({s for s in ("train", "val", "test") for r in two if r in getattr(d, s)}) == 1
    )
    assert np.abs(d.x).max() < 1.0
    assert d.input_scale == 1.0 / 32768.0
    save_npz(d, tmp_path / "kept.npz")
    kept = load_npz(tmp_path / "kept.npz")
    assert kept.input_scale == d.input_scale and kept.source == d.source
    short = load_audio_dir(root, rate=16000, window_s=0.25)
    assert short.input_shape == (1, 1, 4000)
    assert load_path(root).sha256 == d.sha256


def test_image_loader_resizes_grayscale_or_rgb(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for label, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _image(root / label / f"{i}.png", value + i, size=(20 + i, 12))
        _image(root / label / "x.jpg", value)
    gray = load_image_dir(root, size=(8, 6))
    assert gray.input_shape == (1, 8, 6) and gray.classes == ("cat", "dog") and len(gray.y) == 8
    assert gray.x.min() >= 0.0 and gray.x.max() <= 1.0 and gray.input_scale == 1.0 / 255.0
    rgb = load_path(root, size=(4, 4), mode="RGB")
    assert rgb.input_shape == (3, 4, 4)


# --- the split and the hash --------------------------------------------------------------


def test_split_is_deterministic_and_the_hash_stable(tmp_path: Path) -> None:
    x, y = _sensor_arrays()
    a = make_dataset("a", "a", x, y)
    b = make_dataset("b", "b", x.copy(), y.copy())
    assert a.sha256 == b.sha256 and a.test.tolist() == b.test.tolist()
    assert a.split_sha256() == b.split_sha256()
    changed = x.copy()
    changed[0, 0, 0, 0] += 1e-3
    assert make_dataset("c", "c", changed, y).sha256 != a.sha256


def test_group_aware_split_never_tests_on_a_training_group() -> None:
    x, y = _sensor_arrays(40)
    groups = np.array([f"user{i // 4}" for i in range(len(y))])  # 30 users, one class each
    d = make_dataset("g", "g", x, y, groups=groups)
    assert d.groups is not None
    train, val, test = (set(d.groups[p].tolist()) for p in (d.train, d.val, d.test))
    assert not train & test and not train & val and not val & test
    for part in (d.train, d.val, d.test):
        assert set(d.y[part].tolist()) == {0, 1, 2}


# --- bad data: one line naming the file or field -----------------------------------------


def _bad_npz(tmp_path: Path, case: str) -> Path:
    x, y = _sensor_arrays(10)
    p = tmp_path / f"{case}.npz"
    if case == "missing-x":
        return _npz(p, y=y)
    if case == "missing-y":
        return _npz(p, x=x)
    if case == "length":
        return _npz(p, x=x, y=y[:-1])
    if case == "float-labels":
        return _npz(p, x=x, y=y.astype(np.float32) + 0.5)
    if case == "nan":
        x[4, 0, 1, 1] = np.nan
        return _npz(p, x=x, y=y)
    if case == "inf":
        x[7, 0, 0, 0] = np.inf
        return _npz(p, x=x, y=y)
    if case == "one-class":
        return _npz(p, x=x, y=np.zeros_like(y))
    if case == "mixed-shapes":
        ragged = np.empty(3, dtype=object)
        ragged[:] = [np.zeros(4), np.zeros(5), np.zeros(4)]
        np.savez(p, x=ragged, y=np.arange(3))
        return p
    if case == "no-test-rows":
        split = np.where(y == 2, "train", "test")
        split[[0, 10]] = "train"
        split[[1, 11, 21]] = "val"
        return _npz(p, x=x, y=y, split=split)
    if case == "undecodable":
        p.write_bytes(b"not a zip at all")
        return p
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-x", "missing-x.npz: missing array 'x' (has: y)"),
        ("missing-y", "missing-y.npz: missing array 'y' (has: x)"),
        ("length", "length.npz: y has 29 labels for 30 rows of x"),
        ("float-labels", "float-labels.npz: y labels must be integers, got dtype float32"),
        ("nan", "nan.npz: x has 1 NaN/inf values (first in row 4)"),
        ("inf", "inf.npz: x has 1 NaN/inf values (first in row 7)"),
        ("one-class", "one-class.npz: y has only one class; need at least 2"),
        ("mixed-shapes", "mixed-shapes.npz: an array holds Python objects (mixed shapes?)"),
        ("no-test-rows", "no-test-rows.npz: split: class 2 has no test rows"),
        ("undecodable", "undecodable.npz: not a readable .npz"),
    ],
)
def test_bad_npz_is_one_line_through_the_cli_and_nothing_is_written(
    tmp_path: Path, case: str, message: str
) -> None:
    path = _bad_npz(tmp_path, case)
    with pytest.raises(DatasetError, match=None) as err:
        load_npz(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    data_dir = tmp_path / "data"
    res = runner.invoke(
        app, ["models", "add", "m", "--dataset", str(path), "--data-dir", str(data_dir)]
    )
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith(f"error: {message}") and res.stderr.count("\n") == 1
    assert not data_dir.exists()


def test_bad_audio_and_image_folders_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "a"
    _wav(root / "yes" / "0.wav", 16000)
    _wav(root / "no" / "0.wav", 16000, rate=8000)
    with pytest.raises(DatasetError, match=r"^no/0.wav: sample rate 8000 Hz, expected 16000 Hz$"):
        load_audio_dir(root)
    (root / "no" / "0.wav").unlink()
    _wav(root / "no" / "1.wav", 16000, channels=2)
    with pytest.raises(DatasetError, match=r"^no/1.wav: 2 channels, expected mono$"):
        load_audio_dir(root)
    (root / "no" / "1.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DatasetError, match=r"^no/1.wav: cannot decode as WAV"):
        load_audio_dir(root)
    (root / "no" / "1.wav").unlink()
    with pytest.raises(DatasetError, match=r"/a/no: no .wav files$"):
        load_audio_dir(root)
    (root / "no").rmdir()
    (root / "yes" / "0.wav").unlink()
    (root / "yes").rmdir()
    with pytest.raises(DatasetError, match=r"/a: no label folders"):
        load_path(root)
    imgs = tmp_path / "i"
    _image(imgs / "cat" / "0.png", 1)
    (imgs / "dog").mkdir()
    (imgs / "dog" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"^dog/0.png: cannot decode image"):
        load_image_dir(imgs)
    with pytest.raises(DatasetError, match=r"few.npz: class 0 has 2 row\(s\); need at least 3"):
        load_npz(_npz(tmp_path / "few.npz", x=np.zeros((5, 2)), y=np.array([0, 0, 1, 1, 1])))


def test_unknown_name_and_wrong_architecture_are_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    res = runner.invoke(
        app, ["models", "add", "m", "--dataset", "nope.npz", "--data-dir", str(data_dir)]
    )
    assert res.exit_code == 1 and res.stderr.startswith("error: unknown dataset 'nope.npz'")
    x, y = _sensor_arrays(10, shape=(64,))
    flat = _npz(tmp_path / "flat.npz", x=x, y=y)
    res = runner.invoke(
        app,
        [
            "models",
            "add",
            "m",
            "--dataset",
            str(flat),
            "--arch",
            "ds-cnn",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert res.exit_code == 1, res.output
    assert (
        res.stderr.startswith("error: ds-cnn does not take dataset flat-")
        and res.stderr.count("\n") == 1
    )
    assert not (data_dir / "datasets").exists() and not (data_dir / "models.json").exists()


# --- end to end --------------------------------------------------------------------------


def test_models_add_trains_on_a_user_npz_and_measures_on_its_test_rows(tmp_path: Path) -> None:
    x, y = _sensor_arrays(100)
    path = _npz(tmp_path / "sensors.npz", x=x, y=y)
    data_dir = tmp_path / "data"
    res = runner.invoke(
        app,
        ["models", "add", "reg", "--dataset", str(path), "--arch", "ds-cnn", "--width", "0.5",
         "--epochs", "15", "--latency-runs", "5", "--data-dir", str(data_dir), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert out["base"]["accuracy"] > 0.9
    expected = load_npz(path)
    store = VariantStore(data_dir)
    name = store.model("reg").dataset
    assert name == f"sensors-{expected.sha256[:12]}"
    assert (data_dir / "datasets" / f"{name}.npz").is_file()
    manifest = store.load(store.model("reg").base).manifest
    assert manifest["dataset"]["sha256"] == expected.sha256
    assert manifest["dataset"]["split"]["sha256"] == expected.split_sha256()
    assert manifest["dataset"]["split"]["test"] == len(expected.test) == 60
    assert manifest["metrics"]["test_samples"] == 60
    assert manifest["input"]["shape"] == [1, 1, 8, 8]
    (vid,) = build_variants(store, "reg", ["fp16"])
    fp16 = store.load(vid).manifest
    assert fp16["dataset"] == manifest["dataset"] and fp16["metrics"]["test_samples"] == 60


def test_the_package_is_light_numpy_only_at_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgefleet.datasets; "
        "print(sorted(m for m in ('torch', 'PIL', 'sklearn', 'scipy') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert out.stdout.strip() == "[]"


def test_dataset_completion_offers_builtins_kept_copies_and_npz_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet.cli.completion import complete_datasets

    (tmp_path / "data" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "sensors-0123456789ab.npz").write_bytes(b"")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "kws.npz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert complete_datasets("") == ["data/", "digits", "runs/", "sensors-0123456789ab"]
    assert complete_datasets("runs/") == ["runs/kws.npz"]
    assert complete_datasets("se") == ["sensors-0123456789ab"]

"""The built-in ``kws`` set: classes, determinism, voice hold-out, cache, failure lines, clips.

Uses the ``tiny`` size (240 clips, about a second with espeak-ng); generation tests skip (fail in
CI) without espeak-ng, while the missing-espeak-ng and cache-hit tests run with a PATH that has
no espeak-ng at all.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.datasets import Dataset, DatasetError
from edgefleet.datasets import kws as kws_module
from edgefleet.datasets.kws import (
    CLASSES,
    KWS_SIZES,
    MISSING_ESPEAK,
    SILENCE,
    WORDS,
    KwsSpec,
    generate_kws,
    kws_cache_path,
    load_kws,
)
from tests.prereqs import require_binaries

TINY = KWS_SIZES["tiny"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kws-data")


@pytest.fixture(scope="module")
def tiny(data_dir: Path) -> Dataset:
    require_binaries("espeak-ng")
    return load_kws(data_dir, size="tiny", quiet=True)


def _no_espeak_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_classes_counts_and_row_format(tiny: Dataset) -> None:
    assert tiny.name == "kws"
    assert tiny.classes == CLASSES
    assert tiny.classes[:10] == WORDS and tiny.classes[10:] == ("_silence_", "_unknown_")
    assert tiny.x.shape == (TINY.clips(), 1, 1, 16000)
    assert tiny.x.dtype == np.float32
    assert tiny.input_scale == 1.0 / 32768.0
    assert np.bincount(tiny.y, minlength=12).tolist() == [TINY.clips() // 12] * 12
    for rows in (tiny.train, tiny.val, tiny.test):
        assert set(tiny.y[rows].tolist()) == set(range(12))


def test_test_and_val_voices_are_never_heard_in_training(tiny: Dataset) -> None:
    assert tiny.groups is not None
    train, val, test = (set(tiny.groups[r].tolist()) for r in (tiny.train, tiny.val, tiny.test))
    assert test and val and train
    assert not test & train and not val & train and not test & val
    # every voice has its own variant, so a held-out voice is a timbre never heard in training
    variants = {split: {g.split("+")[1] for g in s} for split, s in (("tr", train), ("te", test))}
    assert not variants["tr"] & variants["te"]
    assert len(train | val | test) == TINY.voices


def test_same_seed_same_bytes_other_seed_other_bytes(tiny: Dataset) -> None:
    again = generate_kws(TINY, quiet=True)
    assert again.sha256 == tiny.sha256
    assert hashlib.sha256(again.x.tobytes()).digest() == hashlib.sha256(tiny.x.tobytes()).digest()
    assert np.array_equal(again.test, tiny.test)
    other = generate_kws(KwsSpec(**{**TINY.__dict__, "seed": 1}), quiet=True)
    assert other.sha256 != tiny.sha256


def test_clips_are_sane(tiny: Dataset) -> None:
    x = tiny.x[:, 0, 0, :]
    assert np.isfinite(x).all()
    assert x.min() >= -1.0 and x.max() < 1.0
    assert np.array_equal(x * 32768.0, np.round(x * 32768.0))  # on the int16 grid a device feeds
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1))
    peak = np.abs(x).max(axis=1)
    silence, words = tiny.y == SILENCE, tiny.y != SILENCE
    assert peak[words].min() > 10 ** (TINY.level_db[0] / 20) * 0.5  # every word is audible
    assert rms[silence].max() < 10 ** (TINY.silence_db[1] / 20) * 1.01
    assert np.median(rms[silence]) < np.median(rms[words]) / 3
    # the word sits somewhere in the window, not always at the start
    onsets = [int(np.argmax(np.abs(row) > 0.5 * np.abs(row).max())) for row in x[words]]
    assert max(onsets) - min(onsets) > 4000


def test_second_load_reads_the_cache_without_espeak(
    tiny: Dataset, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kws_cache_path(data_dir, TINY).is_file()
    _no_espeak_path(tmp_path, monkeypatch)
    cached = load_kws(data_dir, size="tiny")
    assert cached.sha256 == tiny.sha256
    assert np.array_equal(cached.test, tiny.test)
    assert cached.groups is not None and cached.input_scale == tiny.input_scale
    assert cached.name == "kws" and cached.source == tiny.source


def test_missing_espeak_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_espeak_path(tmp_path, monkeypatch)
    with pytest.raises(DatasetError) as info:
        load_kws(tmp_path / "fresh", size="tiny", quiet=True)
    assert str(info.value) == MISSING_ESPEAK
    assert "apt-get install espeak-ng" in str(info.value)
    assert not (tmp_path / "fresh" / "datasets").exists()


@pytest.mark.parametrize(
    ("size", "match"),
    [
        ("huge", "unknown size 'huge'"),
        (KwsSpec(voices=500, configs_per_voice=1), "at most"),
        (KwsSpec(voices=2, configs_per_voice=1), "at least 5 voices"),
    ],
)
def test_bad_size_is_one_line(tmp_path: Path, size: str | KwsSpec, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        load_kws(tmp_path, size=size, quiet=True)


def test_espeak_without_audio_is_one_line() -> None:
    require_binaries("espeak-ng")
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    with pytest.raises(
        DatasetError, match=r"espeak-ng failed for voice xx-none\+zz: .*does not exist"
    ):
        kws_module._espeak(espeak, "xx-none+zz", 150, 50, "yes", ssml=False)
    with pytest.raises(DatasetError, match="espeak-ng wrote no WAV for voice en-us"):
        kws_module._wav_samples(b"RIFF\0\0\0\0WAVE", "en-us")  # no data chunk
    with pytest.raises(DatasetError, match="espeak-ng wrote no audio for voice en-us"):
        kws_module._wav_samples(b"RIFF\0\0\0\0WAVEfmt data\0\0\0\0", "en-us")


def test_a_failed_cut_falls_back_to_one_process_per_word(monkeypatch: pytest.MonkeyPatch) -> None:
    require_binaries("espeak-ng")
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    calls: list[str] = []
    real = kws_module._espeak

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(kws_module, "_espeak", counted)
    words = ["yes", "stop", "seven"]
    joined = kws_module._speak_all(espeak, "en-us+f3", 150, 50, words)
    assert len(calls) == 1  # one process spoke all three
    monkeypatch.setattr(kws_module, "_split_words", lambda samples: [samples])  # a bad cut
    single = kws_module._speak_all(espeak, "en-us+f3", 150, 50, words)
    assert calls[2:] == words  # then one process per word
    assert len(joined) == len(single) == 3
    for a, b in zip(joined, single, strict=True):
        assert abs(len(a) - len(b)) < 0.15 * 16000  # the same word, cut either way


def test_split_words_cuts_at_long_pauses_only() -> None:
    rate = kws_module.ESPEAK_RATE
    burst = np.full(rate // 10, 0.5, dtype=np.float32)
    short, long_ = np.zeros(rate // 5, np.float32), np.zeros(rate, np.float32)
    parts = kws_module._split_words(np.concatenate([long_, burst, short, burst, long_, burst]))
    assert [len(p) for p in parts] == [2 * len(burst) + len(short), len(burst)]
    assert kws_module._split_words(np.zeros(100, np.float32)) == []


def test_resampler_keeps_the_band_and_drops_what_would_alias() -> None:
    rate = kws_module.ESPEAK_RATE
    t = np.arange(rate) / rate
    for freq, kept in ((1000.0, True), (9500.0, False)):
        out = kws_module._resample(np.sin(2 * np.pi * freq * t).astype(np.float32))
        assert abs(len(out) - 16000) < 0.1 * 16000
        spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(len(out) - 4000)))
        peak_hz = np.argmax(spectrum) * 16000 / (len(out) - 4000)
        energy = float(np.sqrt(np.mean(out[2000:-2000] ** 2)))
        if kept:
            assert abs(peak_hz - freq) < 20 and abs(energy - 0.707) < 0.02
        else:
            assert energy < 1e-3  # 9.5 kHz must not fold back to 6.5 kHz


def test_progress_bar_on_stderr_unless_quiet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bar = kws_module._Progress(4, quiet=False)
    for _ in range(4):
        bar.step()
    bar.done()
    err = capsys.readouterr().err
    # captured stderr is not a terminal: one line per quarter, no redrawn bar
    assert "\r" not in err and err.count("voice configs") == 4
    assert "4/4 voice configs" in err and err.endswith("\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    tty = kws_module._Progress(200, quiet=False)
    for _ in range(200):
        tty.step()
    tty.done()
    err = capsys.readouterr().err
    assert err.count("\r") == 100 and "200/200 voice configs" in err  # redrawn once per percent
    quiet = kws_module._Progress(4, quiet=True)
    quiet.step()
    quiet.done()
    assert capsys.readouterr().err == ""


def test_load_dataset_builds_kws_under_the_data_dir(tiny: Dataset, data_dir: Path) -> None:
    from edgefleet.modelops.data import DATASETS, load_dataset, store_dataset

    assert "kws" in DATASETS
    data = load_dataset("kws", data_dir, kws_size="tiny")  # the cache the fixture made
    assert data.name == "kws" and data.num_classes == 12
    assert data.info["sha256"] == tiny.sha256
    assert data.input_scale == 1.0 / 32768.0
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (
        len(tiny.train),
        len(tiny.val),
        len(tiny.test),
    )
    assert data.source is not None and data.source.groups is not None
    before = sorted(p.name for p in (data_dir / "datasets").iterdir())
    store_dataset(data, data_dir)  # a built-in is not copied again under its name
    assert sorted(p.name for p in (data_dir / "datasets").iterdir()) == before


def test_load_dataset_without_data_dir_uses_the_user_cache(
    tiny: Dataset, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet.modelops.data import load_dataset

    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    target = kws_cache_path(cache / "edgefleet", TINY)
    target.parent.mkdir(parents=True)
    target.write_bytes(kws_cache_path(data_dir, TINY).read_bytes())
    _no_espeak_path(tmp_path, monkeypatch)  # so only the cache can answer
    assert load_dataset("kws", None, kws_size="tiny").info["sha256"] == tiny.sha256
    with pytest.raises(DatasetError, match="unknown size 'big'"):
        load_dataset("kws", None, kws_size="big")

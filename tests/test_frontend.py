"""The MFCC frontend (edgefleet.frontend): the float version equals an independent reference
(librosa's mel spectrogram and scipy's DCT), the fixed-point version stays within its stated
tolerance of the float one, bad specs are one-line errors, and the cost numbers add up."""

from __future__ import annotations

import io
import subprocess
import wave
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edgefleet.frontend import FrontendError, FrontendSpec
from edgefleet.frontend.mfcc import mfcc
from edgefleet.frontend.mfcc_q15 import OUTPUT_SCALE, mfcc_q15, to_float, to_int16
from edgefleet.frontend.tables import dct_matrix, mel_filterbank, window
from tests.prereqs import require_binaries

SPEC = FrontendSpec()
RATE = 16000
#: float MFCC vs librosa + scipy (both float64): absolute, on features spanning about -90..+40
REFERENCE_TOL = 1e-4
#: fixed point vs float on noisy speech and noise (what KWS clips are): absolute, every value
Q15_TOL_NOISY = 0.3
#: fixed point vs float on clean synthetic speech in digital silence: 90th percentile and mean
#: (bands more than ~80 dB under a frame's peak sit below the 16-bit FFT's noise floor; measured
#: p90 0.30, mean 0.15, the worst single value 24 in a frame of a few quiet samples; see
#: mfcc_q15's docstring)
Q15_TOL_CLEAN_P90 = 0.4
Q15_TOL_CLEAN_MEAN = 0.2

F64 = npt.NDArray[np.float64]


def _int16_exact(x: F64) -> F64:
    """Audio a device can receive: int16 samples / 32768."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767) / 32768.0


def reference_mfcc(x: F64, spec: FrontendSpec = SPEC) -> F64:
    """MFCC from librosa and scipy only, ``(N, frames, coeffs)``.

    librosa frames ``n_fft`` samples and centres the ``win_length`` window in them, so the
    signal is padded by ``(n_fft - window) / 2`` on both sides: frame j's windowed samples are
    then exactly ours, and a circular shift inside the FFT frame leaves the magnitude unchanged.
    """
    import librosa
    import scipy.fft  # type: ignore[import-untyped]

    pad = (spec.fft_size - spec.window) // 2
    out = []
    for row in x:
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
    return np.asarray(out)


def synthetic(seed: int = 0) -> F64:
    """Tones, a chirp, white noise and amplitude-modulated harmonics at -40..0 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(RATE) / RATE
    rows = []
    for amp in (0.9, 0.1, 0.01):
        rows.append(amp * np.sin(2 * np.pi * 440 * t))
        rows.append(amp * np.sin(2 * np.pi * (100 + 3000 * t) * t))
        rows.append(np.clip(amp * 0.3 * rng.standard_normal(RATE), -1, 0.999))
        voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))
        rows.append(amp * 0.3 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)))
    return _int16_exact(np.asarray(rows))


def _read_wav(data: bytes) -> tuple[F64, int]:
    with wave.open(io.BytesIO(data)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float64) / 32768.0, rate


@pytest.fixture(scope="module")
def speech() -> F64:
    """Words spoken by espeak-ng in three voices, resampled to 16 kHz, in 1 s windows."""
    require_binaries("espeak-ng")
    import librosa

    rows = []
    for i, (word, voice) in enumerate(
        [("yes", "en-us+f3"), ("left", "en-gb+m3"), ("seven", "en-us+m7"), ("stop", "en-gb+f2")]
    ):
        data = subprocess.run(
            ["espeak-ng", "-v", voice, "--stdout", word], capture_output=True, check=True
        ).stdout
        pcm, rate = _read_wav(data)
        y = librosa.resample(pcm, orig_sr=rate, target_sr=RATE)[: RATE - 1000]
        clip = np.zeros(RATE)
        clip[500 + 300 * i : 500 + 300 * i + len(y)] = y[: RATE - 500 - 300 * i]
        rows.append(clip)
    return _int16_exact(np.asarray(rows))


def noisy(x: F64, seed: int = 1) -> F64:
    rng = np.random.default_rng(seed)
    return _int16_exact(np.clip(x + 0.003 * rng.standard_normal(x.shape), -1, 0.999))


# -- tables and the float MFCC against librosa/scipy ----------------------------------------


def test_tables_equal_librosa_and_scipy() -> None:
    import librosa
    import scipy.fft
    import scipy.signal  # type: ignore[import-untyped]

    ref = librosa.filters.mel(
        sr=RATE, n_fft=1024, n_mels=40, fmin=20.0, fmax=4000.0, htk=True, norm=None
    )
    np.testing.assert_allclose(mel_filterbank(SPEC), ref, atol=1e-6)
    np.testing.assert_allclose(window(SPEC), scipy.signal.get_window("hann", 640, fftbins=True))
    eye = scipy.fft.dct(np.eye(40), type=2, norm="ortho", axis=0)[:10]
    np.testing.assert_allclose(dct_matrix(SPEC), eye, atol=1e-12)


def test_float_mfcc_equals_reference_on_synthetic_signals() -> None:
    x = synthetic()
    ours = mfcc(x)
    assert ours.shape == (len(x), 1, 49, 10) and ours.dtype == np.float32
    ref = reference_mfcc(x)
    assert np.abs(ours[:, 0] - ref).max() < REFERENCE_TOL * np.abs(ref).max()


def test_float_mfcc_equals_reference_on_speech(speech: F64) -> None:
    for x in (speech, noisy(speech)):
        ref = reference_mfcc(x)
        assert np.abs(mfcc(x)[:, 0] - ref).max() < REFERENCE_TOL * np.abs(ref).max()


def test_float_mfcc_takes_int16_and_channel_dims() -> None:
    x = synthetic()[:3]
    q = to_int16(x)
    assert q.dtype == np.int16
    np.testing.assert_array_equal(mfcc(q), mfcc(x))
    np.testing.assert_array_equal(mfcc(x[:, None, None, :]), mfcc(x))


def test_mfcc_changes_with_the_signal() -> None:
    """Different sounds give different features (the reference test cannot pass vacuously)."""
    x = synthetic()
    out = mfcc(x)
    assert np.abs(out[0] - out[2]).max() > 1.0


# -- fixed point against float --------------------------------------------------------------


def test_q15_within_tolerance_on_noise_and_noisy_speech(speech: F64) -> None:
    x = np.concatenate([synthetic()[2::4], noisy(speech)])
    q = mfcc_q15(x)
    assert q.dtype == np.int16 and q.shape == (len(x), 1, 49, 10)
    diff = np.abs(to_float(q) - mfcc(x))
    assert diff.max() <= Q15_TOL_NOISY, diff.max()


def test_q15_within_tolerance_on_clean_speech(speech: F64) -> None:
    diff = np.abs(to_float(mfcc_q15(speech)) - mfcc(speech))
    assert np.percentile(diff, 90) <= Q15_TOL_CLEAN_P90
    assert diff.mean() <= Q15_TOL_CLEAN_MEAN


def test_q15_is_level_independent_like_float() -> None:
    """Block floating point: a quieter copy gives features shifted by ln(gain) * sqrt(n_mels)
    in c0 only, as the float MFCC does (the shift per frame is undone exactly)."""
    x = synthetic()[2:3]  # noise at -10 dBFS
    quiet = _int16_exact(x / 8.0)
    a, b = to_float(mfcc_q15(x)), to_float(mfcc_q15(quiet))
    c0 = (a - b)[..., 0]
    assert np.abs(c0 - np.log(8.0) * np.sqrt(40)).max() < 0.1
    assert np.abs((a - b)[..., 1:]).max() < 0.1


def test_q15_silence_is_the_log_floor() -> None:
    q = to_float(mfcc_q15(np.zeros((1, RATE))))
    ref = mfcc(np.zeros((1, RATE)))
    assert np.abs(q - ref).max() < 0.1
    assert ref[0, 0, 0, 0] == pytest.approx(np.log(1e-6) * np.sqrt(40), rel=1e-5)


def test_q15_output_is_q8_7() -> None:
    assert OUTPUT_SCALE == 1 / 128
    q = mfcc_q15(synthetic()[:1])
    np.testing.assert_array_equal(to_float(q) * 128, q.astype(np.float32))


# -- the spec ------------------------------------------------------------------------------


def test_spec_round_trips_and_shapes() -> None:
    d = SPEC.to_dict()
    assert FrontendSpec.from_dict(d) == SPEC
    assert d["window"] == 640 and d["stride"] == 320 and d["n_mels"] == 40
    assert SPEC.output_shape(16000) == (49, 10)
    assert SPEC.output_shape(640) == (1, 10)
    assert FrontendSpec.from_dict({**d, "fmin": 20}).fmin == 20.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "plp"}, "frontend kind 'plp' unknown"),
        ({"window": 0}, "frontend window must be a positive integer"),
        ({"stride": 2.5}, "frontend stride must be a positive integer"),
        ({"n_mels": True}, "frontend n_mels must be a positive integer"),
        ({"fft_size": 1000}, "fft_size must be a power of two"),
        ({"fft_size": 8192}, "fft_size 8192 > 4096"),
        ({"window": 2048}, "window 2048 is longer than fft_size 1024"),
        ({"window_fn": "hamming"}, "window_fn 'hamming' unknown"),
        ({"mel_scale": "slaney"}, "mel_scale 'slaney' unknown"),
        ({"spectrum": "power"}, "spectrum 'power' unknown"),
        ({"fmax": 9000.0}, "fmin < fmax <= sample_rate/2"),
        ({"fmin": 5000.0}, "fmin < fmax"),
        ({"fmin": float("nan")}, "fmin must be a finite number"),
        ({"log_floor": 0.0}, "log_floor must be in (0, 1)"),
        ({"n_coeffs": 41}, "n_coeffs 41 > n_mels 40"),
        ({"n_mels": 600}, "n_mels 600 > fft_size/2 512"),
        ({"extra": 1}, "unknown field(s): extra"),
    ],
)
def test_spec_refuses_bad_fields(change: dict[str, Any], message: str) -> None:
    with pytest.raises(FrontendError, match=None) as err:
        FrontendSpec.from_dict({**SPEC.to_dict(), **change})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_spec_refuses_missing_fields_and_non_objects() -> None:
    d = SPEC.to_dict()
    del d["n_coeffs"]
    with pytest.raises(FrontendError, match="misses field"):
        FrontendSpec.from_dict(d)
    with pytest.raises(FrontendError, match="must be an object"):
        FrontendSpec.from_dict([1, 2])


def test_short_or_misshaped_audio_is_one_line() -> None:
    with pytest.raises(FrontendError, match="at least 640 samples"):
        mfcc(np.zeros((1, 100)))
    with pytest.raises(FrontendError, match=r"raw audio shaped \[N, samples\]"):
        mfcc(np.zeros((2, 3, 16000)))
    with pytest.raises(FrontendError, match="float or int16"):
        mfcc_q15(np.zeros((1, 16000), dtype=np.int32))


def test_cost_counts_every_stage() -> None:
    cost = SPEC.cost(16000)
    assert cost.frames == 49
    assert set(cost.macs) == {"window", "fft", "magnitude", "mel", "dct"}
    assert all(v > 0 for v in cost.macs.values())
    assert cost.macs["window"] == 49 * 640
    assert cost.macs["dct"] == 49 * 40 * 10
    # a 512-point complex FFT: 256 butterflies x 9 stages x 4 MACs + 512 x 4 for the split
    assert cost.macs["fft"] == 49 * (256 * 9 * 4 + 512 * 4)
    assert cost.ops == {"sqrt": 49 * 513, "log": 49 * 40}
    assert (
        cost.ram_bytes == sum(cost.ram_detail.values()) and cost.ram_detail["input_int16"] == 32000
    )
    assert cost.flash_bytes == sum(cost.flash_detail.values()) > 0
    # only the non-zero mel weights are stored: the 20-4000 Hz bands cover about 256 bins
    assert 200 < SPEC.mel_nonzero() < 2 * 256
    assert cost.cycles(2.0) == pytest.approx(cost.total_macs * 2.0 + 49 * 513 * 24 + 49 * 40 * 30)
    # more audio, more frames, proportionally more work
    assert SPEC.cost(32000).total_macs == pytest.approx(cost.total_macs * 99 / 49)

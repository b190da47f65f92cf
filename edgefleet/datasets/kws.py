"""The built-in keyword-spotting set ``kws``: 12-class speech commands synthesized offline.

Why synthetic: Speech Commands v2 is a 2.3 GB download, and nothing here may be downloaded at
run time; Debian's ``espeak-ng`` speaks any word with no network. The classes are those of
Speech Commands v2 / MLPerf Tiny KWS: ten command words, ``_silence_`` (background noise only)
and ``_unknown_`` (other words, from Speech Commands' own auxiliary list, which includes
near-misses like "tree"/"three" and "one"/"on"). It is *synthetic speech*, easier than real
recordings in some ways (clean articulation) and harder in others (robotic variants, whispers).

A **voice** is an espeak-ng accent plus a voice variant (``en-gb-scotland+f3``); every voice has
its own variant, so a held-out voice is a timbre never heard in training. Each voice speaks
every word at several seeded speeds and pitches; each clip is resampled from 22,050 Hz to
16 kHz, placed at a random offset in a 1 s window, sometimes reverberated (a synthetic room
impulse response), scaled to a random level and mixed with coloured noise or hum at a random
SNR. Rows' ``groups`` are voices, so :func:`~edgefleet.datasets.core.split_rows` holds whole
voices out for validation and test.

Deterministic: every random choice comes from a numpy Generator seeded by ``(seed, voice)``,
espeak-ng is deterministic, and the clips are quantized to the int16 grid, so one seed gives the
same bytes (and sha256) on one machine whatever the thread scheduling. Generation runs one
espeak-ng process per (voice, speed, pitch) that speaks all of its words separated by long
pauses, cut apart at the pauses (a process per word is 3-4x slower here); if a cut does not
give the expected number of words, that config falls back to one process per word.

The result is cached per data dir as ``datasets/kws-<params hash>.npz`` (with its split;
uncompressed, since zlib took 3x longer than the synthesis), so the second load reads the file
and never needs espeak-ng.

Sizes were chosen by training MLPerf Tiny's 23k-parameter DS-CNN on 49x10 MFCC: the default
(60 voices x 6 speed/pitch configs, 4,320 clips) reached 87-90 % on 12 held-out voices after 20
epochs, with ``off`` and ``_unknown_`` the hardest classes; harsher settings (SNR 0-20 dB, half
the clips reverberated up to 0.6 s, 40 voices) stayed near 75 %, too hard for a small model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.datasets.core import Dataset, DatasetError, make_dataset
from edgefleet.datasets.loaders import load_npz, save_npz

__all__ = [
    "CLASSES",
    "KWS_SIZES",
    "UNKNOWN_WORDS",
    "WORDS",
    "KwsSpec",
    "generate_kws",
    "kws_cache_path",
    "load_kws",
]

FloatArray = npt.NDArray[np.float32]
#: the ten command words of Speech Commands v2 / MLPerf Tiny KWS, in class order
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: Speech Commands v2's auxiliary words: the ``_unknown_`` class
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
    "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip
CLASSES = (*WORDS, "_silence_", "_unknown_")
SILENCE, UNKNOWN = len(WORDS), len(WORDS) + 1
#: bump when the synthesis changes, so old caches are not reused
GENERATOR_VERSION = 1
RATE = 16000
ESPEAK_RATE = 22050
#: English accents shipped with Debian's espeak-ng (no mbrola)
ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
#: espeak-ng voice variants (``espeak-ng-data/voices/!v``); whisper/croak-like ones left out
#: because with noise on top they are unintelligible even to a listener
VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Alex", "Alicia", "Andrea",
    "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo",
    "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "Storm",
    "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "caleb", "david", "ed", "edward", "edward2", "gustave", "iven", "iven2", "iven3",
    "iven4", "john", "kaukovalta", "linda", "marcelo", "max", "michel", "miguel", "norbert",
    "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2",
    "steph3", "travis", "victor", "zac", "grandma", "grandpa", "robosoft", "robosoft2",
)  # fmt: skip
MISSING_ESPEAK = (
    "the kws dataset needs espeak-ng: run scripts/install_prereqs.sh (apt-get install espeak-ng)"
)


@dataclass(frozen=True)
class KwsSpec:
    """Every parameter of one generated set; its hash names the cache file."""

    voices: int
    #: (speed, pitch) draws per voice; each speaks every word once
    configs_per_voice: int
    #: ``_unknown_`` and ``_silence_`` clips per config (1 keeps the 12 classes balanced)
    unknown_per_config: int = 1
    silence_per_config: int = 1
    seed: int = 0
    speed_wpm: tuple[int, int] = (120, 210)
    pitch: tuple[int, int] = (20, 80)
    #: peak level of the word, dBFS
    level_db: tuple[float, float] = (-24.0, -3.0)
    #: speech-to-noise ratio, dB (speech RMS over the word vs noise RMS)
    snr_db: tuple[float, float] = (5.0, 25.0)
    #: RMS of ``_silence_`` clips, dBFS
    silence_db: tuple[float, float] = (-65.0, -25.0)
    #: fraction of clips reverberated, and their RT60 range in seconds
    reverb_fraction: float = 0.3
    rt60_s: tuple[float, float] = (0.1, 0.4)

    def params_hash(self) -> str:
        blob = json.dumps({"generator": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def clips(self) -> int:
        per_config = len(WORDS) + self.unknown_per_config + self.silence_per_config
        return self.voices * self.configs_per_voice * per_config


#: named sizes: ``tiny`` for tests (seconds), ``default`` for the platform's KWS task
KWS_SIZES = {
    "tiny": KwsSpec(voices=10, configs_per_voice=2),
    "default": KwsSpec(voices=60, configs_per_voice=6),
    "large": KwsSpec(voices=85, configs_per_voice=12),
}


def kws_cache_path(data_dir: Path, spec: KwsSpec) -> Path:
    return Path(data_dir) / "datasets" / f"kws-{spec.params_hash()}.npz"


def load_kws(
    data_dir: Path,
    *,
    size: str | KwsSpec = "default",
    seed: int | None = None,
    quiet: bool = False,
    workers: int | None = None,
) -> Dataset:
    """The ``kws`` dataset from ``data_dir``'s cache, generating (and caching) it the first time.

    ``size`` is a name in :data:`KWS_SIZES` or a :class:`KwsSpec`; ``seed`` overrides its seed.
    Raises :class:`DatasetError` (one line) for an unknown size or a missing espeak-ng.
    """
    spec = _resolve(size, seed)
    path = kws_cache_path(data_dir, spec)
    if path.is_file():
        return load_npz(path, name="kws")
    data = generate_kws(spec, quiet=quiet, workers=workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(data, path, compress=False)  # zlib would take longer than the synthesis
    return data


def _resolve(size: str | KwsSpec, seed: int | None) -> KwsSpec:
    if isinstance(size, KwsSpec):
        spec = size
    elif size in KWS_SIZES:
        spec = KWS_SIZES[size]
    else:
        raise DatasetError(f"kws: unknown size {size!r} (known: {', '.join(KWS_SIZES)})")
    if seed is not None:
        spec = KwsSpec(**{**asdict(spec), "seed": seed})
    if spec.voices > len(VARIANTS):
        raise DatasetError(f"kws: at most {len(VARIANTS)} voices (one per variant)")
    if spec.voices < 5 or spec.configs_per_voice < 1:
        raise DatasetError("kws: need at least 5 voices (3 train, 1 val, 1 test) and 1 config")
    return spec


def voices(spec: KwsSpec) -> list[str]:
    """``accent+variant`` per voice: distinct variants (seeded), accents in turn."""
    rng = np.random.default_rng([spec.seed, 0])
    picked = rng.choice(len(VARIANTS), size=spec.voices, replace=False)
    return [f"{ACCENTS[i % len(ACCENTS)]}+{VARIANTS[int(v)]}" for i, v in enumerate(picked)]


def generate_kws(spec: KwsSpec, *, quiet: bool = False, workers: int | None = None) -> Dataset:
    """Synthesize every clip of ``spec`` (no cache), split by voice and hash."""
    spec = _resolve(spec, None)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DatasetError(MISSING_ESPEAK)
    names = voices(spec)
    jobs = [(v, c) for v in range(len(names)) for c in range(spec.configs_per_voice)]
    progress = _Progress(len(jobs), quiet)

    def run(job: tuple[int, int]) -> tuple[FloatArray, list[int]]:
        out = _config_clips(espeak, spec, names[job[0]], job[0], job[1])
        progress.step()
        return out

    n_workers = workers or min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = list(pool.map(run, jobs))  # in job order, whatever finished first
    progress.done()
    x = np.concatenate([r[0] for r in results])[:, None, None, :]
    y = np.asarray([label for r in results for label in r[1]], dtype=np.int64)
    groups = np.asarray([names[v] for (v, _), r in zip(jobs, results, strict=True) for _ in r[1]])
    return make_dataset(
        "kws",
        f"espeak-ng kws {spec.voices} voices x {spec.configs_per_voice} configs "
        f"seed {spec.seed} ({spec.params_hash()})",
        x,
        y,
        classes=CLASSES,
        groups=groups,
        input_scale=1.0 / 32768.0,  # a device feeds int16 samples times this
        where="kws",
    )


class _Progress:
    """A one-line ``\\r`` bar on stderr, redrawn at most once per percent (workers call it)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.count, self.quiet = total, 0, quiet
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self._step()

    def _step(self) -> None:
        self.count += 1
        # a terminal gets the redrawn bar; a log file (CI) one line per quarter, not 100 redraws
        every = 1 if sys.stderr.isatty() else 25
        if not self.quiet and (
            100 * self.count // self.total // every != 100 * (self.count - 1) // self.total // every
        ):
            filled = 30 * self.count // self.total
            bar = "#" * filled + "." * (30 - filled)
            end = "\r" if sys.stderr.isatty() else "\n"
            sys.stderr.write(
                f"{end}kws: synthesizing [{bar}] {self.count}/{self.total} voice configs"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _config_clips(
    espeak: str, spec: KwsSpec, voice: str, v: int, c: int
) -> tuple[FloatArray, list[int]]:
    """The clips of one (voice, speed, pitch): every word, unknown words and silences."""
    rng = np.random.default_rng([spec.seed, 1, v, c])
    speed = int(rng.integers(spec.speed_wpm[0], spec.speed_wpm[1] + 1))
    pitch = int(rng.integers(spec.pitch[0], spec.pitch[1] + 1))
    extra = rng.choice(len(UNKNOWN_WORDS), size=spec.unknown_per_config, replace=False)
    words = [*WORDS, *(UNKNOWN_WORDS[int(i)] for i in extra)]
    labels = [*range(len(WORDS)), *[UNKNOWN] * spec.unknown_per_config]
    speech = _speak_all(espeak, voice, speed, pitch, words)
    clips = [_word_clip(rng, spec, s) for s in speech]
    clips += [_silence_clip(rng, spec) for _ in range(spec.silence_per_config)]
    labels += [SILENCE] * spec.silence_per_config
    return np.stack(clips), labels


def _espeak(espeak: str, voice: str, speed: int, pitch: int, text: str, ssml: bool) -> FloatArray:
    cmd = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    if ssml:
        cmd.append("-m")
    try:
        done = subprocess.run([*cmd, text], capture_output=True, timeout=60)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise DatasetError(f"kws: espeak-ng failed for voice {voice}: {exc}") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        why = said[0] if said else f"exit status {done.returncode}"
        raise DatasetError(f"kws: espeak-ng failed for voice {voice}: {why}")
    return _wav_samples(done.stdout, voice)


def _wav_samples(wav: bytes, voice: str) -> FloatArray:
    """espeak-ng's stdout WAV (its header's sizes are placeholders: read to the end)."""
    at = wav.find(b"data", 12)
    if wav[:4] != b"RIFF" or at < 0:
        raise DatasetError(f"kws: espeak-ng wrote no WAV for voice {voice}")
    raw = wav[at + 8 :]
    raw = raw[: len(raw) // 2 * 2]
    if not raw:
        raise DatasetError(f"kws: espeak-ng wrote no audio for voice {voice}")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _speak_all(
    espeak: str, voice: str, speed: int, pitch: int, words: Sequence[str]
) -> list[FloatArray]:
    """Each word's samples at 16 kHz; one process for all, cut at the pauses between them."""
    pause = '<break time="1200ms"/>'
    text = "<speak>" + pause.join(words) + "</speak>"
    parts = _split_words(_espeak(espeak, voice, speed, pitch, text, True))
    if len(parts) != len(words):  # a word with a long inner pause: speak them one by one
        parts = [_trim(_espeak(espeak, voice, speed, pitch, w, False)) for w in words]
    return [_resample(p) for p in parts]


def _split_words(samples: FloatArray, gap_s: float = 0.45) -> list[FloatArray]:
    """Runs of sound separated by more than ``gap_s`` of (digital) silence."""
    loud = np.flatnonzero(np.abs(samples) > 2e-3)
    if len(loud) == 0:
        return []
    cuts = np.flatnonzero(np.diff(loud) > gap_s * ESPEAK_RATE)
    starts = [int(loud[0]), *(int(loud[i + 1]) for i in cuts)]
    ends = [*(int(loud[i]) + 1 for i in cuts), int(loud[-1]) + 1]
    return [samples[a:b] for a, b in zip(starts, ends, strict=True)]


def _trim(samples: FloatArray) -> FloatArray:
    loud = np.flatnonzero(np.abs(samples) > 2e-3)
    return samples[int(loud[0]) : int(loud[-1]) + 1] if len(loud) else samples[:1]


def _resample(samples: FloatArray) -> FloatArray:
    """22,050 Hz to 16 kHz, band-limited in the frequency domain.

    Zero-padded to a multiple of 441 samples so the output has exactly 320/441 as many; the
    spectrum is cut at 8 kHz with a raised-cosine taper over its last 400 Hz (no brick-wall
    ringing). The speech is surrounded by silence, so the FFT's periodic wrap is harmless.
    """
    pad = 441 * 2  # room for the filter's ringing on both ends
    n = -(-(len(samples) + 2 * pad) // 441) * 441
    x = np.zeros(n, dtype=np.float64)
    x[pad : pad + len(samples)] = samples
    m = n * 320 // 441
    spectrum = np.fft.rfft(x)[: m // 2 + 1]
    freqs = np.arange(m // 2 + 1) * (RATE / m)
    edge = RATE / 2 - 400.0
    taper = np.where(
        freqs <= edge, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip((freqs - edge) / 400.0, 0, 1)))
    )
    out = np.fft.irfft(spectrum * taper, m) * (m / n)
    return out.astype(np.float32)


def _noise(rng: np.random.Generator, n: int) -> FloatArray:
    """Unit-RMS background: white, pink or brown noise, or mains hum with hiss."""
    kind = int(rng.integers(4))
    out: npt.NDArray[np.float64]
    if kind == 3:
        t = np.arange(n) / RATE
        base = 50.0 if rng.random() < 0.5 else 60.0
        hum = sum(
            rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3))
            for h in range(1, 6)
        )
        out = np.asarray(hum, dtype=np.float64) + 0.3 * rng.standard_normal(n)
    else:
        white = rng.standard_normal(n)
        if kind == 0:
            out = white
        else:
            spectrum = np.fft.rfft(white)
            f = np.maximum(np.arange(len(spectrum)), 1.0)
            out = np.fft.irfft(spectrum / (np.sqrt(f) if kind == 1 else f), n)
    out = out - out.mean()
    return (out / max(float(np.sqrt(np.mean(out**2))), 1e-12)).astype(np.float32)


def _reverb(rng: np.random.Generator, spec: KwsSpec, word: FloatArray) -> FloatArray:
    """Convolve with an exponentially decaying noise tail (a synthetic room)."""
    rt60 = rng.uniform(*spec.rt60_s)
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.4)
    ir[0] = 1.0
    size = len(word) + n - 1
    wet = np.fft.irfft(np.fft.rfft(word, size) * np.fft.rfft(ir, size), size)
    return wet.astype(np.float32)


def _to_int16_grid(clip: npt.NDArray[np.floating]) -> FloatArray:
    """What a 16-bit ADC would deliver, as the float a device computes: int16 / 32768."""
    q = np.clip(np.round(clip * 32768.0), -32768, 32767)
    return (q / 32768.0).astype(np.float32)


def _word_clip(rng: np.random.Generator, spec: KwsSpec, word: FloatArray) -> FloatArray:
    if rng.random() < spec.reverb_fraction:
        word = _reverb(rng, spec, word)
    word = word[:RATE]
    peak = max(float(np.abs(word).max()), 1e-6)
    word = word * (10 ** (rng.uniform(*spec.level_db) / 20) / peak)
    clip = np.zeros(RATE, dtype=np.float64)
    offset = int(rng.integers(0, RATE - len(word) + 1))
    clip[offset : offset + len(word)] = word
    active = word[np.abs(word) > 0.05 * np.abs(word).max()]
    speech_rms = float(np.sqrt(np.mean(active.astype(np.float64) ** 2)))
    noise_rms = speech_rms / 10 ** (rng.uniform(*spec.snr_db) / 20)
    clip += noise_rms * _noise(rng, RATE)
    return _to_int16_grid(clip)


def _silence_clip(rng: np.random.Generator, spec: KwsSpec) -> FloatArray:
    level = 10 ** (rng.uniform(*spec.silence_db) / 20)
    return _to_int16_grid(level * _noise(rng, RATE).astype(np.float64))

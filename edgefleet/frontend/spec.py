"""What a model's signal frontend is, as data: every MFCC parameter, its output shape and its cost.

Why a spec and not just code: the frontend is part of the model. The coordinator trains the
network on MFCC features, but a device receives raw audio and must compute the *same* features,
in floating point (phones, Pis) or fixed point (an MCU). So every parameter that changes a feature
value is written into the manifest (``input.frontend``) and read back by the agent, and both
sides build their tables from it. ``from_dict`` validates each field with one clear line, because a
manifest is input to a device. ``cost`` counts what the frontend adds on a device (operations per
inference by stage, SRAM buffers, flash tables) so selection charges it to the variant.

The defaults are MLPerf Tiny's keyword-spotting shape: 16 kHz, a 40 ms window (640 samples) every
20 ms (320 samples), a periodic Hann window zero-padded to a 1024-point FFT, the magnitude
spectrum, 40 triangular HTK mel bands from 20 to 4,000 Hz (unnormalised, peak 1), ``ln(mel +
1e-6)``, and the first 10 coefficients of an orthonormal DCT-II: 1 s of audio -> 49 x 10.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy only where tables are built: the agent's base install has none
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "KINDS",
    "WINDOWS",
    "FrontendCost",
    "FrontendError",
    "FrontendSpec",
    "hz_to_mel",
    "manifest_cost",
    "mel_to_hz",
    "mel_weights",
]

KINDS = ("mfcc",)
WINDOWS = ("hann",)

#: Cycles one transcendental costs on a Cortex-M class core (stated, not measured): an integer
#: square root by CMSIS-DSP's ``arm_sqrt_q15`` (normalise + Newton steps) and a fixed-point
#: natural log (normalise + table + interpolation, as ``arm_vlog_q31``).
SQRT_CYCLES = 24
LOG_CYCLES = 30


class FrontendError(ValueError):
    """A frontend spec (from a manifest or an option) is invalid; the message is one line."""


@dataclass(frozen=True)
class FrontendCost:
    """What one inference's frontend costs on a device.

    ``macs`` are multiply-accumulates by stage (``window``, ``fft``, ``magnitude``, ``mel``,
    ``dct``); ``ops`` counts the square roots and logs that are not MACs. ``ram_bytes`` are the
    working buffers of the fixed-point frontend (the 1 s int16 input, one frame's FFT, the mel and
    log vectors, the int16 features), ``flash_bytes`` its constant tables (window, twiddles, mel
    weights with their start/length index, DCT matrix, log table).
    """

    frames: int
    macs: Mapping[str, int]
    ops: Mapping[str, int]
    ram_bytes: int
    flash_bytes: int
    ram_detail: Mapping[str, int]
    flash_detail: Mapping[str, int]

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def cycles(self, cycles_per_mac: float) -> float:
        """Cycles on an MCU: MACs at the device's rate plus the stated cost of each sqrt/log."""
        return (
            self.total_macs * cycles_per_mac
            + self.ops.get("sqrt", 0) * SQRT_CYCLES
            + self.ops.get("log", 0) * LOG_CYCLES
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "macs": dict(self.macs),
            "ops": dict(self.ops),
            "total_macs": self.total_macs,
            "ram_bytes": self.ram_bytes,
            "flash_bytes": self.flash_bytes,
            "ram_detail": dict(self.ram_detail),
            "flash_detail": dict(self.flash_detail),
        }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class FrontendSpec:
    """An MFCC frontend; every field that changes a feature value is here (see module doc)."""

    kind: str = "mfcc"
    sample_rate: int = 16000
    window: int = 640  # samples per frame (40 ms)
    stride: int = 320  # samples between frame starts (20 ms)
    fft_size: int = 1024  # power of two >= window; the frame is zero-padded (as CMSIS/TF do)
    window_fn: str = "hann"  # periodic Hann (scipy get_window(..., fftbins=True))
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 4000.0
    mel_scale: str = "htk"  # 2595 log10(1 + f/700); triangles of peak 1 (no area normalisation)
    spectrum: str = "magnitude"  # |FFT| (as CMSIS arm_mfcc and TF mfccs), not power
    log_floor: float = 1e-6  # ln(mel + floor)
    n_coeffs: int = 10  # first coefficients of the orthonormal DCT-II over the log-mel bands

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ------------------------------------------------------------------------

    def _validate(self) -> None:
        if self.kind not in KINDS:
            raise FrontendError(f"frontend kind {self.kind!r} unknown (known: {', '.join(KINDS)})")
        for name in ("sample_rate", "window", "stride", "fft_size", "n_mels", "n_coeffs"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise FrontendError(f"frontend {name} must be a positive integer, got {v!r}")
        if self.fft_size & (self.fft_size - 1) or self.fft_size < 16:
            raise FrontendError(
                f"frontend fft_size must be a power of two >= 16 (fixed-point FFT), "
                f"got {self.fft_size}"
            )
        if self.fft_size > 4096:
            raise FrontendError(f"frontend fft_size {self.fft_size} > 4096 (CMSIS-DSP's limit)")
        if self.window > self.fft_size:
            raise FrontendError(
                f"frontend window {self.window} is longer than fft_size {self.fft_size}"
            )
        if self.window_fn not in WINDOWS:
            raise FrontendError(
                f"frontend window_fn {self.window_fn!r} unknown (known: {', '.join(WINDOWS)})"
            )
        if self.mel_scale != "htk":
            raise FrontendError(f"frontend mel_scale {self.mel_scale!r} unknown (known: htk)")
        if self.spectrum != "magnitude":
            raise FrontendError(f"frontend spectrum {self.spectrum!r} unknown (known: magnitude)")
        for name in ("fmin", "fmax", "log_floor"):
            if not _is_num(getattr(self, name)):
                raise FrontendError(
                    f"frontend {name} must be a finite number, got {getattr(self, name)!r}"
                )
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise FrontendError(
                f"frontend needs 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} "
                f"fmax={self.fmax} sample_rate={self.sample_rate}"
            )
        if not 0 < self.log_floor < 1:
            raise FrontendError(f"frontend log_floor must be in (0, 1), got {self.log_floor}")
        if self.n_coeffs > self.n_mels:
            raise FrontendError(
                f"frontend n_coeffs {self.n_coeffs} > n_mels {self.n_mels} (DCT of the mel bands)"
            )
        if self.n_mels > self.fft_size // 2:
            raise FrontendError(
                f"frontend n_mels {self.n_mels} > fft_size/2 {self.fft_size // 2} bins"
            )

    @classmethod
    def for_rate(cls, sample_rate: int) -> FrontendSpec:
        """MLPerf Tiny's timing at another sample rate: 40 ms windows every 20 ms, the FFT the
        next power of two, the top band at 4 kHz or Nyquist, whichever is lower."""
        if not _is_int(sample_rate) or sample_rate < 1000:
            raise FrontendError(
                f"frontend sample_rate must be an integer >= 1000, got {sample_rate!r}"
            )
        if sample_rate == 16000:
            return cls()
        win = round(0.04 * sample_rate)
        return cls(
            sample_rate=sample_rate,
            window=win,
            stride=round(0.02 * sample_rate),
            fft_size=max(16, 1 << (win - 1).bit_length()),
            fmax=min(4000.0, sample_rate / 2),
        )

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest form (every field, JSON types)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> FrontendSpec:
        """A spec from a manifest's ``frontend``; unknown or missing fields are one-line errors
        (a device must not silently compute other features than the model was trained on)."""
        if not isinstance(data, Mapping):
            raise FrontendError(f"frontend must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FrontendError(f"frontend has unknown field(s): {', '.join(map(str, unknown))}")
        missing = sorted(known - set(data))
        if missing:
            raise FrontendError(f"frontend misses field(s): {', '.join(missing)}")
        values = dict(data)
        for name in ("fmin", "fmax", "log_floor"):
            if _is_num(values[name]):
                values[name] = float(values[name])
        return cls(**values)

    # -- shape and cost ----------------------------------------------------------------------

    def frames(self, num_samples: int) -> int:
        """Frames in ``num_samples`` (no padding: only whole windows, like ``center=False``)."""
        if not _is_int(num_samples) or num_samples < self.window:
            raise FrontendError(
                f"the frontend needs at least {self.window} samples (one window), "
                f"got {num_samples!r}"
            )
        return 1 + (num_samples - self.window) // self.stride

    def output_shape(self, num_samples: int) -> tuple[int, int]:
        """``(frames, coeffs)`` for one clip: 16,000 samples -> (49, 10) by default."""
        return self.frames(num_samples), self.n_coeffs

    @property
    def bins(self) -> int:
        return self.fft_size // 2 + 1

    def mel_nonzero(self) -> int:
        """How many mel weights are non-zero (a device stores and multiplies only those)."""
        return int((mel_weights(self) > 0).sum())

    def cost(self, num_samples: int) -> FrontendCost:
        """Arithmetic, SRAM and flash of the frontend per inference of ``num_samples``.

        Counted as a Cortex-M runs it with CMSIS-DSP (per frame): window multiply; a real FFT
        of ``fft_size`` points as a complex FFT of half the size (4 real MACs per radix-2
        butterfly) plus the split step (4 MACs per bin); the magnitude (2 MACs + 1 sqrt per
        bin); only the non-zero mel weights; one log per band; the DCT rows kept.
        """
        f = self.frames(num_samples)
        half = self.fft_size // 2
        butterflies = (half // 2) * int(math.log2(half))
        macs = {
            "window": f * self.window,
            "fft": f * (butterflies * 4 + half * 4),
            "magnitude": f * self.bins * 2,
            "mel": f * self.mel_nonzero(),
            "dct": f * self.n_mels * self.n_coeffs,
        }
        ops = {"sqrt": f * self.bins, "log": f * self.n_mels}
        ram = {
            "input_int16": 2 * num_samples,
            "fft_buffer_q15": 2 * self.fft_size * 2,  # frame in, complex spectrum out (q15)
            "magnitude_q15": 2 * self.bins,
            "mel_log_q31": 4 * self.n_mels,
            "features_int16": 2 * f * self.n_coeffs,
        }
        flash = {
            "window_q15": 2 * self.window,
            "twiddles_q15": 2 * 2 * half + 2 * 2 * half,  # complex FFT + real split tables
            "mel_weights_q15": 2 * self.mel_nonzero() + 2 * 2 * self.n_mels,  # + start, length
            "dct_q15": 2 * self.n_coeffs * self.n_mels,
            "log_table_q31": 4 * 257,
        }
        return FrontendCost(
            frames=f,
            macs=macs,
            ops=ops,
            ram_bytes=sum(ram.values()),
            flash_bytes=sum(flash.values()),
            ram_detail=ram,
            flash_detail=flash,
        )

    def describe(self) -> str:
        """One line with every parameter, for logs and reports."""
        return (
            f"{self.kind}: {self.sample_rate} Hz, window {self.window} ({self.window_fn}), "
            f"stride {self.stride}, fft {self.fft_size} ({self.spectrum}), {self.n_mels} "
            f"{self.mel_scale} mel bands {self.fmin:g}-{self.fmax:g} Hz, "
            f"ln(x + {self.log_floor:g}), {self.n_coeffs} DCT-II (ortho) coefficients"
        )


# -- the mel scale (here, not in .tables, because cost() counts the non-zero weights) ---------


def hz_to_mel(f: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """HTK mel scale: ``2595 log10(1 + f/700)``."""
    import numpy as np

    return np.asarray(2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0))


def mel_to_hz(m: npt.ArrayLike) -> npt.NDArray[np.float64]:
    import numpy as np

    return np.asarray(700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0))


def mel_weights(spec: FrontendSpec) -> npt.NDArray[np.float64]:
    """``(n_mels, fft_size/2 + 1)`` triangles on the HTK mel scale, peak 1, no normalisation.

    Band ``i`` rises from mel point ``i`` to ``i+1`` and falls to ``i+2``; the ``n_mels + 2``
    points are equally spaced in mel between ``fmin`` and ``fmax``. (Uncached: use
    :func:`edgefleet.frontend.tables.mel_filterbank`.)
    """
    import numpy as np

    freqs = np.linspace(0.0, spec.sample_rate / 2.0, spec.bins)
    points = mel_to_hz(np.linspace(hz_to_mel(spec.fmin), hz_to_mel(spec.fmax), spec.n_mels + 2))
    widths = np.diff(points)
    ramps = points[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    out: npt.NDArray[np.float64] = np.maximum(0.0, np.minimum(lower, upper))
    return out


def manifest_cost(manifest: Mapping[str, Any]) -> FrontendCost | None:
    """The frontend's cost for one inference of a variant, from its manifest (``None``: the
    variant has no frontend). Selection charges it to the device; a malformed ``frontend`` or
    ``raw`` raises :class:`FrontendError`."""
    spec = manifest.get("input")
    if not isinstance(spec, Mapping) or "frontend" not in spec:
        return None
    raw = spec.get("raw")
    shape = raw.get("shape") if isinstance(raw, Mapping) else None
    if not isinstance(shape, list) or not shape:
        raise FrontendError("a manifest with a frontend needs input.raw.shape [1, samples]")
    return FrontendSpec.from_dict(spec["frontend"]).cost(shape[-1])

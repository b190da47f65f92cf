"""The constant tables of an MFCC frontend (window, mel filterbank, DCT), built from its spec.

One place for both the float and the fixed-point frontend, so they differ only in arithmetic,
never in which filter or coefficient they use. Written in numpy from the definitions (no
librosa/scipy on a device); the tests check them against librosa and scipy. Cached per spec:
a device builds them once per loaded model.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from edgefleet.frontend.spec import FrontendSpec, hz_to_mel, mel_to_hz, mel_weights

__all__ = [
    "dct_matrix",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "transposed",
    "window",
]

F64 = npt.NDArray[np.float64]


@lru_cache(maxsize=16)
def window(spec: FrontendSpec) -> F64:
    """Periodic Hann of ``spec.window`` samples (the DFT-even form STFTs use)."""
    n = np.arange(spec.window, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / spec.window)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=16)
def mel_filterbank(spec: FrontendSpec) -> F64:
    """``(n_mels, fft_size/2 + 1)`` triangles on the HTK mel scale, peak 1, no normalisation.

    Band ``i`` rises from mel point ``i`` to ``i+1`` and falls to ``i+2``; the ``n_mels + 2``
    points are equally spaced in mel between ``fmin`` and ``fmax``.
    """
    fb = mel_weights(spec)
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=16)
def dct_matrix(spec: FrontendSpec) -> F64:
    """The first ``n_coeffs`` rows of the orthonormal DCT-II of size ``n_mels``."""
    n = spec.n_mels
    k = np.arange(spec.n_coeffs, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    d: F64 = np.cos(np.pi * k * (2.0 * i + 1.0) / (2.0 * n)) * np.sqrt(2.0 / n)
    d[0] *= np.sqrt(0.5)
    d.setflags(write=False)
    return d


@lru_cache(maxsize=32)
def transposed(spec: FrontendSpec, table: str) -> F64:
    """A C-contiguous transpose of ``mel`` or ``dct``, for right-multiplying a batch: BLAS on a
    strided transposed view is ~10x slower at batch 1 (what a device serves)."""
    source = {"mel": mel_filterbank, "dct": dct_matrix}[table](spec)
    out = np.ascontiguousarray(source.T)
    out.setflags(write=False)
    return out

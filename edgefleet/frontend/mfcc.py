"""The float MFCC frontend: raw audio batches -> the features the network was trained on.

Vectorised over the batch and the frames (one strided view, one ``rfft``, two matrix products),
so the coordinator can turn a whole dataset into features in seconds and a device's float
runtimes (torch, onnxruntime) compute exactly what training saw. Every parameter is in
:class:`~edgefleet.frontend.spec.FrontendSpec`; this module only does the arithmetic, in float64
internally (the features are float32), so it is the reference the fixed-point version is held to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.frontend.spec import FrontendError, FrontendSpec
from edgefleet.frontend.tables import transposed, window

__all__ = ["as_batch", "frame", "mfcc"]

F32 = npt.NDArray[np.float32]


def as_batch(audio: npt.NDArray[Any], spec: FrontendSpec) -> npt.NDArray[Any]:
    """``(N, samples)`` from ``(N, samples)``, ``(N, 1, samples)`` or ``(N, 1, 1, samples)``.

    Raises :class:`FrontendError` (one line) for any other shape or too short a clip.
    """
    a = np.asarray(audio)
    if a.ndim < 2 or any(d != 1 for d in a.shape[1:-1]):
        raise FrontendError(
            f"the frontend takes raw audio shaped [N, samples] (or [N, 1, samples]), "
            f"got {list(a.shape)}"
        )
    out = a.reshape(a.shape[0], a.shape[-1])
    spec.frames(int(out.shape[1]))  # raises when shorter than one window
    return out


def frame(batch: npt.NDArray[Any], spec: FrontendSpec) -> npt.NDArray[Any]:
    """``(N, frames, window)`` view of ``(N, samples)`` (no copy)."""
    frames = spec.frames(int(batch.shape[1]))
    view = np.lib.stride_tricks.sliding_window_view(batch, spec.window, axis=1)
    return view[:, : (frames - 1) * spec.stride + 1 : spec.stride]


def mfcc(audio: npt.NDArray[Any], spec: FrontendSpec | None = None) -> F32:
    """``(N, 1, frames, n_coeffs)`` float32 MFCC of float audio in [-1, 1) (or int16 samples,
    which are divided by 32768 first)."""
    spec = spec or FrontendSpec()
    batch = as_batch(audio, spec)
    if batch.dtype == np.int16:
        x = batch.astype(np.float64) / 32768.0
    elif np.issubdtype(batch.dtype, np.floating):
        x = batch.astype(np.float64, copy=False)
    else:
        raise FrontendError(f"the frontend takes float or int16 audio, got {batch.dtype}")
    frames = frame(x, spec) * window(spec)
    spectrum = np.abs(np.fft.rfft(frames, n=spec.fft_size, axis=-1))
    mel = spectrum @ transposed(spec, "mel")
    logmel = np.log(mel + spec.log_floor)
    out = (logmel @ transposed(spec, "dct")).astype(np.float32)
    return out[:, None, :, :]

"""Compressed model updates: 8/4-bit quantization and top-k sparsification with error feedback.

A device's uplink is the expensive part of a federated round on a real fleet (cellular,
LoRa-backed gateways, metered links), and an fp32 update is as large as the model. A device
therefore sends the *delta* from the model it received, encoded by one of:

* ``q8`` / ``q4``: per-tensor affine quantization to 8 or 4 bits (two 4-bit codes per byte),
  plus the tensor's ``(min, scale)`` as two float32 -- 4x / 8x smaller.
* ``topk:F``: only the fraction ``F`` of entries largest in magnitude, as int32 flat indices and
  float32 values (for ``F=0.1``, 8 bytes per kept entry: 5x smaller than fp32).

Every lossy codec runs with **error feedback** (Seide et al. 2014; Stich et al., "Sparsified
SGD with memory", NeurIPS 2018): what the encoding dropped this round is added to the next
round's delta before encoding, so nothing is lost for good, only late. The residual stays on
the device (the ClientApp keeps it in its Flower context state between rounds).

The encoded update is a flat ``{key: array}`` dict, so it travels in an ordinary Flower
ArrayRecord; :func:`decode` needs only that dict and the codec name. Pure numpy: the
ClientApp imports this in every per-message process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CODECS", "Codec", "CodecError", "decode", "encode", "parse_codec", "payload_bytes"]

Arrays = dict[str, npt.NDArray[np.float32]]
#: the codec names ``--update-codec`` accepts (``topk:F`` with 0 < F <= 1)
CODECS = ("none", "q8", "q4", "topk:F")
_SEP = "::"  # an encoded tensor's parts: "<name>::q", "<name>::mm", "<name>::idx", ...


class CodecError(ValueError):
    """A codec name that is not one of :data:`CODECS`, or an encoded update that is torn."""


@dataclass(frozen=True)
class Codec:
    """A parsed codec: ``kind`` in none/q8/q4/topk, ``fraction`` for topk."""

    kind: str
    fraction: float = 1.0

    @property
    def lossy(self) -> bool:
        """Whether the codec drops information (and so keeps an error-feedback residual)."""
        return self.kind != "none"

    def __str__(self) -> str:
        return f"topk:{self.fraction:g}" if self.kind == "topk" else self.kind


def parse_codec(text: str) -> Codec:
    """``none``, ``q8``, ``q4`` or ``topk:F``; anything else is a :class:`CodecError`."""
    text = (text or "none").strip().lower()
    if text in ("none", "q8", "q4"):
        return Codec(text)
    if text.startswith("topk:"):
        try:
            fraction = float(text.split(":", 1)[1])
        except ValueError:
            fraction = -1.0
        if 0.0 < fraction <= 1.0:
            return Codec("topk", fraction)
        raise CodecError(f"topk needs a fraction in (0, 1], e.g. topk:0.1; got {text!r}")
    raise CodecError(f"update codec must be one of {', '.join(CODECS)}; got {text!r}")


def _quantize(x: npt.NDArray[np.float32], bits: int) -> dict[str, npt.NDArray[Any]]:
    levels = (1 << bits) - 1
    lo = float(x.min()) if x.size else 0.0
    hi = float(x.max()) if x.size else 0.0
    scale = (hi - lo) / levels if hi > lo else 1.0
    q = np.clip(np.rint((x.ravel() - lo) / scale), 0, levels).astype(np.uint8)
    if bits == 4:
        if q.size % 2:
            q = np.append(q, np.uint8(0))
        q = (q[0::2] | (q[1::2] << 4)).astype(np.uint8)
    return {"q": q, "mm": np.array([lo, scale], np.float32)}


def _dequantize(
    parts: Mapping[str, npt.NDArray[Any]], bits: int, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    q = np.asarray(parts["q"], np.uint8)
    size = int(np.prod(shape))
    if bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=1).ravel()[:size]
    lo, scale = (float(v) for v in np.asarray(parts["mm"], np.float32))
    if q.size != size:
        raise CodecError(f"{q.size} codes for a tensor of {size} entries")
    return (q.astype(np.float32) * np.float32(scale) + np.float32(lo)).reshape(shape)


def _topk(x: npt.NDArray[np.float32], fraction: float) -> dict[str, npt.NDArray[Any]]:
    flat = x.ravel()
    k = max(1, round(flat.size * fraction)) if flat.size else 0
    idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :] if k else np.array([])
    idx = np.sort(idx).astype(np.int32)
    return {"idx": idx, "val": flat[idx].astype(np.float32)}


def encode(
    delta: Mapping[str, npt.NDArray[np.float32]],
    codec: Codec,
    residual: Mapping[str, npt.NDArray[np.float32]] | None = None,
) -> tuple[dict[str, npt.NDArray[Any]], Arrays]:
    """``(encoded, new residual)`` for ``delta`` plus the carried-over ``residual``.

    The new residual is what the encoding lost (``delta + residual - decode(encoded)``); it is
    empty for ``none``. A residual whose shapes do not match (the device was given another
    width) is dropped rather than misapplied.
    """
    if not codec.lossy:
        return {k: np.asarray(v, np.float32) for k, v in delta.items()}, {}
    encoded: dict[str, npt.NDArray[Any]] = {}
    new_residual: Arrays = {}
    for name, d in delta.items():
        x = np.asarray(d, np.float32)
        carry = (residual or {}).get(name)
        if carry is not None and carry.shape == x.shape:
            x = x + carry
        if codec.kind == "topk":
            parts = _topk(x, codec.fraction)
        else:
            parts = _quantize(x, 8 if codec.kind == "q8" else 4)
        parts["shape"] = np.array(x.shape, np.int32)
        for part, arr in parts.items():
            encoded[f"{name}{_SEP}{part}"] = arr
        new_residual[name] = x - _decode_one(parts, codec)
    return encoded, new_residual


def _decode_one(parts: Mapping[str, npt.NDArray[Any]], codec: Codec) -> npt.NDArray[np.float32]:
    shape = tuple(int(s) for s in np.asarray(parts["shape"]).ravel())
    if codec.kind == "topk":
        out = np.zeros(int(np.prod(shape)), np.float32)
        idx = np.asarray(parts["idx"], np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= out.size):
            raise CodecError(f"top-k index out of range for a tensor of {out.size} entries")
        out[idx] = np.asarray(parts["val"], np.float32)
        return out.reshape(shape)
    return _dequantize(parts, 8 if codec.kind == "q8" else 4, shape)


def decode(encoded: Mapping[str, npt.NDArray[Any]], codec: Codec) -> Arrays:
    """The delta an :func:`encode` output stands for."""
    if not codec.lossy:
        return {k: np.asarray(v, np.float32) for k, v in encoded.items()}
    grouped: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for key, arr in encoded.items():
        name, sep, part = key.rpartition(_SEP)
        if not sep:
            raise CodecError(f"{key!r} is not a {codec} encoded tensor part")
        grouped.setdefault(name, {})[part] = arr
    need = {"idx", "val", "shape"} if codec.kind == "topk" else {"q", "mm", "shape"}
    out: Arrays = {}
    for name, parts in grouped.items():
        if not need <= set(parts):
            raise CodecError(f"{name}: missing {sorted(need - set(parts))} for {codec}")
        out[name] = _decode_one(parts, codec)
    return out


def payload_bytes(arrays: Mapping[str, npt.NDArray[Any]]) -> int:
    """The raw bytes of the arrays (what an update weighs before message framing)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))

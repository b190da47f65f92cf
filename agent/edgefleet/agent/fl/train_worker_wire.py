"""What both ends of the training worker's socket share: arrays on the wire.

Why a module of its own: the per-message ClientApp (:mod:`.clientapp`, a fresh process every
round) and the long-lived worker (:mod:`.train_worker`) must encode arrays the same way, and the
ClientApp must stay light -- numpy and the generated protos only, never torch.

Arrays travel as ``NamedArray`` (name, dtype, shape, raw little-endian bytes in C order).
:func:`decode_arrays` checks everything a peer could get wrong -- dtype, rank, byte count,
duplicate names -- before numpy sees it, and raises :class:`WireError` with one line naming the
array, which the worker answers as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.v1 import trainworker_pb2 as pb

__all__ = [
    "DTYPES",
    "MAX_DIMS",
    "MAX_MESSAGE_BYTES",
    "SOCKET_PATH_MAX",
    "WireError",
    "decode_arrays",
    "encode_arrays",
]

#: what a model's state dict holds (float tensors; BatchNorm's int64 ``num_batches_tracked``)
DTYPES: Mapping[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
#: no layer has more dimensions than this; checked before a shape is multiplied out
MAX_DIMS = 8
#: a small device's model both ways (ResNet-8 fp32 is ~310 KB; a KWS DS-CNN ~90 KB)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: ``sun_path`` is 108 bytes on Linux, with its terminating NUL
SOCKET_PATH_MAX = 107


class WireError(ValueError):
    """A request the worker cannot use; the message is one line naming what is wrong."""


def encode_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> list[pb.NamedArray]:
    """``arrays`` as NamedArray messages, in their order (float64 goes as float32)."""
    out = []
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind == "f":
            a = a.astype("<f4", copy=False)
        elif a.dtype.kind in "iu":
            a = a.astype("<i8", copy=False)
        else:
            raise WireError(f"array {name!r} has dtype {a.dtype}; only floats and ints travel")
        a = np.asarray(a, order="C")  # (ascontiguousarray would make a scalar 1-D)
        out.append(pb.NamedArray(name=name, dtype=str(a.dtype.name), shape=a.shape,
                                 data=a.tobytes()))  # fmt: skip
    return out


def decode_arrays(items: Iterable[pb.NamedArray]) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a request, each checked; raises :class:`WireError` on the first bad one."""
    out: dict[str, npt.NDArray[Any]] = {}
    for item in items:
        if not item.name:
            raise WireError("an array has no name")
        if item.name in out:
            raise WireError(f"array {item.name!r} appears twice")
        dtype = DTYPES.get(item.dtype)
        if dtype is None:
            raise WireError(
                f"array {item.name!r} has dtype {item.dtype!r} (use {' or '.join(DTYPES)})"
            )
        shape = list(item.shape)
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise WireError(f"array {item.name!r} has shape {shape[: MAX_DIMS + 1]}")
        want = math.prod(shape) * dtype.itemsize
        if len(item.data) != want:
            raise WireError(
                f"array {item.name!r} is {len(item.data)} bytes; shape {shape} of "
                f"{item.dtype} needs {want}"
            )
        out[item.name] = np.frombuffer(item.data, dtype=dtype).reshape(shape).copy()
    return out

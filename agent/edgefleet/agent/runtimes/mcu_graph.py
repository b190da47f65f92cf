"""The ``mcu-sim`` graph format on the device side: ``mcu.json`` + ``mcu.safetensors``, checked.

Why its own module: parsing and validating the int8 graph (format, version, every op and
tensor reference, per-channel parameter dtypes and shapes) is one concern, read by the
integer kernels (:mod:`.mcu_kernels`), the arena plan and cycle model (:mod:`.mcu_sim`) and the
last-layer fine-tuning (:mod:`edgefleet.agent.finetune_mcu`). Everything is checked at load,
so inference cannot fail half-way. Only numpy is needed; ``mcu.safetensors`` is parsed here
(a JSON header and raw little-endian bytes) so the safetensors package is not a dependency of
an MCU agent.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.runtimes.base import BundleFormatError
from edgefleet.mcu_format import LAYOUT, MCU_FORMAT, MCU_FORMAT_VERSION, SUPPORTED_OPS

__all__ = [
    "DENSE_OPS",
    "McuGraph",
    "TensorInfo",
    "check_graph",
    "parse_graph",
    "read_safetensors",
]

_ST_DTYPES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64}
#: ops with int8 weights, an int32 bias and per-output-channel requantisation
DENSE_OPS = ("conv2d", "depthwise_conv2d", "fully_connected")
_SAME_QPARAMS = ("max_pool2d", "average_pool2d", "clamp", "pad")


def read_safetensors(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """Parse safetensors bytes (u64 header length, JSON header, raw data) into numpy arrays."""
    if len(data) < 8:
        raise BundleFormatError("mcu.safetensors is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise BundleFormatError("mcu.safetensors header overruns the file")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"mcu.safetensors header is not JSON: {exc}") from exc
    body = memoryview(data)[8 + size :]
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise BundleFormatError(f"tensor {name!r}: dtype {meta.get('dtype')!r} not integer")
        start, end = (int(v) for v in meta["data_offsets"])
        shape = [int(d) for d in meta["shape"]]
        count = math.prod(shape)
        if not 0 <= start <= end <= len(body) or end - start != count * np.dtype(dtype).itemsize:
            raise BundleFormatError(f"tensor {name!r}: bad data offsets")
        tensors[name] = np.frombuffer(body[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        tensors[name] = tensors[name].astype(dtype, copy=False).reshape(shape)
    return tensors


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class McuGraph:
    """A validated ``mcu.json`` with its integer tensors."""

    input: str
    output: str
    tensors: Mapping[str, TensorInfo]
    ops: Sequence[Mapping[str, Any]]
    params: Mapping[str, np.ndarray[Any, Any]]

    def weight_bytes(self, op: Mapping[str, Any]) -> int:
        """Flash bytes one op streams: its weights, bias, multipliers and shifts."""
        keys = ("weight", "bias", "multiplier", "shift")
        return sum(
            int(self.params[op[k]].nbytes)
            for k in keys
            if isinstance(op.get(k), str) and op[k] in self.params
        )


def parse_graph(graph_bytes: bytes, tensor_bytes: bytes) -> McuGraph:
    """Check format, version, ops and every reference, so inference cannot fail half-way."""
    try:
        graph = json.loads(graph_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"mcu.json is not JSON: {exc}") from exc
    if not isinstance(graph, dict) or graph.get("format") != MCU_FORMAT:
        raise BundleFormatError(f"mcu.json is not an {MCU_FORMAT} graph")
    if graph.get("version") != MCU_FORMAT_VERSION:
        raise BundleFormatError(
            f"mcu graph version {graph.get('version')!r} is not supported "
            f"(this runtime reads {MCU_FORMAT_VERSION})"
        )
    if graph.get("layout", LAYOUT) != LAYOUT:
        raise BundleFormatError(f"mcu graph layout {graph.get('layout')!r} is not {LAYOUT}")
    params = read_safetensors(tensor_bytes)
    try:
        tensors = {
            name: TensorInfo(
                tuple(int(d) for d in t["shape"]), float(t["scale"]), int(t["zero_point"])
            )
            for name, t in graph["tensors"].items()
            if t.get("dtype", "int8") == "int8"
        }
        ops = list(graph["ops"])
        first, last = str(graph["input"]), str(graph["output"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleFormatError(f"mcu.json is malformed: {exc}") from exc
    if len(tensors) != len(graph["tensors"]):
        raise BundleFormatError("mcu graph: every activation tensor must be int8")
    return check_graph(first, last, tensors, ops, params)


def check_graph(
    first: str,
    last: str,
    tensors: Mapping[str, TensorInfo],
    ops: Sequence[Mapping[str, Any]],
    params: Mapping[str, np.ndarray[Any, Any]],
) -> McuGraph:
    """Every op known, every tensor defined before it is read, parameters typed and shaped."""
    defined = {first}
    for index, op in enumerate(ops):
        kind = op.get("op")
        if kind not in SUPPORTED_OPS:
            raise BundleFormatError(f"mcu graph op {index}: unsupported op {kind!r}")
        for name in [*op.get("inputs", []), op.get("output")]:
            if name not in tensors:
                raise BundleFormatError(f"mcu graph op {index} ({kind}): unknown tensor {name!r}")
        missing = [i for i in op["inputs"] if i not in defined]
        if missing:
            raise BundleFormatError(
                f"mcu graph op {index} ({kind}) reads {missing} before it is written"
            )
        defined.add(op["output"])
        for key in ("weight", "bias", "multiplier", "shift"):
            ref = op.get(key)
            if kind in DENSE_OPS and (not isinstance(ref, str) or ref not in params):
                raise BundleFormatError(f"mcu graph op {index} ({kind}): missing tensor {key}")
        if kind in DENSE_OPS:
            _check_dense(index, op, params, tensors)
        if kind in _SAME_QPARAMS:
            a, b = tensors[op["inputs"][0]], tensors[op["output"]]
            if (a.scale, a.zero_point) != (b.scale, b.zero_point):
                raise BundleFormatError(f"mcu graph op {index} ({kind}) must keep its quantisation")
        if kind == "concat":
            out = tensors[op["output"]]
            if any(
                (tensors[i].scale, tensors[i].zero_point) != (out.scale, out.zero_point)
                for i in op["inputs"]
            ):
                raise BundleFormatError(
                    f"mcu graph op {index} (concat): inputs must have the output's quantisation"
                )
        if kind == "softmax":
            out = tensors[op["output"]]
            if out.zero_point != -128 or not math.isclose(out.scale, 1 / 256):
                raise BundleFormatError("mcu softmax output must be scale 1/256, zero point -128")
    if last not in defined or first not in tensors:
        raise BundleFormatError("mcu graph: input/output tensors are not connected")
    return McuGraph(first, last, tensors, ops, params)


def _check_dense(
    index: int,
    op: Mapping[str, Any],
    params: Mapping[str, np.ndarray[Any, Any]],
    tensors: Mapping[str, TensorInfo],
) -> None:
    w = params[op["weight"]]
    want = {"weight": np.int8, "bias": np.int32, "multiplier": np.int32, "shift": np.int8}
    for key, dtype in want.items():
        if params[op[key]].dtype != dtype:
            raise BundleFormatError(
                f"mcu graph op {index}: {key} is {params[op[key]].dtype}, expected "
                f"{np.dtype(dtype)}"
            )
    channels = w.shape[0]
    for key in ("bias", "multiplier", "shift"):
        if params[op[key]].shape != (channels,):
            raise BundleFormatError(f"mcu graph op {index}: {key} is not per output channel")
    x, y = tensors[op["inputs"][0]], tensors[op["output"]]
    if op["op"] == "fully_connected":
        if w.ndim != 2 or w.shape[1] != x.numel or y.numel != channels:
            raise BundleFormatError(f"mcu graph op {index}: fully_connected shapes disagree")
    elif w.ndim != 4 or y.shape[1] != channels or x.shape[1] != w.shape[1] * int(op["groups"]):
        raise BundleFormatError(f"mcu graph op {index}: {op['op']} shapes disagree")

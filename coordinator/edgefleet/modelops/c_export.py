"""A variant's full-integer ``.tflite`` as a C source and header a firmware project compiles.

Why C and not only the ``.tflite``: a microcontroller has no file system; TensorFlow Lite Micro
reads the model in place from flash, so firmware links it as a ``const`` byte array (what
``xxd -i`` makes by hand). This module writes that array plus everything the application code
would otherwise have to dig out of the flatbuffer, under names derived from the model:

* ``<name>_model[]`` 16-byte aligned (TFLM reads tensors in place and its kernels expect aligned
  constant buffers) and ``<name>_model_len``;
* ``<NAME>_TENSOR_ARENA_SIZE``: the smallest ``tensor_arena`` TFLM's allocator accepts for the
  model, found by TFLM itself (a binary search over ``arena_size``). It is measured with the
  64-bit host build, whose bookkeeping structs are larger than a 32-bit Cortex-M's, so on a
  device it is a safe upper bound;
* input/output scale and zero point (``real = scale * (q - zero_point)``), shapes and element
  counts, the layout of a 4-D input (NHWC);
* the op list, as a comment and as the ``MicroMutableOpResolver`` registration the firmware
  needs (``<NAME>_OP_COUNT`` is its template argument), so only the kernels used are linked.

The ``.tflite`` is read with the TFLite schema's generated object API (from ``tflite-micro``),
and TFLM is imported only to measure the arena. ``edgefleet models export --format c`` is the
user-facing way in.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["CExport", "CExportError", "TfliteSummary", "c_identifier", "export_c", "summarize"]

_ALIGN = 16
_BYTES_PER_LINE = 12
_MAX_ARENA = (
    64 * 1024 * 1024
)  # more than any MCU's SRAM: a model TFLM cannot prepare in it is refused


class CExportError(ValueError):
    """The ``.tflite`` cannot be described or loaded by TFLM (one line, names the reason)."""


@dataclass(frozen=True)
class TensorSummary:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TfliteSummary:
    """What firmware needs to know about a ``.tflite``: its I/O and the ops it uses."""

    input: TensorSummary
    output: TensorSummary
    ops: tuple[str, ...]  # builtin op names in first-use order, each once
    op_counts: dict[str, int]


@dataclass(frozen=True)
class CExport:
    """The generated files (name -> text) and the numbers written into them."""

    files: dict[str, str]
    name: str
    arena_bytes: int
    summary: TfliteSummary


def c_identifier(text: str) -> str:
    """A C identifier from a model name: lower case, ``[a-z0-9_]``, not starting with a digit."""
    ident = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def _tensor(sg: Any, index: int, tfl: Any) -> TensorSummary:
    t = sg.tensors[index]
    names = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    q = t.quantization
    scales = list(q.scale) if q is not None and q.scale is not None else []
    zeros = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
    if len(scales) != 1 or len(zeros) != 1:
        raise CExportError(
            f"tensor {t.name.decode(errors='replace')!r} is not per-tensor quantised "
            f"({len(scales)} scales): firmware I/O needs one scale and zero point"
        )
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
    return TensorSummary(
        shape, names.get(t.type, str(t.type)).lower(), float(scales[0]), int(zeros[0])
    )


def summarize(model: bytes) -> TfliteSummary:
    """Input/output quantisation and the op list of a single-subgraph ``.tflite``."""
    from tflite_micro.tensorflow.lite.micro.python import (  # type: ignore[import-untyped]
        schema_py_generated as tfl,
    )

    try:
        if len(model) < 8 or model[4:8] != b"TFL3":
            raise CExportError("not a TFLite flatbuffer (no TFL3 identifier)")
        m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(model, 0))
    except (struct.error, IndexError, ValueError, TypeError) as exc:
        raise CExportError(f"cannot parse the .tflite: {exc}") from exc
    if not m.subgraphs or len(m.subgraphs) != 1:
        raise CExportError(f"expected one subgraph, the .tflite has {len(m.subgraphs or [])}")
    sg = m.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise CExportError(
            f"expected one input and one output, the .tflite has {len(sg.inputs)} and "
            f"{len(sg.outputs)}"
        )
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    for op in sg.operators or []:
        code = m.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        counts[name] = counts.get(name, 0) + 1
    return TfliteSummary(
        _tensor(sg, int(sg.inputs[0]), tfl),
        _tensor(sg, int(sg.outputs[0]), tfl),
        tuple(counts),
        counts,
    )


def resolver_method(op: str) -> str:
    """``MicroMutableOpResolver`` method for a builtin op: ``CONV_2D`` -> ``AddConv2D``."""
    parts = op.split("_")
    return "Add" + "".join(p if p[:1].isdigit() else p.capitalize() for p in parts)


@contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """TFLM prints every failed allocation of the search from C; keep them off the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tflm_min_arena(model: bytes) -> int:
    """The smallest ``arena_size`` TFLM's allocator accepts for ``model`` (prepare + one invoke)."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime  # type: ignore[import-untyped]

    def works(size: int) -> bool:
        try:
            it = runtime.Interpreter.from_bytes(model, arena_size=size)
            details = it.get_input_details(0)
            it.set_input(np.zeros([int(d) for d in details["shape"]], details["dtype"]), 0)
            it.invoke()
        except RuntimeError:
            return False
        return True

    with _quiet_c_stderr():
        low, high = 1, max(64 * 1024, 10 * len(model))  # 10x the model: TFLM's default arena
        try:
            if not works(high):
                low, high = high + 1, _MAX_ARENA
                if not works(high):
                    raise CExportError(f"TFLM cannot prepare the model in {_MAX_ARENA} bytes")
        except (struct.error, ValueError, IndexError) as exc:
            raise CExportError(f"TFLM cannot load the .tflite: {exc}") from exc
        while low < high:
            mid = (low + high) // 2
            if works(mid):
                high = mid
            else:
                low = mid + 1
    return low


def _c_float(x: float) -> str:
    text = repr(float(x))
    return f"{text}f" if ("e" in text or "." in text) else f"{text}.0f"


def _array_lines(model: bytes) -> Iterator[str]:
    for i in range(0, len(model), _BYTES_PER_LINE):
        chunk = model[i : i + _BYTES_PER_LINE]
        yield "    " + " ".join(f"0x{b:02x}," for b in chunk)


def export_c(model: bytes, name: str, description: str = "") -> CExport:
    """``<name>_model.h`` and ``<name>_model.c`` for ``model`` (a full-integer ``.tflite``)."""
    ident = c_identifier(name)
    macro = ident.upper()
    summary = summarize(model)
    arena = tflm_min_arena(model)
    arena_aligned = -(-arena // _ALIGN) * _ALIGN
    header_name, source_name = f"{ident}_model.h", f"{ident}_model.c"
    guard = f"{macro}_MODEL_H_"
    inp, out = summary.input, summary.output
    ops_comment = "\n".join(
        f" *   {op:<20} x{summary.op_counts[op]}  ->  resolver.{resolver_method(op)}();"
        for op in summary.ops
    )

    def numel(shape: tuple[int, ...]) -> int:
        n = 1
        for d in shape:
            n *= d
        return n

    layout = "NHWC" if len(inp.shape) == 4 else "as shaped"
    about = f" * {description}\n" if description else ""
    header = f"""/* {header_name}: generated by `edgefleet models export --format c`. Do not edit.
{about} *
 * A full-integer TensorFlow Lite model for TensorFlow Lite Micro, linked as a const array:
 *
 *   #include "{header_name}"
 *   alignas(16) static uint8_t tensor_arena[{macro}_TENSOR_ARENA_SIZE];
 *   static tflite::MicroMutableOpResolver<{macro}_OP_COUNT> resolver;
{chr(10).join(f" *   resolver.{resolver_method(op)}();" for op in summary.ops)}
 *   tflite::MicroInterpreter interpreter(tflite::GetModel({ident}_model), resolver,
 *                                        tensor_arena, {macro}_TENSOR_ARENA_SIZE);
 *   interpreter.AllocateTensors();
 *   // input: int8 q = round(x / {macro}_INPUT_SCALE) + {macro}_INPUT_ZERO_POINT, saturated
 *   // output: real = {macro}_OUTPUT_SCALE * (q - {macro}_OUTPUT_ZERO_POINT)
 *
 * Ops (in order of first use, with how many times the graph uses each):
{ops_comment}
 *
 * {macro}_TENSOR_ARENA_SIZE is the smallest arena TFLM's own allocator accepted for this model
 * (measured with the 64-bit host build of TFLM, whose bookkeeping is larger than a 32-bit
 * MCU's: an upper bound on a device), rounded up to 16 bytes.
 */
#ifndef {guard}
#define {guard}

#ifdef __cplusplus
extern "C" {{
#endif

#define {macro}_MODEL_LEN {len(model)}u
#define {macro}_TENSOR_ARENA_SIZE {arena_aligned}u
#define {macro}_OP_COUNT {len(summary.ops)}

/* Input: {inp.dtype} {list(inp.shape)} ({layout}) */
#define {macro}_INPUT_RANK {len(inp.shape)}
#define {macro}_INPUT_SHAPE {{{", ".join(str(d) for d in inp.shape)}}}
#define {macro}_INPUT_SIZE {numel(inp.shape)}u
#define {macro}_INPUT_SCALE {_c_float(inp.scale)}
#define {macro}_INPUT_ZERO_POINT ({inp.zero_point})

/* Output: {out.dtype} {list(out.shape)} */
#define {macro}_OUTPUT_RANK {len(out.shape)}
#define {macro}_OUTPUT_SHAPE {{{", ".join(str(d) for d in out.shape)}}}
#define {macro}_OUTPUT_SIZE {numel(out.shape)}u
#define {macro}_OUTPUT_SCALE {_c_float(out.scale)}
#define {macro}_OUTPUT_ZERO_POINT ({out.zero_point})

extern const unsigned char {ident}_model[];
extern const unsigned int {ident}_model_len;

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""
    source = f"""/* {source_name}: generated by `edgefleet models export --format c`. Do not edit. */
#include "{header_name}"

#if defined(__cplusplus)
#define {macro}_ALIGNED alignas({_ALIGN})
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define {macro}_ALIGNED _Alignas({_ALIGN})
#else
#define {macro}_ALIGNED __attribute__((aligned({_ALIGN})))
#endif

{macro}_ALIGNED const unsigned char {ident}_model[{macro}_MODEL_LEN] = {{
{chr(10).join(_array_lines(model))}
}};

const unsigned int {ident}_model_len = {macro}_MODEL_LEN;
"""
    return CExport({header_name: header, source_name: source}, ident, arena_aligned, summary)

"""Load a ``.tflite`` in TensorFlow Lite Micro itself and read back the arena TFLM allocated.

Why TFLM's own number: the arena a firmware must reserve is whatever TFLM's allocator plans
(tensor lifetimes, kernel scratch buffers, persistent per-op data, alignment), not our
estimate of it. ``tflite-micro``'s Python interpreter records allocations
(``RecordingMicroAllocator``) but only *prints* them, from C, so this module captures the
process's stdout/stderr file descriptors around ``print_allocations`` and parses the lines.

Loading the model is also the build-time check that TFLM accepts the file (every op has a
kernel, every tensor type is one it runs); a refusal is a :class:`TflmLoadError` with TFLM's
message.

Host caveat, recorded in the manifest: the interpreter is a 64-bit build, so its bookkeeping
structs (``TfLiteEvalTensor``, ``NodeAndRegistration``, pointers in persistent buffers) are
larger than on a 32-bit Cortex-M; the tensor arena part (head) is the same on both.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass

__all__ = ["TflmArena", "TflmLoadError", "tflm_arena"]

#: Arena handed to the interpreter for the measurement: large enough for any model a
#: microcontroller profile could hold; TFLM reports what it actually used.
_MEASURE_ARENA = 16 * 1024 * 1024
_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


class TflmLoadError(ValueError):
    """TensorFlow Lite Micro refused the model (an op or a tensor type it has no kernel for)."""


@dataclass(frozen=True)
class TflmArena:
    """TFLM's ``RecordingMicroAllocator`` totals, in bytes (64-bit host build)."""

    total: int
    head: int
    tail: int

    def to_json(self) -> dict[str, int | str]:
        return {
            "arena_bytes": self.total,
            "arena_head_bytes": self.head,
            "arena_tail_bytes": self.tail,
            "source": "tflite-micro RecordingMicroAllocator (64-bit host build)",
        }


def _captured(fn: object) -> str:
    """Run ``fn()`` with fds 1 and 2 redirected to a file; return what C code printed."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            fn()  # type: ignore[operator]
            libc.fflush(None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        sink.seek(0)
        return sink.read().decode(errors="replace")


def tflm_arena(model: bytes) -> TflmArena:
    """Load ``model`` in TFLM (the build-time acceptance check) and return its arena use."""
    from tflite_micro.python.tflite_micro import runtime  # type: ignore[import-untyped]

    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=_MEASURE_ARENA)
    except (RuntimeError, ValueError, struct.error, IndexError) as exc:
        raise TflmLoadError(f"TFLite Micro refused the model: {exc}") from exc
    found = {k: int(v) for k, v in _LINE.findall(_captured(interpreter.print_allocations))}
    if set(found) != {"total", "head", "tail"}:
        raise TflmLoadError("TFLite Micro printed no arena accounting")
    return TflmArena(found["total"], found["head"], found["tail"])

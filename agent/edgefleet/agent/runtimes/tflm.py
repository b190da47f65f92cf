"""``tflm``: TensorFlow Lite Micro's own interpreter running the bundle's full-integer ``.tflite``.

Why TFLM itself and not only our emulator: TFLM's reference kernels and arena planner are what
an MCU build of the model executes, so its outputs and its arena are the reference every
microcontroller result is judged against (``tflite-micro`` on the package index is that C++
interpreter with Python bindings: 0.7 MB, numpy + flatbuffers).

* **Flash**: the ``.tflite`` bytes (the model array a firmware links) plus the TFLM code its
  op list links (:func:`.tflite_io.mcu_flash`, the build's ``metrics.mcu.flash_bytes``); over
  the profile's flash, ``load`` refuses with both numbers.
* **SRAM**: the arena is TFLM's, found by TFLM: the smallest ``arena_size`` its allocator accepts
  for this model (a binary search between what ``print_allocations`` reports and an arena that
  works), and the interpreter that serves is built with exactly that arena, so the figure is
  proven, not estimated. It is a little above ``print_allocations``' total (temporary buffers
  during ``Prepare``, the allocator's own objects), and it is what a firmware must reserve for
  ``tensor_arena``; both numbers are kept (``arena_bytes``, ``reported_arena_bytes``).
* **Latency** is simulated device time, as for mcu-sim: the per-op cycle model of the
  profile's core over the manifest's op counts (:func:`edgefleet.perf.mcu_latency_ms`, the
  coordinator's own prediction; the MFCC frontend's share is added by the base runtime for a
  request that carried raw audio), so the host's wall time never poses as a microcontroller's.

TFLM prints its allocation report and allocation failures to the C ``stderr``; they are read
by pointing file descriptor 2 at a temporary file for the few milliseconds of a load, under a
lock. A line another thread writes to stderr in that window goes to the same file and is
written back to stderr afterwards, TFLM's own lines excepted.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from tflite_micro.python.tflite_micro import runtime as tflm  # type: ignore[import-untyped]

from edgefleet.agent.runtimes.base import BudgetExceededError, BundleFormatError, MemoryUsage
from edgefleet.agent.runtimes.tflite_io import Int8Interpreter, Int8Io, mcu_flash, tflite_ops
from edgefleet.bundle import Bundle
from edgefleet.frontend.spec import FrontendError, manifest_cost
from edgefleet.mcu_flash import FlashImage
from edgefleet.perf import mcu_latency_ms
from edgefleet.profiles import DeviceProfile

__all__ = ["TflmArena", "TflmRuntime", "measure_arena"]

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
#: Lines TFLM writes while it is measured (the report, and failures of too-small arenas).
_TFLM_LINE = re.compile(
    r"^\[RecordingMicroAllocator\]|^(Failed|Unable|Couldn't|Too many) |^tensorflow/lite/micro/|"
    r"^Node .* failed to prepare|^Arena size is too small|^$"
)
_CAPTURE = threading.Lock()
#: Tried when the usual arena (10x the model, TFLM's own default) is too small. No MCU has more
#: SRAM, so a model TFLM cannot prepare even in this is refused as unpreparable.
_MAX_ARENA = 64 * 1024 * 1024


@contextmanager
def _c_stderr() -> Iterator[list[str]]:
    """Collect what C code writes to fd 2 inside the block (lines, in the yielded list)."""
    lines: list[str] = []
    with _CAPTURE, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())
            foreign = [line for line in lines if not _TFLM_LINE.search(line)]
            if foreign:
                sys.stderr.write("\n".join(foreign) + "\n")


class TflmArena:
    """TFLM's arena for one model: ``arena_bytes`` (smallest accepted) and what it reported."""

    def __init__(self, arena_bytes: int, reported_bytes: int) -> None:
        self.arena_bytes = arena_bytes
        self.reported_bytes = reported_bytes


def _interpreter(model: bytes, arena: int) -> Any:
    """A TFLM interpreter with ``arena`` bytes that has run once (``Prepare`` and scratch done),
    or ``None`` if TFLM cannot allocate the model in that arena."""
    try:
        it = tflm.Interpreter.from_bytes(model, arena_size=arena)
        details = it.get_input_details(0)
        it.set_input(np.zeros([int(d) for d in details["shape"]], details["dtype"]), 0)
        it.invoke()
    except RuntimeError:
        return None
    return it


def measure_arena(model: bytes) -> tuple[TflmArena, Any]:
    """TFLM's arena for ``model`` and an interpreter built with exactly that arena.

    Raises ``BundleFormatError`` when TFLM cannot parse or prepare the model at any size.
    """
    with _c_stderr() as lines:
        try:
            low = 1
            probe_size = max(64 * 1024, 10 * len(model))
            probe = _interpreter(model, probe_size)
            if probe is None:
                low, probe_size = probe_size + 1, _MAX_ARENA
                probe = _interpreter(model, probe_size)
        except Exception as exc:  # flatbuffer parsing raises struct errors, ValueError, ...
            raise BundleFormatError(f"TFLM cannot load model.tflite: {exc}") from exc
        if probe is None:
            failed = True
        else:
            failed = False
            probe.print_allocations()
            del probe
    if failed:
        why = next((line for line in lines if line.strip()), "no reason given")
        raise BundleFormatError(f"TFLM cannot prepare model.tflite: {why}")
    match = next((m for m in map(_TOTAL.search, lines) if m), None)
    reported = int(match.group(1)) if match else 0
    with _c_stderr():
        low, high = max(low, reported), probe_size
        while low < high:  # smallest arena TFLM accepts; construction is ~ms for MCU models
            mid = (low + high) // 2
            if _interpreter(model, mid) is None:
                low = mid + 1
            else:
                high = mid
        final = _interpreter(model, low)
    assert final is not None, "an arena TFLM accepted once must be accepted again"
    return TflmArena(low, reported), final


class TflmRuntime(Int8Interpreter):
    """TensorFlow Lite Micro over ``model.tflite``: int8 in and out, the arena TFLM needs."""

    name = "tflm"
    latency_source = "cycle-model"
    interpreter_name = "TFLM"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._it: Any = None
        self._ms_per_sample = 0.0
        self.arena: TflmArena | None = None
        self.flash: FlashImage | None = None
        #: SRAM the device's MFCC frontend holds beside the arena (0 without a frontend)
        self.frontend_ram_bytes = 0

    @property
    def flash_bytes(self) -> int:
        return 0 if self.flash is None else self.flash.total

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        model = bundle.file(str(entry.get("file", "model.tflite")))
        flash = mcu_flash(bundle, len(model), tflite_ops(model))
        if flash.total > self.profile.storage_bytes:
            raise BudgetExceededError(
                "flash",
                flash.total,
                self.profile.storage_bytes,
                f"{flash.describe()} on {self.profile.name}",
            )
        arena, it = measure_arena(model)
        try:
            cost = manifest_cost(bundle.manifest)
        except FrontendError as exc:
            raise BundleFormatError(f"manifest input: {exc}") from exc
        frontend = 0 if cost is None else cost.ram_bytes  # the MFCC's buffers beside the arena
        if arena.arena_bytes + frontend > self.profile.ram_bytes:
            raise BudgetExceededError(
                "SRAM arena + frontend" if frontend else "SRAM arena",
                arena.arena_bytes + frontend,
                self.profile.ram_bytes,
                f"TFLM's tensor arena for model.tflite {arena.arena_bytes}"
                + (f" + MFCC frontend buffers {frontend}" if frontend else "")
                + f" bytes on {self.profile.name}",
            )
        self.frontend_ram_bytes = frontend
        io = Int8Io.from_details(bundle, entry, it.get_input_details(0), it.get_output_details(0))
        try:
            ms = mcu_latency_ms(self.profile, bundle.manifest, frontend=False)
        except ValueError as exc:
            raise BundleFormatError(f"manifest metrics: {exc}") from exc
        self.io, self._it, self.arena, self.flash, self._ms_per_sample = io, it, arena, flash, ms

    def invoke_one(self, row: npt.NDArray[np.int8]) -> npt.NDArray[Any]:
        self._it.set_input(row, 0)
        self._it.invoke()
        return np.asarray(self._it.get_output(0))

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = super()._infer(batch)
        self.last_latency_ms = self._ms_per_sample * batch.shape[0]
        return out

    def memory(self) -> MemoryUsage:
        if self.arena is None or self.flash is None:
            return MemoryUsage(0, 0, "not loaded")
        front = self.frontend_ram_bytes
        return MemoryUsage(
            weights=self.flash.total,
            working=self.arena.arena_bytes + front,
            method=f"flash: {self.flash.describe()}; SRAM: the smallest tensor arena TFLM "
            f"accepts (its allocation report says {self.arena.reported_bytes} bytes)"
            + (f" + MFCC frontend buffers {front} bytes" if front else ""),
        )

    def unload(self) -> None:
        self._it, self.arena, self.flash, self.frontend_ram_bytes = None, None, None, 0
        super().unload()

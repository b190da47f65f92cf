"""``litert``: LiteRT (TensorFlow Lite), the interpreter Android phones and Pi-class boards run.

Why beside onnxruntime: a phone app or a Raspberry Pi image in the field ships LiteRT with its
XNNPACK delegate, not onnxruntime, and it executes the same full-integer ``model.tflite`` a
microcontroller gets. Serving through it shows that artifact works on those devices as built.

* One thread by default (``threads``), as the coordinator measures and as a device serves one
  request at a time next to the agent's own work; LiteRT's default delegate (XNNPACK) is kept,
  because that is what a device runs.
* Input and output go through the ``.tflite``'s own int8 quantisation, one sample per invoke
  (the converted model has batch 1 baked into its reshapes): the serving loop is
  :class:`edgefleet.agent.runtimes.tflite_io.Int8Interpreter`, shared with ``tflm``.
* Memory: weights = the ``.tflite`` bytes; working = the process's RSS growth over building the
  interpreter, allocating its tensors and one batch-1 run, less the model bytes (LiteRT keeps no
  arena figure of its own), as the onnxruntime runtime does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

from edgefleet.agent.runtimes.base import BundleFormatError, MemoryUsage
from edgefleet.agent.runtimes.tflite_io import Int8Interpreter, Int8Io
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile

__all__ = ["LiteRtRuntime"]


class LiteRtRuntime(Int8Interpreter):
    """LiteRT's interpreter (XNNPACK) over the bundle's ``model.tflite``."""

    name = "litert"
    invoke_errors = (RuntimeError, ValueError)
    interpreter_name = "LiteRT"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._it: Any = None
        self._in_index = self._out_index = 0
        self._usage = MemoryUsage(0, 0, "not loaded")

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        model = bundle.file(str(entry.get("file", "model.tflite")))
        rss = psutil.Process().memory_info().rss
        try:
            it = Interpreter(model_content=model, num_threads=self.threads)
            it.allocate_tensors()
            inputs, outputs = it.get_input_details(), it.get_output_details()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with its own message
            raise BundleFormatError(f"LiteRT cannot load model.tflite: {exc}") from exc
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleFormatError(
                f"model.tflite has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1"
            )
        self.io = Int8Io.from_details(bundle, entry, inputs[0], outputs[0])
        self._in_index, self._out_index = int(inputs[0]["index"]), int(outputs[0]["index"])
        self._it = it
        self.run_int8(np.zeros((1, *self.io.shape[1:]), np.int8))  # warm-up: memory below
        grown = max(0, psutil.Process().memory_info().rss - rss)
        self._usage = MemoryUsage(
            weights=len(model),
            working=max(0, grown - len(model)),
            method="rss growth over interpreter creation, allocation and a batch-1 run, "
            "less the model bytes",
        )

    def invoke_one(self, row: npt.NDArray[np.int8]) -> npt.NDArray[Any]:
        self._it.set_tensor(self._in_index, row)
        self._it.invoke()
        return np.asarray(self._it.get_tensor(self._out_index))

    def memory(self) -> MemoryUsage:
        return self._usage

    def unload(self) -> None:
        self._it = None
        self._usage = MemoryUsage(0, 0, "not loaded")
        super().unload()

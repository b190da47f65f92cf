"""``litert``: LiteRT (TensorFlow Lite), the interpreter Android phones and Pi-class boards run.

Why beside onnxruntime: a phone app or a Raspberry Pi image in the field ships LiteRT with its
XNNPACK delegate, not onnxruntime, and it executes the same full-integer ``model.tflite`` a
microcontroller gets. Serving through it shows that artifact works on those devices as built.

* One thread by default (``threads``), as the coordinator measures and as a device serves one
  request at a time next to the agent's own work; LiteRT's default delegate (XNNPACK) is kept,
  because that is what a device runs.
* Input and output go through the ``.tflite``'s own int8 quantisation
  (:mod:`edgefleet.agent.runtimes.tflite_io`, shared with ``tflm``), one sample per invoke: the
  converted model has batch 1 baked into its reshapes.
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

from edgefleet.agent.runtimes.base import BundleFormatError, InferenceError, MemoryUsage, Runtime
from edgefleet.agent.runtimes.tflite_io import TensorQuant, input_mapper, quant_from_details
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile

__all__ = ["LiteRtRuntime"]


class LiteRtRuntime(Runtime):
    """LiteRT's interpreter (XNNPACK) over the bundle's ``model.tflite``."""

    name = "litert"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._it: Any = None
        self._in = self._out = TensorQuant(1.0, 0)
        self._in_index = self._out_index = 0
        self._perm: tuple[int, ...] | None = None
        self._in_shape: tuple[int, ...] = ()
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
        shape = tuple(int(d) for d in inputs[0]["shape"])
        layout = entry.get("layout")
        self._perm = input_mapper(
            bundle.manifest.get("input", {}).get("shape", []),
            shape,
            None if layout is None else str(layout),
        )
        self._in = quant_from_details(inputs[0], "input")
        self._out = quant_from_details(outputs[0], "output")
        self._in_index, self._out_index = int(inputs[0]["index"]), int(outputs[0]["index"])
        self._it, self._in_shape = it, shape
        self.run_int8(np.zeros((1, *shape[1:]), np.int8))  # warm-up: the working memory below
        grown = max(0, psutil.Process().memory_info().rss - rss)
        self._usage = MemoryUsage(
            weights=len(model),
            working=max(0, grown - len(model)),
            method="rss growth over interpreter creation, allocation and a batch-1 run, "
            "less the model bytes",
        )

    def quantize_input(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.int8]:
        """The batch as the model's int8 input tensors, ``[N, *model input shape[1:]]``."""
        x = batch if self._perm is None else np.transpose(batch, self._perm)
        return self._in.quantize(x).reshape(batch.shape[0], *self._in_shape[1:])

    def run_int8(self, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """LiteRT's int8 output for each int8 input row."""
        rows = []
        for row in q:
            self._it.set_tensor(self._in_index, row[None])
            self._it.invoke()
            rows.append(np.array(self._it.get_tensor(self._out_index), np.int8).reshape(-1))
        return np.stack(rows)

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        try:
            q = self.run_int8(self.quantize_input(batch))
        except (RuntimeError, ValueError) as exc:  # the variant stays loaded
            raise InferenceError(f"LiteRT invoke failed: {exc}") from exc
        return self._out.dequantize(q)

    def memory(self) -> MemoryUsage:
        return self._usage

    def unload(self) -> None:
        self._it = None
        self._usage = MemoryUsage(0, 0, "not loaded")
        super().unload()

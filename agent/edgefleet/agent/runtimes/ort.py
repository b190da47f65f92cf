"""The ``onnxruntime`` runtime: inference only, one thread, for the ONNX graph in a bundle.

Why onnxruntime on small Linux devices: it executes every variant the coordinator builds (fp32,
fp16, dynamic and static int8 QDQ graphs) from one file with a runtime far smaller than torch.
One intra-op thread by default, because a device serves one request at a time next to the
agent's own work, and because it is how the coordinator measured each variant's latency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
import psutil

from edgefleet.agent.runtimes.base import BundleFormatError, MemoryUsage, Runtime
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile

__all__ = ["OrtRuntime"]


class OrtRuntime(Runtime):
    """onnxruntime CPU provider over the bundle's ``model.onnx`` (verified bytes, never re-read)."""

    name = "onnxruntime"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._session: Any = None
        self._input_name = ""
        self._usage = MemoryUsage(0, 0, "not loaded")

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        model = bundle.file(str(entry.get("file", "model.onnx")))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        rss = psutil.Process().memory_info().rss
        try:
            session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise BundleFormatError(f"onnxruntime cannot load model.onnx: {exc}") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BundleFormatError(f"model.onnx has {len(inputs)} inputs, expected 1")
        spec = bundle.manifest.get("input", {})
        # One warm-up run at batch 1 so the working memory below includes the arena.
        shape = [int(d) for d in spec.get("shape", [])]
        if shape:
            session.run(None, {inputs[0].name: np.zeros(shape, np.float32)})
        grown = max(0, psutil.Process().memory_info().rss - rss)
        self._session = session
        self._input_name = inputs[0].name
        self._usage = MemoryUsage(
            weights=len(model),
            working=max(0, grown - len(model)),
            method="rss growth over session creation and a batch-1 run, less the model bytes",
        )

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = self._session.run(None, {self._input_name: batch})[0]
        result: np.ndarray[Any, np.dtype[np.float32]] = np.asarray(out, dtype=np.float32)
        return result

    def memory(self) -> MemoryUsage:
        return self._usage

    def unload(self) -> None:
        self._session = None
        self._usage = MemoryUsage(0, 0, "not loaded")
        super().unload()

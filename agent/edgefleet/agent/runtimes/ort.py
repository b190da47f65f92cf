"""The ``onnxruntime`` runtime: inference only, one thread, for the ONNX graph in a bundle.

Why onnxruntime on small Linux devices: it executes every variant the coordinator builds (fp32,
fp16, dynamic and static int8 QDQ graphs) from one file with a runtime far smaller than torch.
One intra-op thread by default, because a device serves one request at a time next to the
agent's own work, and because it is how the coordinator measured each variant's latency.
A language model may keep its weights as ONNX external data (``external_data`` in the
manifest's runtime entry, e.g. ``model.onnx.data``): those verified bytes are handed to
onnxruntime in memory, so nothing is re-read from disk after verification either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
import psutil

from edgefleet.agent.runtimes.base import BundleFormatError, InputError, MemoryUsage, Runtime
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.agent.generation import LMSpec

__all__ = ["OrtRuntime"]


class OrtRuntime(Runtime):
    """onnxruntime CPU provider over the bundle's ``model.onnx`` (verified bytes, never re-read)."""

    name = "onnxruntime"

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._session: Any = None
        self._input_name = ""
        self._usage = MemoryUsage(0, 0, "not loaded")
        #: external-data buffers the session was given (onnxruntime may use them in place)
        self._external: list[npt.NDArray[np.uint8]] = []
        #: the loaded variant's language-model facts; ``None`` for a classifier
        self.language_model: LMSpec | None = None

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        model = bundle.file(str(entry.get("file", "model.onnx")))
        names = [str(n) for n in entry.get("external_data", [])]
        external = [np.frombuffer(bundle.file(n), dtype=np.uint8) for n in names]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if names:
            opts.add_external_initializers_from_files_in_memory(
                names, external, [int(b.size) for b in external]
            )
        rss = psutil.Process().memory_info().rss
        try:
            session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise BundleFormatError(f"onnxruntime cannot load model.onnx: {exc}") from exc
        self._external = external
        inputs = session.get_inputs()
        size = len(model) + sum(int(b.size) for b in external)
        if self._load_language_model(bundle, session, size, rss):
            return
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

    def _load_language_model(self, bundle: Bundle, session: Any, size: int, rss: int) -> bool:
        """Hold a language model's KV-cache graph for ``Generate`` (False: not an LM bundle).

        Checked here so a malformed LM bundle is refused at staging, not on the first prompt;
        one warm-up step (two prompt bytes) so the working memory includes the arena."""
        from edgefleet.agent.generation import empty_cache, lm_io, lm_spec

        try:
            spec = lm_spec(bundle.manifest)
        except ValueError as exc:
            raise BundleFormatError(f"variant {bundle.variant_id[:12]}: {exc}") from exc
        if spec is None:
            return False
        names = tuple(i.name for i in session.get_inputs())
        outs = tuple(o.name for o in session.get_outputs())
        if (names, outs) != lm_io(spec):
            want, want_out = lm_io(spec)
            raise BundleFormatError(
                f"language model ({spec.kv_dtype} cache) has inputs {'/'.join(names)} and "
                f"outputs {'/'.join(outs)}, expected {'/'.join(want)} -> {'/'.join(want_out)}"
            )
        try:
            session.run(None, {"tokens": np.zeros((1, 2), np.int64), **empty_cache(spec)})
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise BundleFormatError(f"language model does not match its manifest: {exc}") from exc
        self._session = session
        self.language_model = spec
        grown = max(0, psutil.Process().memory_info().rss - rss)
        self._usage = MemoryUsage(size, max(0, grown - size), "rss growth over a 2-byte prefill")
        return True

    def lm_step(self, feeds: Mapping[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """One KV-cache step of the loaded language model: its outputs in graph order
        (logits, then the cache as :func:`~edgefleet.agent.generation.lm_io` names it)."""
        out: list[npt.NDArray[Any]] = self._session.run(None, dict(feeds))
        return out

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if self.language_model is not None:
            raise InputError("the active variant is a language model: call Generate, not Infer")
        out = self._session.run(None, {self._input_name: batch})[0]
        result: np.ndarray[Any, np.dtype[np.float32]] = np.asarray(out, dtype=np.float32)
        return result

    def memory(self) -> MemoryUsage:
        return self._usage

    def unload(self) -> None:
        self._session = None
        self._external = []
        self.language_model = None
        self._usage = MemoryUsage(0, 0, "not loaded")
        super().unload()

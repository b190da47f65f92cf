"""Per-call overhead of each runtime on this device: the latency of a call that computes nothing.

Why: the coordinator predicts a variant's latency on a device from its MACs and the device's
throughput (``edgefleet.coordinator.latency``). For a small model that leaves out what dominates: the
fixed cost of one call through the runtime (Python dispatch, session bookkeeping, copying the
input in and the logits out). It differs per runtime and per device, so the agent measures it
at start with a graph that does nothing, timed the way serving times a request (around
``session.run`` / the module call and the conversion back to numpy), and reports it as
``runtime_call_overhead_ms_<runtime>``. Calls are spaced out, as requests are, rather than run
back to back in a warm loop, which would understate what a request pays.

``mcu-sim`` and ``tflm`` report a cycle-model latency with no wall-clock component, so they
have none.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgefleet.profiles import DeviceProfile

__all__ = ["measure_call_overheads"]

log = logging.getLogger("edgefleet.agent.overhead")

#: ONNX model: y = Identity(x), x float32 [1, 1] (the agent ships no ``onnx`` package).
_IDENTITY_ONNX = base64.b64decode(
    "CAg6SwoQCgF4EgF5IghJZGVudGl0eRINY2FsbC1vdmVyaGVhZFoTCgF4Eg4KDAgBEggKAggBCgIIAWITCgF5Eg4KDAgB"
    "EggKAggBCgIIAUIECgAQDQ=="
)
#: TFLite model: y = RESHAPE(x, [1, 1]), x float32 [1, 1] (the agent ships no flatbuffers schema).
_IDENTITY_TFLITE = base64.b64decode(
    "GAAAAFRGTDMAAA4AFAAQAAwACAAAAAQADgAAABAAAAA8AAAAMAEAAAMAAAACAAAAKAAAAAwAAAAAAAYACAAEAAYAAAAE"
    "AAAACAAAAAEAAAABAAAABAAEAAQAAAABAAAAEAAAAAwAFAAQAAwACAAEAAwAAAAQAAAAQAAAAEQAAABIAAAAAQAAABAA"
    "AAAAAAoADAAAAAgABAAKAAAACAAAAAwAAAABAAAAAgAAAAIAAAAAAAAAAQAAAAEAAAACAAAAAQAAAAAAAAADAAAAaAAA"
    "ADQAAAAEAAAAsP///wgAAAAMAAAAAQAAAHkAAAACAAAAAQAAAAEAAAAMABQAEAAPAAgABAAMAAAAEAAAAAEAAAAAAAAC"
    "DAAAAAEAAABzAAAAAQAAAAIAAAAMAAwACAAAAAAABAAMAAAACAAAAAwAAAABAAAAeAAAAAIAAAABAAAAAQAAAAEAAAAQ"
    "AAAADAAMAAsAAAAAAAQADAAAABYAAAAAAAAW"
)
CALLS = 21
#: Packages measured only once a variant has made the agent import them anyway.
HEAVY = frozenset({"torch"})
GAP_SECONDS = 0.005


def _ort_call() -> Callable[[], Any]:
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(_IDENTITY_ONNX, opts, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1), np.float32)
    return lambda: np.asarray(session.run(None, {"x": x})[0], dtype=np.float32)


def _torch_call() -> Callable[[], Any]:
    import numpy as np
    import torch

    module = torch.nn.Identity()
    x = np.zeros((1, 1), np.float32)

    def call() -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return call


def _litert_call() -> Callable[[], Any]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

    it = Interpreter(model_content=_IDENTITY_TFLITE, num_threads=1)
    it.allocate_tensors()
    x = np.zeros((1, 1), np.float32)
    src, dst = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def call() -> Any:
        it.set_tensor(src, x)
        it.invoke()
        return np.array(it.get_tensor(dst), dtype=np.float32)

    return call


_CALLS: dict[str, tuple[str, Callable[[], Callable[[], Any]]]] = {
    "onnxruntime": ("onnxruntime", _ort_call),
    "litert": ("ai_edge_litert", _litert_call),
    "torch": ("torch", _torch_call),
}


def _median_ms(call: Callable[[], Any], calls: int, gap: float) -> float:
    call()  # first call: lazy initialisation, not per-call cost
    times = []
    for _ in range(calls):
        time.sleep(gap)
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def measure_call_overheads(
    profile: DeviceProfile,
    only: Iterable[str] | None = None,
    calls: int = CALLS,
    gap: float = GAP_SECONDS,
) -> dict[str, float]:
    """Median ms of an empty call, per runtime the profile lists and this install has.

    At start the agent measures only runtimes that are cheap to import: torch costs seconds
    and hundreds of MB, which a device that never serves with it should not pay; it is
    measured once a torch variant is loaded (``only``)."""
    out: dict[str, float] = {}
    for name in profile.runtimes:
        entry = _CALLS.get(name)
        if entry is None or importlib.util.find_spec(entry[0]) is None:
            continue
        if only is None and entry[0] in HEAVY and entry[0] not in sys.modules:
            continue
        if only is not None and name not in only:
            continue
        try:
            out[name] = _median_ms(entry[1](), calls, gap)
        except Exception as exc:  # a broken runtime install must not stop the agent
            log.warning("cannot measure the %s call overhead: %r", name, exc)
    return out

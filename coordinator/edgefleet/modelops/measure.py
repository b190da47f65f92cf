"""Honest measurements of one variant, on the held-out test split and this machine.

Sizes are counted from the artifacts that ship (the ONNX file, the MCU integer tensors), not
estimated from parameter counts; MACs come from the exported graph's real shapes; peak
activation memory from :mod:`memplan`. Latency is wall-clock per single-image inference
(batch 1, one thread: how a small device runs), after a warm-up, reported as median and p95,
for every runtime that can execute the variant.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgefleet.modelops.onnx_export import INPUT_NAME, static_shapes

__all__ = [
    "LatencyConfig",
    "RuntimeResult",
    "count_macs",
    "host_info",
    "measure_onnxruntime",
    "measure_torch",
    "weight_bytes",
]


@dataclass(frozen=True)
class LatencyConfig:
    warmup: int = 30
    runs: int = 300


@dataclass(frozen=True)
class RuntimeResult:
    accuracy: float
    latency_ms_p50: float
    latency_ms_p95: float
    predictions: np.ndarray

    def to_json(self) -> dict[str, float]:
        return {
            "accuracy": round(self.accuracy, 6),
            "latency_ms_p50": round(self.latency_ms_p50, 5),
            "latency_ms_p95": round(self.latency_ms_p95, 5),
        }


def host_info() -> dict[str, str | int]:
    """Where the latencies were measured (they mean nothing without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "threads_used": 1}


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every constant tensor in the graph (weights, biases, scales, zero points)."""
    return sum(int(numpy_helper.to_array(t).nbytes) for t in model.graph.initializer)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one inference at batch 1 (Conv, Gemm, MatMul)."""
    shapes = static_shapes(model)
    consts = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update(consts)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, w = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and w:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[-2] if trans_a else a[-1]
                total += int(np.prod(out)) * int(k)
    return total


def _latency(run: Callable[[np.ndarray], object], x: np.ndarray, cfg: LatencyConfig) -> list[float]:
    for i in range(cfg.warmup):
        run(x[i % len(x)][None])
    times = []
    for i in range(cfg.runs):
        sample = x[i % len(x)][None]
        t0 = time.perf_counter_ns()
        run(sample)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _result(pred: np.ndarray, y: np.ndarray, times: list[float]) -> RuntimeResult:
    return RuntimeResult(
        accuracy=float((pred == y).mean()),
        latency_ms_p50=float(np.percentile(times, 50)),
        latency_ms_p95=float(np.percentile(times, 95)),
        predictions=pred,
    )


def measure_onnxruntime(
    model_bytes: bytes, x: np.ndarray, y: np.ndarray, cfg: LatencyConfig
) -> RuntimeResult:
    """Accuracy and single-thread batch-1 latency in onnxruntime's CPU provider."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT_NAME: x})[0]

    def run(sample: np.ndarray) -> object:
        return session.run(None, {INPUT_NAME: sample})

    return _result(np.asarray(logits).argmax(1), y, _latency(run, x, cfg))


def measure_torch(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: LatencyConfig, dtype: torch.dtype
) -> RuntimeResult:
    """Accuracy and single-thread batch-1 latency of the eager PyTorch module."""
    model = model.eval().to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x).to(dtype)).float().numpy()

            def run(sample: np.ndarray) -> object:
                return model(torch.from_numpy(sample).to(dtype))

            times = _latency(run, x, cfg)
    finally:
        torch.set_num_threads(threads)
    return _result(logits.argmax(1), y, times)

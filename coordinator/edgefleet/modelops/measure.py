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

from edgefleet.cycles import Layer
from edgefleet.modelops.onnx_export import INPUT_NAME, static_shapes

__all__ = [
    "LatencyConfig",
    "RuntimeResult",
    "count_layers",
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


_POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean"}
)
_FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})  # a clamp inside the producer's requantise
_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh"}
)
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "BatchNormalization"})


def count_layers(model: onnx.ModelProto) -> tuple[Layer, ...]:
    """The graph's work per op, by kind, for the MCU cycle model (:mod:`edgefleet.cycles`).

    Why here: the op kind decides the cycles per MAC on a microcontroller (a depthwise 3x3 runs
    several times slower per MAC than a pointwise 1x1), so the manifest carries each layer's
    MACs, outputs and element counts, not only the total :func:`count_macs` gives. A ReLU/Clip
    right after the op that produced its only input is the clamp of that op's requantisation
    (as TFLite fuses it) and a BatchNormalization after a Conv is folded into it: neither costs.
    """
    shapes = static_shapes(model)
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    consts = {t.name for t in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1

    def numel(name: str) -> int:
        shape = shapes.get(name)
        return int(np.prod(shape)) if shape else 0

    layers: list[Layer] = []
    for node in model.graph.node:
        op, out = node.op_type, node.output[0]
        src = node.input[0] if node.input else ""
        fused = producer.get(src) in ("Conv", "Gemm", "MatMul", "Add") and consumers.get(src) == 1
        if op == "Conv":
            w, x, y = shapes.get(node.input[1]), shapes.get(src), shapes.get(out)
            if not (w and x and y):
                continue
            cin_g, kh, kw = (int(d) for d in w[1:4]) if len(w) == 4 else (int(w[1]), 1, int(w[2]))
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            pixels = int(np.prod(y[2:]))
            macs = numel(out) * cin_g * kh * kw
            strided = any(
                a.name == "strides" and any(s != 1 for s in a.ints) for a in node.attribute
            )
            if group > 1 and cin_g == 1 and group == x[1]:
                layers.append(Layer("depthwise", macs=macs, outputs=numel(out)))
            elif kh * kw == 1 and not strided:
                layers.append(Layer("pointwise", macs=macs, outputs=numel(out)))
            else:
                layers.append(
                    Layer("conv", macs=macs, outputs=numel(out), im2col=pixels * cin_g * kh * kw)
                )
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(src)
            if a:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = int(a[-2] if trans_a else a[-1])
                layers.append(Layer("fc", macs=numel(out) * k, outputs=numel(out)))
        elif op in _POOL_OPS:
            layers.append(Layer("pool", elements=numel(src)))
        elif op == "BatchNormalization" and producer.get(src) == "Conv":
            continue
        elif op in _ELEMENTWISE and not all(i in consts for i in node.input[1:]):
            layers.append(Layer("add", elements=numel(out)))
        elif op in _ACTIVATIONS:
            if not (op in _FUSABLE_ACTIVATIONS and fused):
                layers.append(Layer("activation", elements=numel(out)))
        elif op == "Softmax":
            layers.append(Layer("softmax", elements=numel(out)))
    return tuple(layers)


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

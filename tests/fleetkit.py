"""Test helpers: synthetic (but signed, real-format) variants, and scripted devices.

A ``ScriptedDevice`` speaks the real device API of a real coordinator over gRPC;
the test decides what it reports (activated, failed, metrics), which lets the
rollout tests drive every gate outcome without the runtime stack.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from edgefleet.catalog import get_profile
from edgefleet.metric_names import variant_inferences_metric
from edgefleet.profiles import DeviceProfile
from edgefleet.v1 import device_pb2, device_pb2_grpc
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.wire import profile_to_proto
from tests.conftest import ENROLL_TOKEN


def variant_manifest(
    model: str,
    recipe: str,
    precision: str,
    accuracy: float,
    weight_bytes: int,
    peak_memory_bytes: int,
    macs: int,
    latency_ms: float,
    mcu_flash_bytes: int | None = None,
) -> dict[str, Any]:
    runtimes: dict[str, Any] = {"onnxruntime": {"file": "model.onnx"}}
    measured = {"onnxruntime": {"latency_ms_p50": latency_ms, "accuracy": accuracy}}
    metrics: dict[str, Any] = {
        "accuracy": accuracy,
        "latency_ms": latency_ms,
        "bytes": weight_bytes,
        "weight_bytes": weight_bytes,
        "peak_memory_bytes": peak_memory_bytes,
        "macs": macs,
        "runtimes": measured,
    }
    if precision == "fp32":
        runtimes["torch"] = {"file": "weights.safetensors"}
        measured["torch"] = {"latency_ms_p50": latency_ms * 10, "accuracy": accuracy}
    if mcu_flash_bytes is not None:
        runtimes["mcu-sim"] = {"graph": "mcu.json"}
        metrics["mcu"] = {"flash_bytes": mcu_flash_bytes}
    return {
        "model": model,
        "recipe_label": recipe,
        "recipe": [{"kind": recipe, "params": {}}],
        "precision": precision,
        "runtimes": runtimes,
        "metrics": metrics,
    }


def make_model(data_dir: Path, name: str = "digits", tag: str = "") -> dict[str, str]:
    """A model with an fp32 base (~600 KB), an int8 variant (~150 KB, MCU-ready) and a
    large fp32 variant no MCU fits. Returns recipe -> variant id."""
    store = VariantStore(data_dir)
    specs = {
        "fp32": ("fp32", 0.98, 600_000, 24_576, 660_000, 0.025, None),
        "int8-static": ("int8", 0.978, 150_000, 6_144, 660_000, 0.03, 160_000),
        "wide": ("fp32", 0.985, 6_000_000, 98_304, 6_600_000, 0.2, None),
    }
    ids = {}
    for recipe, (precision, acc, wbytes, peak, macs, lat, flash) in specs.items():
        body = variant_manifest(name, recipe + tag, precision, acc, wbytes, peak, macs, lat, flash)
        files = {"model.onnx": uuid.uuid4().bytes * (wbytes // 16)}
        ids[recipe] = store.put(body, files)
    store.add_model(
        ModelEntry(
            name=name, architecture={"name": "synthetic"}, dataset="digits", base=ids["fp32"]
        )
    )
    for vid in ids.values():
        store.add_variant(name, vid)
    return ids


MIB = 1024 * 1024


def make_vision_model(data_dir: Path, name: str = "vision") -> dict[str, str]:
    """A larger model family where budgets, not taste, separate the devices:

    - ``xl`` fp32, 600 MiB of weights, the most accurate;
    - ``l`` fp16, 300 MiB, within 0.5 pt of ``xl`` (fp16 devices take it: faster);
    - ``m`` int8, 150 MiB, 0.8 pt below ``xl`` (taken only where ``xl``/``l`` cannot run);
    - ``s`` int8 with an MCU export, 300 KiB flash and a 200 KiB arena.
    """
    store = VariantStore(data_dir)
    specs = {
        "xl": ("fp32", 0.950, 600 * MIB, 8 * MIB, 2_000_000_000, 40.0, None, 0),
        "l": ("fp16", 0.947, 300 * MIB, 4 * MIB, 2_000_000_000, 38.0, None, 0),
        "m": ("int8", 0.942, 150 * MIB, 2 * MIB, 2_000_000_000, 30.0, None, 0),
        "s": ("int8", 0.900, 280 * 1024, 200 * 1024, 5_000_000, 0.2, 300 * 1024, 0),
    }
    ids = {}
    for recipe, (precision, acc, wbytes, peak, macs, lat, flash, _) in specs.items():
        body = variant_manifest(name, recipe, precision, acc, wbytes, peak, macs, lat, flash)
        ids[recipe] = store.put(body, {"model.onnx": recipe.encode() * 64})
    store.add_model(
        ModelEntry(name=name, architecture={"name": "synthetic"}, dataset="digits", base=ids["xl"])
    )
    for vid in ids.values():
        store.add_variant(name, vid)
    return ids


def tiny_onnx(seed: int) -> bytes:
    """A real ONNX graph (y = relu(x + b), x: 1x8) that onnxruntime loads and runs."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(8).astype(np.float32), "b"
    )
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        f"tiny-{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def add_servable_model(
    data_dir: Path, name: str, payload_bytes: int, seeds: tuple[int, ...] = (0,)
) -> list[str]:
    """A model whose variants a real agent (onnxruntime, rpi4) downloads, verifies and serves:
    a tiny real ONNX graph plus ``payload_bytes`` of incompressible weights each, so a download
    spans many 64 KiB chunks. Variant i is a little more accurate than variant i+1 (each seed
    makes a distinct bundle). Returns the variant ids in ``seeds`` order."""
    store = VariantStore(data_dir)
    ids = []
    for n, seed in enumerate(seeds):
        body = variant_manifest(
            name, f"fp32-{seed}", "fp32", 0.98 - 0.001 * n, payload_bytes, 24_576, 660_000, 0.025
        )
        for table in (body["runtimes"], body["metrics"]["runtimes"]):
            table.pop("torch", None)  # onnxruntime only: no safetensors in these bundles
        body["input"] = {"shape": [1, 8], "dtype": "float32"}
        weights = hashlib.shake_256(f"{name}-{seed}".encode()).digest(payload_bytes)
        ids.append(store.put(body, {"model.onnx": tiny_onnx(seed), "weights.bin": weights}))
    store.add_model(
        ModelEntry(name=name, architecture={"name": "synthetic"}, dataset="digits", base=ids[0])
    )
    for vid in ids:
        store.add_variant(name, vid)
    return ids


@dataclass
class ScriptedDevice:
    address: str
    name: str
    profile: DeviceProfile
    device_id: str = ""
    credential: str = ""
    active: str = ""
    previous: str = ""
    failed: str = ""
    failure_reason: str = ""
    desired: device_pb2.DesiredState = field(default_factory=device_pb2.DesiredState)
    sequence: int = 0
    telemetry_sequence: int = 0

    @classmethod
    def register(cls, address: str, name: str, profile: str | DeviceProfile) -> ScriptedDevice:
        prof = get_profile(profile) if isinstance(profile, str) else profile
        device = cls(address, name, prof)
        with grpc.insecure_channel(address) as ch:
            reply = device_pb2_grpc.DeviceServiceStub(ch).Register(
                device_pb2.RegisterRequest(
                    instance_key=uuid.uuid4().hex,
                    name=name,
                    profile=profile_to_proto(prof),
                    benchmark=device_pb2.DeviceBenchmark(macs_per_second=5e9, method="test"),
                ),
                metadata=(("authorization", f"Bearer {ENROLL_TOKEN}"),),
                timeout=5,
            )
        device.device_id, device.credential = reply.device_id, reply.credential
        return device

    def heartbeat(self) -> device_pb2.DesiredState:
        self.sequence += 1
        with grpc.insecure_channel(self.address) as ch:
            reply = device_pb2_grpc.DeviceServiceStub(ch).Heartbeat(
                device_pb2.HeartbeatRequest(
                    device_id=self.device_id,
                    state=device_pb2.AGENT_STATE_READY,
                    sequence=self.sequence,
                    active_variant=self.active,
                    previous_variant=self.previous,
                    failed_variant=self.failed,
                    failure_reason=self.failure_reason,
                ),
                metadata=(("authorization", f"Bearer {self.credential}"),),
                timeout=5,
            )
        self.desired = reply.desired
        return reply.desired

    def obey(self) -> None:
        """Activate whatever is desired (what a healthy agent does)."""
        want = self.desired.variant_id
        if want and want != self.active:
            self.previous, self.active = self.active, want

    def report_served(self, count: int) -> None:
        """Report that the active variant has served ``count`` requests (as an agent does)."""
        self.telemetry_sequence += 1
        name = variant_inferences_metric(self.active)
        self.report_metric(name, float(count), seq=1000 + self.telemetry_sequence)

    def report_metric(self, name: str, value: float, seq: int) -> None:
        with grpc.insecure_channel(self.address) as ch:
            device_pb2_grpc.DeviceServiceStub(ch).ReportTelemetry(
                device_pb2.ReportTelemetryRequest(
                    device_id=self.device_id,
                    records=[
                        device_pb2.TelemetryRecord(
                            sequence=seq,
                            time_unix=1.0,
                            metric=device_pb2.Metric(name=name, value=value),
                        )
                    ],
                ),
                metadata=(("authorization", f"Bearer {self.credential}"),),
                timeout=5,
            )


def linear_digits_onnx() -> tuple[bytes, float, float]:
    """A real ONNX classifier for the agents' ``--local-data digits`` samples ([1, 1, 8, 8]):
    one linear layer fitted by least squares, so a workload reports a real accuracy. Returns
    the graph, its accuracy on held-out samples and its median latency in onnxruntime here
    (batch 1, warm, as the build host measures a variant)."""
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.agent.workload import LocalDataSpec, load_local_data

    shard = load_local_data(LocalDataSpec(source="digits"))
    x = shard.x_train.reshape(len(shard.x_train), -1)
    onehot = np.eye(10, dtype=np.float32)[shard.y_train]
    ones = np.ones((len(x), 1), np.float32)
    solution = np.linalg.lstsq(np.hstack([x, ones]), onehot, rcond=None)[0].astype(np.float32)
    w, b = solution[:-1], solution[-1]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["y"]),
        ],
        "linear-digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = bytes(model.SerializeToString())
    held_out = shard.x_eval.reshape(len(shard.x_eval), -1)
    accuracy = float(((held_out @ w + b).argmax(axis=1) == shard.y_eval).mean())
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    sample = shard.x_eval[:1]
    times = []
    for _ in range(200):
        start = time.perf_counter()
        session.run(None, {"x": sample})
        times.append((time.perf_counter() - start) * 1000.0)
    return data, accuracy, statistics.median(times[20:])


def add_linear_digits_model(data_dir: Path, name: str = "digits") -> str:
    """A one-variant model the simulated fleet's digits workload really runs (onnxruntime,
    fp32, 640 MACs: the small-model case where per-call overhead is most of the latency)."""
    onnx_bytes, accuracy, latency_ms = linear_digits_onnx()
    store = VariantStore(data_dir)
    body = variant_manifest(name, "fp32", "fp32", accuracy, 2600, 4096, 640, latency_ms)
    for table in (body["runtimes"], body["metrics"]["runtimes"]):
        table.pop("torch", None)
    body["input"] = {"shape": [1, 1, 8, 8], "dtype": "float32"}
    vid = store.put(body, {"model.onnx": onnx_bytes})
    store.add_model(
        ModelEntry(name=name, architecture={"name": "linear"}, dataset="digits", base=vid)
    )
    store.add_variant(name, vid)
    return vid

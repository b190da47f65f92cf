"""Serving on the device: a real coordinator rolls a really built variant out to a real agent
process, which activates it, answers InferenceService calls on loopback with the right digits,
replays its local shard as workload, and reports inference_* metrics that the coordinator
relays into Prometheus. Refusals (wrong runtime/precision, a bundle that will not load, a
fine-tuning run that cannot fit) leave the previous variant serving.

The base model is trained once per module (DS-CNN width 0.5, a few epochs on digits).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgefleet.agent.battery import Battery
from edgefleet.agent.finetune import FinetuneRefused, finetune
from edgefleet.agent.serving import Serving
from edgefleet.agent.workload import LocalDataSpec, load_local_data
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.modelops.build import BuildOptions, register_model
from edgefleet.modelops.data import load_dataset
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.v1 import admin_pb2, device_pb2, inference_pb2, inference_pb2_grpc
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, wait_for
from tests.fleetkit import make_model


@dataclass(frozen=True)
class Built:
    data_dir: Path
    base: str

    def bundle(self) -> Bundle:
        return VariantStore(self.data_dir).load(self.base)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    data_dir = tmp_path_factory.mktemp("serving") / "coord"
    store = VariantStore(data_dir)
    options = BuildOptions(latency=LatencyConfig(warmup=2, runs=10))
    spec = ArchitectureSpec.zoo("ds-cnn", width=0.5)
    entry = register_model(store, "digits", spec, "digits", epochs=8, options=options)
    yield Built(data_dir, entry.base)


# --- in-process: refusals, fine-tuning memory, battery ---------------------------------------


def test_refused_bundles_keep_the_previous_variant_serving(built: Built) -> None:
    serving = Serving(get_profile("rpi4"))
    bundle = built.bundle()
    assert serving.accept(bundle, device_pb2.DesiredState(runtime="torch")) is None
    x = load_dataset("digits").x_test[:4]
    first = serving.infer(x).argmax

    reason = serving.accept(bundle, device_pb2.DesiredState(runtime="mcu-sim"))
    assert reason is not None and "does not run mcu-sim" in reason
    mcu = Serving(get_profile("cortex-m4"))
    reason = mcu.accept(bundle, device_pb2.DesiredState())
    assert reason is not None and "has no mcu-sim files" in reason
    fake = dict(bundle.manifest, runtimes={"mcu-sim": {"graph": "mcu.json"}})
    odd = Bundle(bundle.variant_id, fake, bundle.files, bundle.path, bundle.signer)
    reason = serving.accept(odd, device_pb2.DesiredState(runtime="onnxruntime"))
    assert reason is not None and "has no onnxruntime files" in reason
    assert serving.variant_id == bundle.variant_id and serving.runtime_name == "torch"
    assert serving.infer(x).argmax == first


def test_finetune_refuses_what_cannot_fit_and_tinytl_peaks_lower(built: Built) -> None:
    serving = Serving(get_profile("rpi4"))
    assert serving.load(built.bundle(), "torch") is None
    assert serving.runtime is not None
    shard = load_local_data(LocalDataSpec("digits", 0, 3, seed=1, noise=0.2, rotate=1))
    with pytest.raises(FinetuneRefused, match=r"full fine-tuning at batch 32 needs \d+ bytes"):
        finetune(serving.runtime, shard, "full", budget_bytes=100_000)
    full = finetune(serving.runtime, shard, "full", epochs=3)
    tiny = finetune(serving.runtime, shard, "tinytl", epochs=3)
    print(
        f"peak bytes: full {full.measured_peak_bytes} ({full.measured}), "
        f"tinytl {tiny.measured_peak_bytes} ({tiny.measured})"
    )
    assert tiny.measured_peak_bytes < full.measured_peak_bytes
    assert tiny.measured["grads"] * 5 < full.measured["grads"]
    # The plan made before training covers what training held.
    for r in (full, tiny):
        assert r.measured_peak_bytes <= r.plan.total * 1.01
    # auto picks the largest scope that fits a budget between the two plans: after full
    # comes the sparse update (biases, head and the last pointwise convs), then tinytl
    budget = (full.plan.total + tiny.plan.total) // 2
    assert finetune(serving.runtime, shard, "auto", budget_bytes=budget, epochs=1).scope == "sparse"
    ort = Serving(get_profile("rpi4"))
    assert ort.load(built.bundle(), "onnxruntime") is None
    assert ort.runtime is not None
    with pytest.raises(FinetuneRefused, match="inference-only"):
        finetune(ort.runtime, shard)


def test_mcu_sim_trains_its_last_layer_on_the_int8_backbone_within_its_sram(
    built: Built, tmp_path: Path
) -> None:
    """An int8-static variant on a Cortex-M4's mcu-sim: only the last layer trains (in float,
    from the dequantised int8 layer, so it starts where the served graph is), planned against
    the SRAM the serving arena leaves; other scopes and a budget it exceeds are refused, and
    the served graph keeps serving unchanged."""
    import shutil

    from edgefleet.agent.finetune import default_budget
    from edgefleet.modelops.build import build_variants

    # a copy of the module's store: a second variant there would change what the rollout
    # tests' selection picks for their phone
    data_dir = tmp_path / "coord"
    coordinator_state = shutil.ignore_patterns("redis", "coordinator.lock", "*.token", "replica-id")
    shutil.copytree(built.data_dir, data_dir, ignore=coordinator_state)
    (variant,) = build_variants(VariantStore(data_dir), "digits", ["int8-static"])
    assert VariantStore(built.data_dir).model("digits").variants == [built.base]
    mcu = Serving(get_profile("cortex-m4"))
    assert mcu.load(VariantStore(data_dir).load(variant), "mcu-sim") is None
    rt: Any = mcu.runtime
    assert rt is not None and rt.name == "mcu-sim"
    digits = load_local_data(LocalDataSpec("digits", 0, 3, seed=1))
    # this device names the digits differently (label + 1): only a retrained last layer helps
    shard = replace(digits, y_train=(digits.y_train + 1) % 10, y_eval=(digits.y_eval + 1) % 10)
    served = rt.predict(shard.x_eval)
    for scope in ("full", "tinytl"):
        with pytest.raises(FinetuneRefused, match="mcu-sim trains the last layer only"):
            finetune(rt, shard, scope)
    with pytest.raises(FinetuneRefused, match="does not fit"):
        finetune(rt, shard, "head", budget_bytes=1_000)
    result = finetune(rt, shard, "auto", epochs=10, lr=0.02)
    budget = default_budget(rt)
    assert 0 < budget <= get_profile("cortex-m4").ram_bytes - rt.memory().working
    assert result.scope == "head" and result.plan.total <= budget
    assert result.measured_peak_bytes <= result.plan.total
    # before training the float layer's predictions are the int8 graph's (up to rounding)
    served_acc = float((served == shard.y_eval).mean())
    print(f"mcu-sim last layer: served {served_acc:.3f}, {result.accuracy_before:.3f} -> "
          f"{result.accuracy_after:.3f}; plan {result.plan.total} B of {budget} B")  # fmt: skip
    assert abs(result.accuracy_before - served_acc) <= 0.05
    assert served_acc < 0.2 and result.accuracy_after > 0.6  # it learned the device's labels
    np.testing.assert_array_equal(rt.predict(shard.x_eval), served)  # the served copy is intact


def test_battery_drains_with_work() -> None:
    now = [0.0]
    phone = Battery(get_profile("phone-budget"), clock=lambda: now[0])
    now[0] = 60.0
    phone.record(0.0)
    idle = 100.0 - (phone.percent or 0.0)
    now[0] = 120.0
    phone.record(30.0)
    busy = 100.0 - (phone.percent or 0.0) - idle
    assert 0 < idle < busy  # a busy minute costs more than an idle one
    assert Battery(get_profile("rpi4")).percent is None  # mains powered: nothing reported


# --- a real coordinator and agent ------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_real_agent_serves_the_rolled_out_variant(
    built: Built,
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., Any],
) -> None:
    make_model(built.data_dir, name="broken")  # synthetic bundles no runtime can load
    coord = coordinator_factory(
        "--offline-after",
        "30",
        "--heartbeat-interval",
        "0.5",
        "--rollout-interval",
        "0.2",
        data_dir=built.data_dir,
    )
    agent = agent_factory(
        coord.address,
        "phone-flagship",
        "server-1",
        "--inference-port",
        "0",
        "--local-data",
        "digits",
        "--partition",
        "0/2",
        "--workload-rate",
        "40",
    )
    identity = agent.state_dir / "identity.json"
    endpoint = agent.state_dir / "inference.json"
    wait_for(lambda: identity.exists() and endpoint.exists(), 30, f"agent start; {agent.log}")
    address = json.loads(endpoint.read_text())["address"]
    with AdminClient(coord.address, ADMIN_TOKEN) as admin, grpc.insecure_channel(address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(inference_pb2.InferRequest(values=inference_pb2.FloatList(values=[0] * 64)))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        wait_for(lambda: bool(json.loads(identity.read_text())["device_id"]), 20, "enrolment")
        device_id = json.loads(identity.read_text())["device_id"]
        first = admin.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits",
                selector=f"device:{device_id}",
                strategy="all",
                # this host stands in for the device: its latency is the host's under whatever
                # load CI has, not the phone's, so the latency gate is not what this test checks
                # and it sends one request, not the default minimum of traffic
                gate=admin_pb2.RolloutGate(
                    soak_seconds=0.5, max_latency_ratio=1e6, min_inferences=0
                ),
            )
        )
        wait_for(lambda: admin.get_device(device_id).active_variant == built.base, 40, "activation")

        test = load_dataset("digits")
        x, y = test.x_test[:64], test.y_test[:64]
        reply = stub.Infer(
            inference_pb2.InferRequest(
                tensor=inference_pb2.Tensor(data=x.tobytes(), shape=list(x.shape), dtype="float32")
            )
        )
        assert reply.variant_id == built.base and reply.runtime in ("torch", "onnxruntime")
        pred = np.array([p.argmax for p in reply.predictions])
        assert (pred == y).mean() >= 0.85
        assert all(len(p.logits) == 10 for p in reply.predictions)
        one = stub.Infer(
            inference_pb2.InferRequest(values=inference_pb2.FloatList(values=x[0].ravel().tolist()))
        )
        assert one.predictions[0].argmax == pred[0] and one.latency_ms > 0

        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(
                inference_pb2.InferRequest(
                    values=inference_pb2.FloatList(values=[0.0] * 49, shape=[1, 1, 7, 7])
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[N, 1, 8, 8]" in (info.value.details() or "")

        # The workload's metrics reach the coordinator and its Prometheus endpoint.
        def relayed() -> bool:
            latest = admin.get_device(device_id).latest_metrics
            return all(
                k in latest
                for k in ("inference_latency_ms", "inference_error_rate", "inference_accuracy")
            )

        wait_for(relayed, 30, "inference metrics at the coordinator")
        latest = admin.get_device(device_id).latest_metrics
        assert latest["inference_error_rate"] == 0.0
        assert latest["inference_accuracy"] >= 0.85
        assert 0 < latest["battery_percent"] < 100.0
        text = urllib.request.urlopen(coord.metrics_url, timeout=5).read().decode()
        assert _metric(text, "edgefleet_inference_requests_total") > 0
        assert _metric(text, "edgefleet_inference_accuracy_ratio") >= 0.85
        battery_before = latest["battery_percent"]

        # A variant the device cannot load is refused; the previous one keeps serving.
        wait_for(lambda: admin.get_rollout(first.id).state != "running", 40, "first rollout")
        done = admin.get_rollout(first.id)
        assert done.state == "succeeded", done.message
        admin.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="broken", selector=f"device:{device_id}", strategy="all"
            )
        )
        wait_for(lambda: admin.get_device(device_id).failed_variant != "", 40, "refusal")
        device = admin.get_device(device_id)
        assert device.active_variant == built.base and device.failure_reason
        again = stub.Infer(
            inference_pb2.InferRequest(
                tensor=inference_pb2.Tensor(data=x.tobytes(), shape=list(x.shape), dtype="float32")
            )
        )
        assert again.variant_id == built.base
        assert [p.argmax for p in again.predictions] == pred.tolist()
        status = stub.GetServingStatus(inference_pb2.GetServingStatusRequest())
        assert status.requests > 64 and status.rejected >= 1 and status.errors == 0
        assert status.latency_counts[-1] == status.requests
        wait_for(
            lambda: admin.get_device(device_id).latest_metrics["battery_percent"] < battery_before,
            20,
            "battery drain",
        )
    assert agent.stop() == 0


def test_planning_fine_tuning_leaves_the_model_untouched() -> None:
    """The measuring pass must not fold its dummy input into BatchNorm statistics."""
    import torch

    from edgefleet.agent.finetune import plan_memory
    from edgefleet.zoo import ArchitectureSpec, build_model

    model = build_model(ArchitectureSpec.zoo("ds-cnn", width=0.5))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_memory(model, "full", 32, [1, 1, 8, 8], budget=1 << 30)
    assert plan.activations > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

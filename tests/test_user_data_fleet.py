"""A user's own data all the way to a simulated fleet: ``models add`` (an ``.npz`` of sensor
windows, a wav folder, an image folder) -> ``models build`` (static int8) -> a real coordinator
with simulated agents of two profiles (a Pi and a Cortex-M4) -> ``deploy --to all`` -> the
data's own recorded TEST rows sent to each device's ``InferenceService.Infer``.

Why: ``tests/test_user_data_e2e.py`` runs the same bundles in each device runtime in-process;
this one proves the path a user takes works end to end (bundle shipped, verified, activated by
a real agent, served on its local endpoint) and that what a device serves scores what the
manifest recorded for that variant on that split, so the recorded number is the one users get.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.cli.main import app
from edgefleet.devtools.simulate import SimulatedFleet
from edgefleet.modelops.data import load_dataset
from edgefleet.v1 import inference_pb2, inference_pb2_grpc
from edgefleet.variant_store import VariantStore
from tests.conftest import ENROLL_TOKEN, CoordinatorProc, cli_env, wait_for
from tests.test_frontend_pipeline import LABELS, RATE, _clip
from tests.test_user_data_e2e import write_images, write_sensor_npz

FAST = ("--offline-after", "5", "--heartbeat-interval", "0.5")
PROFILES = ("rpi4", "cortex-m4")

# name -> (how to write the data, `models add` flags)
CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "npz": (
        lambda root: write_sensor_npz(root / "gestures.npz", seed=3),
        ("--arch", "mlp", "--epochs", "8"),
    ),
    "wav": (
        lambda root: _write_wavs(root / "words", seed=3),
        ("--arch", "ds-cnn", "--width", "0.5", "--epochs", "15"),
    ),
    "images": (
        lambda root: write_images(root / "squares", seed=3),
        ("--arch", "ds-cnn", "--width", "0.5", "--epochs", "30", "--image-size", "16x16"),
    ),
}


def _write_wavs(root: Path, seed: int, per_label: int = 40) -> Path:
    """``tests/test_frontend_pipeline.py``'s three 1 s words, more of them: enough test rows
    (24) that one row of slack is a tie, not the whole story."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(LABELS):
        (root / name).mkdir(parents=True)
        for j in range(per_label):
            with wave.open(str(root / name / f"{j}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(_clip(i, rng).tobytes())
    return root


def _local(*args: str) -> dict[str, Any]:
    """The in-process CLI on a local store (the coordinator's data dir, before it starts)."""
    res = CliRunner().invoke(app, [*args, "--latency-runs", "3", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def _cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        capture_output=True,
        text=True,
        env=cli_env(address),
        timeout=60,
    )


def _infer(address: str, x: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> Any:
    request = inference_pb2.InferRequest(
        tensor=inference_pb2.Tensor(
            data=np.ascontiguousarray(x, dtype="<f4").tobytes(),
            shape=list(x.shape),
            dtype="float32",
        ),
        labels=[int(v) for v in labels],
    )
    with grpc.insecure_channel(address) as ch:
        return inference_pb2_grpc.InferenceServiceStub(ch).Infer(request, timeout=60)


def _endpoint(state_dir: Path) -> str:
    found = state_dir / "inference.json"
    return str(json.loads(found.read_text())["address"]) if found.exists() else ""


def _is_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        reply = stub.GetServingStatus(inference_pb2.GetServingStatusRequest(), timeout=5)
    return bool(reply.variant_id)


@pytest.mark.parametrize(
    "case",
    [
        "npz",
        pytest.param("wav", marks=pytest.mark.slow),
        pytest.param("images", marks=pytest.mark.slow),
    ],
)
def test_user_data_deploys_to_a_simulated_fleet_and_scores_its_recorded_accuracy(
    case: str, tmp_path: Path, coordinator_factory: Callable[..., CoordinatorProc]
) -> None:
    write, add_flags = CASES[case]
    source = write(tmp_path)
    data_dir = tmp_path / "coord"
    _local("models", "add", "user", "--dataset", str(source), *add_flags,
           "--data-dir", str(data_dir))  # fmt: skip
    _local("models", "build", "user", "--recipes", "int8-static", "--data-dir", str(data_dir))
    store = VariantStore(data_dir)
    entry = store.model("user")
    # the test rows are the ones the stored split set aside (never trained on)
    data = load_dataset(entry.dataset, data_dir)
    x_test = data.x_test_raw if data.x_test_raw is not None else data.x_test
    base = store.load(entry.base).manifest
    assert base["dataset"]["split"]["test"] == len(data.y_test) > 0

    coord = coordinator_factory(*FAST, data_dir=data_dir)
    fleet = SimulatedFleet.start(
        coordinator=coord.address,
        enroll_token=ENROLL_TOKEN,
        profiles=PROFILES,
        count=len(PROFILES),
        state_root=tmp_path / "sim",
        extra_args=["--insecure", "--inference-port", "0"],
    )
    try:
        wait_for(
            lambda: all(_endpoint(a.state_dir) for a in fleet.agents) and _online(coord) == 2,
            40,
            f"two agents online with endpoints; logs in {tmp_path / 'sim'}",
        )
        deployed = _cli(coord.address, "deploy", "user", "--to", "all", "--soak", "0.2",
                        "--min-inferences", "0", "--json")  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr
        rid = json.loads(deployed.stdout)["id"]

        def state() -> str:
            shown = _cli(coord.address, "rollout", "status", rid, "--json")
            return str(json.loads(shown.stdout)["state"])

        wait_for(lambda: state() in ("succeeded", "rolled_back", "failed"), 60, "rollout end")
        assert state() == "succeeded", _cli(
            coord.address, "rollout", "status", rid, "--json"
        ).stdout
        scored: dict[str, tuple[str, str, float, float]] = {}
        for agent in fleet.agents:
            address = _endpoint(agent.state_dir)
            wait_for(partial(_is_serving, address), 20, f"{agent.name} serving")
            reply = _infer(address, x_test, data.y_test)
            argmax = np.asarray([p.argmax for p in reply.predictions])
            accuracy = float((argmax == data.y_test).mean())
            manifest = store.load(reply.variant_id).manifest
            per_runtime = manifest["metrics"].get("runtimes", {}).get(reply.runtime, {})
            recorded = float(per_runtime.get("accuracy", manifest["metrics"]["accuracy"]))
            scored[agent.profile] = (reply.variant_id, reply.runtime, accuracy, recorded)
        print(f"\n{case}: {scored}")
        # the MCU serves a simulated MCU graph, the Pi a host runtime
        assert scored["cortex-m4"][1] in ("mcu-sim", "tflm"), scored
        assert scored["rpi4"][1] in ("onnxruntime", "litert", "torch"), scored
        assert store.load(scored["cortex-m4"][0]).manifest["precision"] == "int8"
        # what each device serves scores what the manifest recorded on the same rows (one row
        # of slack: a tie between two logits may break the other way in another runtime)
        tolerance = 1 / len(data.y_test) + 1e-9
        for variant, runtime, accuracy, recorded in scored.values():
            assert abs(accuracy - recorded) <= tolerance, (variant, runtime, scored)
        assert min(acc for _, _, acc, _ in scored.values()) > 1 / data.num_classes + 0.2
    finally:
        report = fleet.stop()
        assert not report.failed, report


def _online(coord: CoordinatorProc) -> int:
    listed = _cli(coord.address, "devices", "ls", "--json")
    if listed.returncode != 0:
        return 0
    return sum(1 for d in json.loads(listed.stdout) if d["status"] == "online")

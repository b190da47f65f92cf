"""Real Flower processes on loopback: a SuperLink, SuperNodes, our ServerApp and ClientApp.

This is the ``--local N`` path (the same ServerApp/ClientApp as on a fleet). In every run: a
failing selection and a SuperNode restarted by its supervisor. Slow (``-m slow``): 3 rounds on 2
SuperNodes that improve accuracy (tests/fl/test_fleet_federation.py shows the same on real agents
in every run), HeteroFL across a mixed fleet with a selection expression and a dropout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.fl.supernode import SuperNodeSupervisor
from edgefleet.devtools.fl_local import LocalFederation, free_port, pretrain_biased, wait_progress

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    with LocalFederation(tmp_path / "fed", num_nodes=2, alpha=0.5, seed=1) as fed:
        yield fed


@pytest.mark.slow  # the same improvement on real agents runs in tests/fl/test_fleet_federation.py
@pytest.mark.timeout(240)
def test_rounds_improve_accuracy_on_clients_held_out_data(
    federation: LocalFederation, tmp_path: Path
) -> None:
    init = pretrain_biased("mlp", tmp_path / "init.npz")
    out = federation.run(
        {"num-rounds": 3, "min-devices": 2, "init-path": str(init), "lr": 0.05,
         "local-epochs": 2, "strategy": "fedavg"},
    )  # fmt: skip
    doc = wait_progress(out, timeout=200)
    assert doc["state"] == "succeeded", doc.get("reason")
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(sorted(r["participants"]) == ["sim-000", "sim-001"] for r in rounds)
    before = rounds[0]["client_eval_acc"]  # the base model, scored by the clients
    after = doc["final"]["client_eval_acc"]
    assert after > before + 0.1, (before, after)
    # each device's own held-out accuracy, before (round 1's received model) and after
    assert sorted(rounds[0]["device_eval_acc"]) == ["sim-000", "sim-001"]
    assert sorted(doc["final"]["device_eval_acc"]) == ["sim-000", "sim-001"]
    assert doc["final"]["test_acc"] > doc["initial"]["test_acc"]
    assert (out / "final.npz").exists()


@pytest.mark.timeout(120)
def test_bad_selection_fails_the_run_with_a_reason(federation: LocalFederation) -> None:
    out = federation.run({"num-rounds": 1, "min-devices": 2, "select": "battery>90"}, name="sel")
    doc = wait_progress(out, timeout=100)
    assert doc["state"] == "failed"
    assert "only 0 device(s) match battery>90" in doc["reason"]


@pytest.mark.timeout(60)
def test_supernode_is_restarted_when_killed_and_stopped_on_shutdown(tmp_path: Path) -> None:
    node = SuperNodeSupervisor(
        f"127.0.0.1:{free_port()}",  # nothing listens: the SuperNode keeps retrying
        {"device-id": "dev-x", "data-path": "/nonexistent"},
        tmp_path / "node",
        port=free_port(),
    )
    node.backoff = 0.1
    with node:
        first = node.pid
        assert first is not None and node.running()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (node.running() and node.pid != first):
            time.sleep(0.1)
        assert node.running() and node.pid != first
        assert node.restarts == 1
        second = node.pid
    assert not node.running()
    assert second is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(second, 0)  # the whole group (SuperExec included) is gone


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_heterofl_mixed_fleet_with_selection_and_a_dropout(tmp_path: Path) -> None:
    profiles = ("rpi4", "cortex-m7", "esp32-s3", "cortex-m4", "phone-budget", "rpi-zero2w")
    with LocalFederation(tmp_path / "fed", num_nodes=6, profiles=profiles, seed=2) as fed:
        init = pretrain_biased("mlp", tmp_path / "init.npz")
        out = fed.run(
            {"num-rounds": 3, "min-devices": 3, "init-path": str(init), "strategy": "heterofl",
             "select": "battery>30 and profile!=phone-budget", "local-epochs": 2,
             "round-timeout": 60.0},
        )  # fmt: skip
        # drop one selected device after round 1: round 2 must go on without it
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            progress = out / "progress.json"
            if progress.exists() and json.loads(progress.read_text())["rounds"]:
                break
            time.sleep(0.2)
        fed.supernodes[5].stop()
        doc = wait_progress(out, timeout=500)
    assert doc["state"] == "succeeded", doc.get("reason")
    devices = {d["device"]: d for d in doc["devices"].values()}
    assert not devices["sim-004"]["selected"]  # phone-budget excluded by the expression
    assert devices["sim-003"]["width"] < 1.0  # the cortex-m4 trains a slice
    assert doc["final"]["test_acc"] > doc["initial"]["test_acc"]
    assert "sim-005" in doc["rounds"][0]["participants"]
    assert "sim-005" not in doc["rounds"][-1]["participants"]

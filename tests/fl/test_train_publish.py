"""``edgefleet train start`` on a registered model: the result is registered, rebuilt, deployed.

The refusals are checked before anything starts (a federation takes tens of seconds, so a model
the federated app cannot train must not get that far); the end-to-end test runs a real loopback
federation from the store model's weights, then a real coordinator creates the rollout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli.train_cmds import train_app
from edgefleet.variant_store import ModelEntry, VariantStore
from tests.conftest import ADMIN_TOKEN, CoordinatorProc

runner = CliRunner()


def _fake_entry(store: VariantStore, name: str, arch: dict[str, object], dataset: str) -> None:
    """An index entry only: the refusals read the architecture, never the bundle."""
    store.add_model(ModelEntry(name=name, architecture=arch, dataset=dataset, base="0" * 64))


def test_models_the_federated_app_does_not_train_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    from edgefleet.zoo import ArchitectureSpec

    store = VariantStore(tmp_path / "data")
    _fake_entry(store, "narrow", ArchitectureSpec.zoo("ds-cnn", width=0.5).to_json(), "digits")
    _fake_entry(store, "mine", {"name": "custom", "config": {}, "input_shape": [1, 8, 8]}, "digits")
    _fake_entry(store, "other-data", ArchitectureSpec.zoo("mlp").to_json(), "cifar-tiny")
    runs = tmp_path / "runs"
    runs.mkdir()

    def start(*args: str, code: int = 1) -> str:
        res = runner.invoke(
            train_app,
            ["start", *args, "--local", "2", "--data-dir", str(tmp_path / "data"),
             "--runs-dir", str(runs)],
        )  # fmt: skip
        assert res.exit_code == code, res.output
        return " ".join(res.output.replace("│", " ").split())

    assert "not the one the federated app trains" in start("narrow")
    assert "is a 'custom' architecture" in start("mine")
    assert "was trained on 'cifar-tiny'" in start("other-data")
    assert "neither an architecture the federated app trains" in start("nope")
    # usage errors (exit 2), before the store is even read
    assert "is an architecture" in start("mlp", "--rebuild", code=2)
    bad_strategy = start("mlp", "--deploy", "all", "--deploy-strategy", "x", code=2)
    assert "'x' is not one of 'all', 'canary', 'waves'" in bad_strategy
    assert not any(runs.iterdir())  # nothing was started or recorded


@pytest.mark.slow
def test_finished_run_becomes_a_new_model_rebuilt_and_rolled_out(
    tmp_path: Path,
    coordinator_factory: Callable[..., CoordinatorProc],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.cli import common
    from edgefleet.modelops.build import BuildOptions, build_variants, register_model
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import ArchitectureSpec
    from tests.fleetkit import ScriptedDevice

    data = tmp_path / "coord"
    store = VariantStore(data)
    fast = BuildOptions(latency=LatencyConfig(warmup=1, runs=5))
    spec = ArchitectureSpec.zoo("mlp")
    base = register_model(store, "digits-mlp", spec, "digits", epochs=2, options=fast)
    build_variants(store, "digits-mlp", ["fp16"], options=fast)
    base_acc = store.load(base.base).manifest["metrics"]["accuracy"]

    coord = coordinator_factory(data_dir=data)
    ScriptedDevice.register(coord.address, "pi-0", "rpi4")
    monkeypatch.setattr(common.TRANSPORT, "insecure", True)  # the fixture's coordinator
    res = runner.invoke(
        train_app,
        ["start", "digits-mlp", "--local", "2", "--rounds", "2", "--local-epochs", "2",
         "--rebuild", "--deploy", "all", "--data-dir", str(data), "--latency-runs", "5",
         "--coordinator", coord.address, "--admin-token", ADMIN_TOKEN,
         "--runs-dir", str(tmp_path / "runs"), "--name", "r1", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["state"] == "succeeded"
    # the federation started from the registered model's weights, not a fresh init
    assert doc["initial"]["test_acc"] == pytest.approx(base_acc, abs=0.02)

    new = store.model("digits-mlp-ft-r1")
    assert doc["registered"]["model"] == new.name and doc["registered"]["base"] == new.base
    assert new.architecture == base.architecture and new.dataset == "digits"
    new_base = store.load(new.base).manifest
    assert new_base["metrics"]["accuracy"] == pytest.approx(doc["final"]["test_acc"], abs=0.02)
    assert [v["recipe"] for v in doc["registered"]["variants"]] == ["fp16"]
    assert len(new.variants) == 2 and store.load(new.variants[1]).manifest["recipe_label"] == "fp16"

    rollout = doc["rollout"]
    assert rollout["model"] == new.name and rollout["selector"] == "all"
    [device] = rollout["devices"]
    assert device["name"] == "pi-0" and device["variant_id"] in new.variants

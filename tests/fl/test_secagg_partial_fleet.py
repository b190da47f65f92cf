"""SecAgg+ on real processes: over the API through a coordinator, and with light-scope devices.

1. ``edgefleet train start --secure-agg`` through a real coordinator's TrainingService (its own
   ``--superlink local``) with three real SuperNodes: a SecAgg+ round completes and the
   ServerApp's record, read back over the API, says so.
2. A loopback federation of three memory-tight devices (DS-CNN; head-only and sparse plans):
   under SecAgg+ each tensor is averaged over the devices that trained it, so the tensors no
   device trained come out of the secure sum *exactly* as they went in (their zeros quantize
   without error), and the trained ones moved -- whole models (their untrained copies summed
   with quantization noise) could not give both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from edgefleet.agent.fl.supernode import SuperNodeSupervisor, node_config_for
from edgefleet.cli.train_cmds import train_app
from edgefleet.devtools.fl_local import LocalFederation, wait_progress
from edgefleet.fl.contract import FAST_POLL_ENV, Node
from edgefleet.fl.partition import make_shards, save_shard
from edgefleet.fleet_dir import init_fleet
from edgefleet.flower import model as fl_model
from edgefleet.modelops.data import load_dataset
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, free_port, wait_for

SUPERLINK_KEY = "{edgefleet}:fl:superlink"
#: a DS-CNN whose light plans are quick (test_light_clientapp's, 10 classes)
ARCH_CONFIG = {"channels": [8, 16, 16], "strides": [1, 1], "num_classes": 10, "in_channels": 1}
#: training budgets: head only (270 kB) and the sparse update (350 kB), never full
LIGHT = (270_000, 350_000, 350_000)
#: what a sparse update trains (biases, the last pointwise convs, the head); head: the last two
SPARSE = {"stem.1.bias", "blocks.0.1.bias", "blocks.0.4.bias", "blocks.1.1.bias",
          "blocks.1.4.bias", "blocks.0.3.weight", "blocks.1.3.weight", "classifier.weight",
          "classifier.bias"}  # fmt: skip


@pytest.fixture
def three_supernodes(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Three SuperNodes (what agents start) with tiny digits shards, against a SuperLink."""
    started: list[SuperNodeSupervisor] = []

    def start(superlink: str) -> None:
        ds = load_dataset("digits")
        shards = make_shards(ds.x_train[:300], ds.y_train[:300], 3, 1.0, 0)
        for i, shard in enumerate(shards):
            path = save_shard(shard, tmp_path / "shards" / f"{i}.npz")
            config = node_config_for(f"dev-{i}", "rpi4", 4 << 30, str(path), battery=80)
            node = SuperNodeSupervisor(
                superlink, config, tmp_path / f"node-{i}", port=free_port(),
                env=dict(FAST_POLL_ENV),
            )  # fmt: skip
            node.start()
            started.append(node)

    yield start
    for node in started:
        node.stop(timeout=3.0)


@pytest.mark.slow  # four message exchanges per round on real processes: minutes under load
@pytest.mark.timeout(900)
def test_a_secure_round_over_the_api(
    redis_url: str,
    coordinator_factory: Callable[..., CoordinatorProc],
    three_supernodes: Callable[[str], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    coordinator = coordinator_factory(
        "--redis-url", redis_url, "--superlink", "local", "--fleet-dir", str(fleet),
        data_dir=tmp_path / "coord",
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_for(lambda: client.get(SUPERLINK_KEY) is not None, 120, "the fleet's SuperLink")
    three_supernodes(json.loads(client.get(SUPERLINK_KEY) or "{}")["address"])

    nowhere = tmp_path / "elsewhere"  # no data dir, no run dir: everything over the API
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    monkeypatch.delenv("EDGEFLEET_DATA_DIR", raising=False)
    monkeypatch.setenv("EDGEFLEET_COORDINATOR", coordinator.address)
    monkeypatch.setenv("EDGEFLEET_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("EDGEFLEET_INSECURE", "1")
    res = CliRunner().invoke(
        train_app,
        ["start", "mlp", "--secure-agg", "--rounds", "1", "--min-devices", "3", "--name", "sec",
         "--round-timeout", "600", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["state"] == "succeeded", doc.get("reason")
    assert [r["round"] for r in doc["rounds"]] == [1]
    assert sorted(doc["rounds"][0]["participants"]) == ["dev-0", "dev-1", "dev-2"]
    # the rounds are the ServerApp's own record: it ran SecAgg+, so it saw no device's model
    assert doc["rounds"][0]["secure_agg"] is True
    assert list(nowhere.iterdir()) == []


@pytest.mark.slow  # three devices plan their rounds with measured dry runs, then SecAgg+
@pytest.mark.timeout(1200)
def test_light_devices_under_secagg_average_only_what_they_trained(tmp_path: Path) -> None:
    init = fl_model.save_params(
        fl_model.initial_params("ds-cnn", seed=2, override=json.dumps(ARCH_CONFIG)),
        tmp_path / "init.npz",
    )
    tight = {i: {Node.RAM_BYTES: b, Node.BUDGET_FRACTION: 1.0} for i, b in enumerate(LIGHT)}
    with LocalFederation(tmp_path / "fed", num_nodes=3, seed=2, alpha=1.0, node_facts=tight) as fed:
        out = fed.run(
            {"arch": "ds-cnn", "arch-config": json.dumps(ARCH_CONFIG), "init-path": str(init),
             "num-rounds": 1, "min-devices": 3, "batch-size": 16, "secure-agg": True,
             "final-evaluate": False, "round-timeout": 900.0},
            name="light",
        )  # fmt: skip
        doc = wait_progress(out, timeout=1100)
    assert doc["state"] == "succeeded", doc.get("reason")
    (rnd,) = doc["rounds"]
    assert rnd["secure_agg"] and rnd["secure_agg_partial"] and len(rnd["participants"]) == 3
    before = fl_model.load_params(str(init))
    after = fl_model.load_params(str(out / "final.npz"))
    untrained = set(before) - SPARSE
    assert untrained  # the depthwise and stem convs, BatchNorm scales and statistics
    for k in untrained:  # nobody trained them: exactly the global model, not a noisy mean
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert all(not np.allclose(after[k], before[k]) for k in ("classifier.weight",))

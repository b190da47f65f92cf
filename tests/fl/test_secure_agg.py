"""SecAgg+ (Flower's workflow and mod) and client-side DP on our ServerApp/ClientApp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from edgefleet.agent.fl.clientapp import LEGACY_FIT_CONFIG, _train_legacy
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.devtools.fl_local import LocalFederation, pretrain_biased, wait_progress
from edgefleet.fl.partition import make_shards, save_shard
from edgefleet.flower import model as fl_model


def test_the_clientapp_answers_secaggplus_mods_legacy_fit_records(tmp_path: Path) -> None:
    """secaggplus_mod calls the train handler with FitIns records and masks its FitRes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=40)
    shard = save_shard(make_shards(x, y, 1, 1.0, 0)[0], tmp_path / "shard.npz")
    params = fl_model.initial_params("mlp", seed=1)
    names = list(params)
    fitins = FitIns(
        ndarrays_to_parameters([params[k] for k in names]),
        {"param-names": json.dumps(names), "lr": 0.05, "arch": "mlp"},
    )
    content = compat.fitins_to_recorddict(fitins, keep_input=True)
    assert LEGACY_FIT_CONFIG in content.config_records
    cfg = node_config_for("d", "rpi4", 4 << 30, str(shard))
    out = _train_legacy(content, Context(1, 2, cfg, RecordDict(), {}))  # type: ignore[arg-type]
    fitres = compat.recorddict_to_fitres(out, keep_input=True)
    trained = parameters_to_ndarrays(fitres.parameters)
    assert fitres.num_examples > 0
    assert [t.shape for t in trained] == [params[k].shape for k in names]  # same order
    assert any(not np.allclose(t, params[k]) for t, k in zip(trained, names, strict=True))


@pytest.mark.slow  # four message exchanges per round: minutes on a loaded machine
@pytest.mark.timeout(900)
def test_secure_rounds_aggregate_without_seeing_a_device_and_client_dp_clips(
    tmp_path: Path,
) -> None:
    with LocalFederation(tmp_path / "fed", num_nodes=3, seed=3, alpha=1.0) as fed:
        init = pretrain_biased("mlp", tmp_path / "init.npz")
        base = {"num-rounds": 2, "min-devices": 3, "init-path": str(init),
                "final-evaluate": False, "round-timeout": 300.0}  # fmt: skip
        secure = wait_progress(fed.run({**base, "secure-agg": True}, name="sec"), timeout=800)
        dp = wait_progress(
            fed.run({**base, "dp": "client-fixed", "dp-clip": 0.5}, name="dp"), timeout=400
        )
    assert secure["state"] == "succeeded", secure.get("reason")
    rounds = secure["rounds"]
    assert all(r["secure_agg"] and len(r["participants"]) == 3 for r in rounds)
    assert "device_eval_acc" not in rounds[0]  # the server never sees a device's own model
    assert rounds[-1]["test_acc"] > secure["initial"]["test_acc"]
    assert all(r["bytes_up"] > 0 for r in rounds)
    assert dp["state"] == "succeeded", dp.get("reason")
    assert len(dp["rounds"]) == 2

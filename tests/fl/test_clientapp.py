"""The ClientApp's light parts: module imports, reported facts, memory budget, numpy MLP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from flwr.app import Context, RecordDict

from edgefleet.agent.fl.clientapp import _facts
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.fl import mlp_numpy
from edgefleet.fl.budget import training_bytes, widest_activation


def test_clientapp_module_does_not_import_torch() -> None:
    code = "import sys, edgefleet.agent.fl.clientapp; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_facts_come_from_node_config_and_the_live_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"battery": 12.5, "health": "degraded", "other": 1}))
    cfg = node_config_for(
        "dev-1", "rpi4", 4 << 30, "/data.npz", battery=90, labels={"site": "a"},
        status_path=str(status),
    )  # fmt: skip
    facts = _facts(Context(1, 2, cfg, RecordDict(), {}))  # type: ignore[arg-type]
    assert facts == {
        "device-id": "dev-1", "profile": "rpi4", "ram-bytes": 4 << 30, "battery": 12.5,
        "health": "degraded", "labels": "site=a",
    }  # fmt: skip


def test_training_budget_counts_weights_grads_momentum_and_activations() -> None:
    assert widest_activation([(128, 64), (128,), (10, 128)]) == 128
    assert widest_activation([(32, 1, 3, 3), (64, 32, 1, 1)]) == 64 * 64
    assert training_bytes(1000, 8, 128) == 4 * (3000 + 2 * 8 * 128)


def test_numpy_mlp_learns_and_matches_shapes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(200, -1)[:, 0] > 0).astype(np.int64)
    params = {
        "features.1.weight": (rng.normal(size=(16, 64)) * 0.1).astype(np.float32),
        "features.1.bias": np.zeros(16, np.float32),
        "classifier.weight": (rng.normal(size=(2, 16)) * 0.1).astype(np.float32),
        "classifier.bias": np.zeros(2, np.float32),
    }
    _, before = mlp_numpy.evaluate(params, x, y)
    new, _ = mlp_numpy.train(params, x, y, epochs=20, lr=0.1)
    _, after = mlp_numpy.evaluate(new, x, y)
    assert after > max(before, 0.9)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in params.items()}


def test_a_shard_of_raw_audio_becomes_the_models_features_on_the_device(tmp_path: Path) -> None:
    """With the model's frontend in the round's config, the device computes the MFCC itself
    from the raw audio it holds (the same code as serving), without torch."""
    from edgefleet.agent.fl.clientapp import local_shard
    from edgefleet.fl.contract import TrainConfig
    from edgefleet.fl.partition import Shard, save_shard
    from edgefleet.frontend import FrontendSpec
    from edgefleet.frontend.mfcc import mfcc

    rng = np.random.default_rng(0)
    audio = (rng.normal(size=(6, 1, 1, 16000)) * 0.1).astype(np.float32)
    path = save_shard(Shard(audio[:4], np.arange(4), audio[4:], np.arange(2)), tmp_path / "s.npz")
    cfg = node_config_for("dev-1", "rpi4", 4 << 30, str(path), battery=90)
    ctx = Context(1, 2, cfg, RecordDict(), {})  # type: ignore[arg-type]
    spec = FrontendSpec()
    shard = local_shard(ctx, {TrainConfig.FRONTEND: json.dumps(spec.to_dict())})
    assert shard.x_train.shape == (4, 1, 49, 10)
    assert np.allclose(shard.x_eval, mfcc(audio[4:], spec))
    assert local_shard(ctx, {}).x_train.shape == (4, 1, 1, 16000)  # no frontend: as stored

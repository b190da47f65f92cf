"""Keyword spotting on the device: simulated devices hold whole voices as raw audio, and a kws
variant fine-tunes on them through the frontend code the federated ClientApp uses.

Uses the tiny built-in kws set (10 voices, 240 clips, synthesized with espeak-ng in seconds)
and a DS-CNN bundle written here (a real signed bundle the torch runtime loads; training it
on the coordinator is not what is tested).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from edgefleet.agent.finetune import FinetuneRefused, device_features, finetune, prepare
from edgefleet.agent.runtimes import Runtime, open_runtime
from edgefleet.catalog import get_profile
from edgefleet.datasets.core import DatasetError
from edgefleet.datasets.kws import load_kws
from edgefleet.devtools.sim_data import group_local_data
from edgefleet.fl.features import featurize_shard
from edgefleet.fl.partition import Shard, load_shard
from edgefleet.frontend import FrontendSpec
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec, build_model

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "espeak-ng"], capture_output=True).returncode != 0,
    reason="espeak-ng is not installed (scripts/install_prereqs.sh)",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kws-local")
    load_kws(root, size="tiny", quiet=True)
    return root


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A DS-CNN kws variant with the MLPerf Tiny MFCC frontend, in the torch runtime."""
    torch.manual_seed(0)
    spec = ArchitectureSpec.zoo("ds-cnn-kws", width=0.25, num_classes=12, input_shape=(1, 49, 10))
    weights = save({k: v.contiguous() for k, v in build_model(spec).state_dict().items()})
    manifest = {
        "model": "kws",
        "recipe_label": "fp32",
        "recipe": [{"kind": "fp32", "params": {}}],
        "precision": "fp32",
        "architecture": spec.to_json(),
        "input": {
            "shape": [1, 1, 49, 10],
            "dtype": "float32",
            "frontend": FrontendSpec().to_dict(),
            "raw": {"shape": [1, 16000], "dtype": "float32"},
        },
        "runtimes": {"torch": {"file": "weights.safetensors", "dtype": "float32"}},
        "metrics": {},
    }
    store = VariantStore(tmp_path_factory.mktemp("kws-store"))
    bundle = store.load(store.put(manifest, {"weights.safetensors": weights}))
    rt = open_runtime("torch", get_profile("rpi4"))
    rt.load(bundle)
    return rt


def test_devices_get_whole_voices_as_raw_audio(data_dir: Path, tmp_path: Path) -> None:
    data = load_kws(data_dir, size="tiny")
    assert data.groups is not None
    local = group_local_data("kws:tiny", 3, tmp_path, data_dir=data_dir)
    owned = [set(g) for g in local.groups]
    assert all(owned) and not (owned[0] & owned[1] or owned[0] & owned[2] or owned[1] & owned[2])
    for path, voices in zip(local.paths, local.groups, strict=True):
        shard = load_shard(path)
        assert shard.x_train.shape[1:] == (1, 1, 16000)  # what the microphone gave
        rows = np.isin(data.groups, voices)
        assert len(shard.y_train) + len(shard.y_eval) == int(rows.sum())
        # every train/held-out clip is one of this device's voices' clips
        mine = {data.x[i].tobytes() for i in np.flatnonzero(rows)}
        assert all(x.tobytes() in mine for x in [*shard.x_train, *shard.x_eval])
    again = group_local_data("kws:tiny", 3, tmp_path / "again", data_dir=data_dir)
    assert again.groups == local.groups  # deterministic: same data, same devices
    assert load_shard(again.paths[1]).y_eval.tolist() == load_shard(local.paths[1]).y_eval.tolist()


def test_grouped_local_data_refusals(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="11 devices; each device needs a whole group"):
        group_local_data("kws:tiny", 11, tmp_path, data_dir=data_dir)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros((6, 3), np.float32), y=np.arange(6) % 2)
    with pytest.raises(DatasetError, match="has no 'groups' array"):
        group_local_data(str(plain), 2, tmp_path, data_dir=data_dir)
    with pytest.raises(DatasetError, match="no such file"):
        group_local_data(str(tmp_path / "missing.npz"), 2, tmp_path)


def test_simulate_refuses_bad_local_data_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "edgefleet.cli.main", "--insecure", "simulate",
            "--token", "t", "--devices", "2", "--state-dir", str(tmp_path / "sim"),
            "--local-data", str(tmp_path / "missing.npz"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing.npz: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sim" / "sim-phone-flagship-000").exists()  # nothing started


def test_a_kws_variant_finetunes_on_the_devices_raw_clips(
    runtime: Runtime, data_dir: Path, tmp_path: Path
) -> None:
    local = group_local_data("kws:tiny", 2, tmp_path, data_dir=data_dir)
    raw = load_shard(local.paths[0])
    # the features the device trains on are the ClientApp's (one shared function) and the
    # ones it serves with
    feats = device_features(runtime, raw)
    spec = runtime.frontend
    assert spec is not None
    expected = featurize_shard(raw, spec)
    np.testing.assert_array_equal(feats.x_train, expected.x_train)
    np.testing.assert_array_equal(feats.x_eval, runtime.features(raw.x_eval))
    served = float((runtime.infer(raw.x_eval).argmax(1) == raw.y_eval).mean())

    result = finetune(runtime, raw, "tinytl", epochs=2, batch_size=16, lr=0.05)
    assert result.accuracy_before == pytest.approx(served)
    assert result.steps == 2 * -(-len(raw.y_train) // 16)
    assert result.plan.activations < result.plan.working  # masks, not activations

    bad = Shard(raw.x_train[:, :, :, :100], raw.y_train, raw.x_eval[:, :, :, :100], raw.y_eval)
    with pytest.raises(FinetuneRefused, match=r"local data rows are \[1, 1, 100\]"):
        finetune(runtime, bad, "tinytl", epochs=1)


def test_the_sparse_update_trains_as_many_layers_as_the_budget_allows(runtime: Runtime) -> None:
    plans = {k: prepare(runtime, "sparse", 1 << 40, 16, sparse_layers=k).plan for k in (1, 2)}
    assert plans[1].total < plans[2].total
    between = (plans[1].total + plans[2].total) // 2
    chosen = prepare(runtime, "sparse", between, 16, sparse_layers=2)
    assert len(chosen.trained_layers) == 1 and chosen.plan.total <= between
    assert prepare(runtime, "auto", between, 16).plan.scope == "sparse"
    below = plans[1].total - 1
    assert prepare(runtime, "auto", below, 16).plan.scope == "tinytl"
    with pytest.raises(FinetuneRefused, match=r"sparse fine-tuning at batch 16 needs \d+ bytes"):
        prepare(runtime, "sparse", below, 16)

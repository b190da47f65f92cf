"""What the demo trains, compresses, deploys and fine-tunes: one task per dataset.

``kws`` (the default) is keyword spotting at MLPerf Tiny's shape: the built-in espeak-ng set, the
MFCC frontend in the model, the reference DS-CNN; its federated step fine-tunes the deployed
model itself on devices that each hold one voice the model never heard (personalization).
``digits`` is the old smoke task (8x8 digits; int8 costs nothing there), whose federated step
starts an MLP from a biased subset so two rounds visibly improve it.

Why the budgets differ: a device label ``latency-slo-ms`` is the per-inference budget of the
application that device serves; a keyword spotter runs once per 1 s window, a camera pipeline
on a Zero 2 W has a frame budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TASKS", "DemoTask", "OwnModelFederation", "kws_fl_inputs"]


@dataclass(frozen=True)
class DemoTask:
    """One demo task: the model to register and build, and how its fleet is set up."""

    model: str
    dataset: str
    add_args: tuple[str, ...]
    recipes: tuple[str, ...]
    budgets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: the federated step: "biased-mlp" (digits) or "own-model" (fine-tune the deployed model)
    federated: str = "biased-mlp"


TASKS: dict[str, DemoTask] = {
    "kws": DemoTask(
        model="kws",
        dataset="kws",
        # the MLPerf Tiny reference net at full width (23k parameters; at width 0.5 the base
        # reached only ~78 % on the held-out voices)
        add_args=("--arch", "ds-cnn-kws"),
        recipes=(
            "fp16",
            "int8-static",
            "prune-channels:ratio=0.5:epochs=4+int8-static",
            "distill:width=0.5:epochs=10+int8-static",
        ),
        # a Zero 2 W answers within 5 ms so it can run the spotter every 20 ms frame hop; a
        # Cortex-M4 spots keywords four times a second (250 ms per 1 s window)
        budgets={"rpi-zero2w": {"latency-slo-ms": "5"}, "cortex-m4": {"latency-slo-ms": "250"}},
        federated="own-model",
    ),
    "digits": DemoTask(
        model="digits",
        dataset="digits",
        add_args=("--arch", "ds-cnn", "--width", "0.5"),
        recipes=(
            "fp16",
            "int8-static",
            "prune-channels:ratio=0.5:epochs=4+int8-static",
            "distill:width=0.5:epochs=10",
            "distill:width=0.25:epochs=10+int8-static",
        ),
        budgets={"rpi-zero2w": {"latency-slo-ms": "1.5"}, "cortex-m4": {"latency-slo-ms": "10"}},
    ),
}


@dataclass(frozen=True)
class OwnModelFederation:
    """Inputs of a federated run that fine-tunes a registered model on the devices' voices."""

    arch: str
    arch_config: dict[str, Any]
    init: Path
    shards: list[Path]
    groups: list[str]
    #: the model's frontend (JSON) when the shards hold raw audio, else ""
    frontend: str = ""


def kws_fl_inputs(data_dir: Path, model: str, devices: int, out: Path) -> OwnModelFederation:
    """The base variant's weights as the global model; each device holds voices it never heard.

    The devices' voices are the validation and test voices (never trained on), dealt round-robin
    so each device holds a few speakers -- its users; what federated fine-tuning adds is
    adaptation to the fleet's own speakers. Each shard keeps 40 % of its clips held out (per
    class) for the before/after accuracy. With one voice per device (72 clips: 4 per class to
    train on) the before/after difference is within the noise of 24 held-out clips; a few
    voices per device make it measurable (``benchmarks/fl_kws.py`` runs one voice per device).
    """
    from safetensors.numpy import load_file

    from edgefleet.fl.partition import group_shards, save_shard
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset

    models = json.loads((data_dir / "models.json").read_text())["models"]
    entry = models[model]
    manifest = json.loads((data_dir / "variants" / entry["base"] / "manifest.json").read_text())
    arch = manifest["architecture"]
    weights = load_file(str(data_dir / "variants" / entry["base"] / "weights.safetensors"))
    init = fl_model.save_params(
        {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}, out / "init.npz"
    )
    data = load_dataset(entry["dataset"], data_dir)
    src = data.source
    if src is None or src.groups is None:
        raise ValueError(f"dataset {entry['dataset']} has no groups to give each device")
    rows = np.concatenate([src.val, src.test])
    # a device holds what its microphone gave it (raw audio) when the model has a frontend, and
    # computes the features itself, as it does when serving
    if data.frontend is not None:
        x_local = src.x[rows]
    else:
        x_local = np.concatenate([data.x_val, data.x_test])
    voices = src.groups[rows]
    names = sorted(set(voices.tolist()))
    owner = {v: i % devices for i, v in enumerate(names)}
    device_of = np.asarray([f"device-{owner[v]}" for v in voices])
    shards = group_shards(x_local, src.y[rows], device_of, eval_fraction=0.4)
    paths = [
        save_shard(shards[f"device-{i}"], out / "shards" / f"device-{i}.npz")
        for i in range(devices)
    ]
    held = [",".join(v for v in names if owner[v] == i) for i in range(devices)]
    frontend = json.dumps(data.frontend) if data.frontend is not None else ""
    return OwnModelFederation(arch["name"], dict(arch["config"]), init, paths, held, frontend)

"""What a simulated fleet trains: the model family, its data on the devices, its test set.

Why a module of its own: :mod:`edgefleet.devtools.fl_sim` is the engine (the fleet's profiles,
the apps, Ray); this is the task, the part that differs between model families. Three, the
families the fleet deploys:

* ``mlp`` on digits (the numpy MLP, no torch on the devices): each device draws its rows from
  its group's label-skewed part of the digits training split (Dirichlet, a little per-group
  sensor noise), as before.
* ``resnet-8`` on the same digits shards (MLPerf Tiny's image-classification family; the zoo's
  default config is sized for the 8x8 digits, so HeteroFL's width slices apply). The only image
  data the project ships is digits; anything larger would need a download.
* ``ds-cnn-kws`` on the built-in ``kws`` set, non-IID by voice as a real fleet is (one device
  hears its owner): each group is one training voice, and a device holds that voice's **raw
  audio**; the round's ``frontend`` makes every device compute the MFCC itself, through
  :func:`edgefleet.fl.features.featurize_shard`, exactly as the ClientApp does on the fleet.
  The server scores on the test split's voices, which no device holds; the run starts from
  DS-CNN pre-trained centrally on a few other training voices (the deployed model the fleet
  fine-tunes; ``base_voices``). Devices of one voice
  share one shard file (1,000 devices x 40 one-second clips as float32 would be 2.5 GB of disk
  for the same clips). DS-CNN's config is MLPerf Tiny's (an ``arch-config`` override), which
  the server cannot slice by width, so it runs FedAvg/FedProx: every device trains the whole
  model, in the scope its memory fits.

Scope mix: a conv-net device plans its round under its profile's memory (full, sparse, TinyTL,
head: :func:`edgefleet.agent.fl.torch_train.plan_scope`) and reports how many parameters it
trained; :class:`ScopeTable` maps that count back to the scope (every scope of every width
trains a different count), so each round can say how many devices trained what.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.fl.partition import Shard, make_shards, save_shard

__all__ = [
    "MODELS",
    "ScopeTable",
    "TaskData",
    "TaskDefaults",
    "task_defaults",
    "write_task_data",
]

#: model family -> the data it trains on
MODELS: Mapping[str, str] = {"mlp": "digits", "resnet-8": "digits", "ds-cnn-kws": "kws"}


@dataclass(frozen=True)
class TaskDefaults:
    """A family's training settings when the command line gives none."""

    lr: float
    local_epochs: int
    batch_size: int
    strategy: str


_DEFAULTS = {
    "mlp": TaskDefaults(0.1, 5, 16, "heterofl"),
    "resnet-8": TaskDefaults(0.05, 2, 16, "heterofl"),
    # HeteroFL needs width-scalable configs; MLPerf Tiny's DS-CNN is an override
    "ds-cnn-kws": TaskDefaults(0.05, 3, 16, "fedavg"),
}


def task_defaults(model: str) -> TaskDefaults:
    """The defaults of ``model`` (a :data:`MODELS` key)."""
    return _DEFAULTS[model]


@dataclass(frozen=True)
class TaskData:
    """What the written task adds to the run: the shard of each group, and run settings."""

    #: the shard file each device reads, by partition
    device_paths: Sequence[Path]
    #: the run config keys the task fixes (``arch``, ``arch-config``, ``frontend``, ...)
    run_config: Mapping[str, object]
    #: what the groups are, for the record (``digits: label-skewed parts``, ``kws: voices``)
    describe: str


def _device_rows(group: Shard, samples: int, rng: np.random.Generator) -> Shard:
    """``samples`` train rows and a quarter as many held-out rows (at least one), drawn
    without replacement from ``group``."""
    n_train = min(samples, len(group.y_train))
    n_eval = min(max(1, samples // 4), len(group.y_eval))
    tr = rng.choice(len(group.y_train), n_train, replace=False)
    ev = rng.choice(len(group.y_eval), n_eval, replace=False)
    return Shard(group.x_train[tr], group.y_train[tr], group.x_eval[ev], group.y_eval[ev])


def write_task_data(
    root: Path,
    model: str,
    groups: int,
    device_groups: Sequence[int],
    *,
    samples: int,
    alpha: float,
    seed: int,
    data_dir: Path | None,
    kws_size: str,
    base_voices: int = 6,
) -> TaskData:
    """Write ``root/test.npz`` and the devices' shard files (``device_groups``: each
    partition's group); raises ``ValueError`` (one line) when the data cannot serve them."""
    root.mkdir(parents=True, exist_ok=True)
    if MODELS[model] == "kws":
        return _write_kws(
            root, groups, device_groups, samples, seed, data_dir, kws_size, base_voices
        )
    return _write_digits(root, model, groups, device_groups, samples, alpha, seed)


def _write_digits(
    root: Path,
    model: str,
    groups: int,
    device_groups: Sequence[int],
    samples: int,
    alpha: float,
    seed: int,
) -> TaskData:
    """Every device its own rows of its group's part (8 KB a device: a file each)."""
    from edgefleet.modelops.data import load_dataset

    ds = load_dataset("digits")
    np.savez(root / "test.npz", x=ds.x_test, y=ds.y_test)
    parts = make_shards(ds.x_train, ds.y_train, groups, alpha=alpha, seed=seed, noise=0.05)
    paths = []
    for partition, group in enumerate(device_groups):
        rng = np.random.default_rng([seed, partition, 11])
        shard = _device_rows(parts[group], samples, rng)
        paths.append(save_shard(shard, root / "data" / f"vdev-{partition:05d}.npz"))
    return TaskData(paths, {"arch": model}, f"{groups} label-skewed digits parts")


def _write_kws(
    root: Path,
    groups: int,
    device_groups: Sequence[int],
    samples: int,
    seed: int,
    data_dir: Path | None,
    size: str,
    base_voices: int,
) -> TaskData:
    """One shard file per voice, shared by the devices that hold that voice; the start is
    DS-CNN trained centrally on ``base_voices`` other training voices (the deployed model)."""
    from edgefleet.datasets import DatasetError
    from edgefleet.datasets.kws import load_kws
    from edgefleet.fl.features import featurize
    from edgefleet.fl.partition import group_shards
    from edgefleet.frontend import FrontendSpec
    from edgefleet.modelops.data import default_cache_dir
    from edgefleet.zoo import DSCNN

    try:
        src = load_kws(data_dir or default_cache_dir(), size=size, quiet=True)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    if src.groups is None:
        raise ValueError("the kws set came without voices")
    names = sorted(set(src.groups[src.train].tolist()))
    if groups + base_voices > len(names):
        raise ValueError(
            f"--groups {groups} voices on devices + {base_voices} to pre-train on: the kws set "
            f"({size}) has {len(names)} training voices"
        )
    spec = FrontendSpec.for_rate(16000)
    samples_per_clip = int(src.x.shape[-1])
    test_x = src.x[src.test].reshape(len(src.test), samples_per_clip)
    np.savez(root / "test.npz", x=featurize(test_x, spec), y=src.y[src.test])
    voices = names[base_voices : base_voices + groups]
    rows = src.train[np.isin(src.groups[src.train], voices)]
    by_voice = group_shards(
        src.x[rows], src.y[rows], src.groups[rows], eval_fraction=0.4, seed=seed
    )
    voice_paths = []
    for g, voice in enumerate(voices):
        rng = np.random.default_rng([seed, g, 11])
        raw = _device_rows(by_voice[voice], samples, rng)  # raw audio: the device's microphone
        voice_paths.append(save_shard(raw, root / "data" / f"voice-{g:03d}.npz"))
    paths = [voice_paths[g] for g in device_groups]
    num_classes = int(src.y.max()) + 1
    arch_config = dict(DSCNN.kws_config(1.0, num_classes, 1))
    run_config: dict[str, object] = {
        "arch": "ds-cnn-kws",
        "arch-config": json.dumps(arch_config),
        "frontend": json.dumps(spec.to_dict()),
    }
    if base_voices:
        base = src.train[np.isin(src.groups[src.train], names[:base_voices])]
        x = featurize(src.x[base].reshape(len(base), samples_per_clip), spec)
        params = pretrain_ds_cnn(x, src.y[base], arch_config, seed=seed)
        from edgefleet.flower import model as fl_model

        run_config["init-path"] = str(fl_model.save_params(params, root / "init.npz"))
    return TaskData(paths, run_config, f"{groups} kws training voices (raw audio)")


def pretrain_ds_cnn(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    arch_config: dict[str, Any],
    *,
    seed: int,
    epochs: int = 10,
    lr: float = 0.05,
) -> dict[str, npt.NDArray[np.float32]]:
    """DS-CNN trained centrally on a few voices (seeded): the model the fleet has deployed
    and now fine-tunes (``benchmarks/fl_async_kws.py`` starts from it too) -- from random weights a few
    rounds of a few local steps leave it at chance, which says nothing about the fleet."""
    import torch
    from torch import nn

    from edgefleet.zoo import ArchitectureSpec, build_model

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # as the devices train; a second thread only contends on 2 cores
    spec = ArchitectureSpec(name="ds-cnn-kws", config=arch_config, input_shape=(1, 49, 10))
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt) - 1, 16):  # a batch of one cannot be normalised
            idx = order[start : start + 16]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


class ScopeTable:
    """Trained-parameter counts of every (width, scope) of a conv net, to name a device's scope.

    Built with the agent's own scoping functions (the ones its round plan trains through), so
    a count here is exactly what a device reports for that scope.
    """

    def __init__(self, arch: str, arch_config: str = "", widths: Sequence[float] = (1.0,)) -> None:
        from edgefleet.agent.finetune import SCOPE_ORDER, SPARSE_LAYERS
        from edgefleet.agent.finetune_light import sparse_trainable
        from edgefleet.agent.runtimes.torch_rt import scope_trainable
        from edgefleet.flower import model as fl_model
        from edgefleet.zoo import ArchitectureSpec, build_model

        self.by_count: dict[int, str] = {}
        for width in widths:
            try:
                cfg = fl_model.arch_config(arch, width, arch_config)
            except ValueError:
                continue  # an override has one width only
            for scope in SCOPE_ORDER:
                for layers in range(SPARSE_LAYERS, 0, -1) if scope == "sparse" else (0,):
                    spec = ArchitectureSpec(name=arch, config=cfg, input_shape=(1, 8, 8))
                    model = build_model(spec)
                    model = scope_trainable(model, "tinytl" if scope == "sparse" else scope)
                    if layers:
                        sparse_trainable(model, layers)
                    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
                    label = scope if width == 1.0 else f"{scope}@{width:g}"  # a HeteroFL slice
                    self.by_count.setdefault(int(count), label)

    def mix(self, device_trained_params: Mapping[str, Any]) -> dict[str, int]:
        """``{scope: devices}`` of one round (``other`` for a count no scope trains); a
        HeteroFL slice's scope is named with its width, e.g. ``full@0.25``."""
        counts = Counter(self.by_count.get(int(v), "other") for v in device_trained_params.values())
        return dict(sorted(counts.items()))

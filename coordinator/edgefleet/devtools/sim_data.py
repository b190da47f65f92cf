"""Simulated devices' local data from a real dataset: each device holds whole speakers/groups.

Why whole groups: a real fleet's data is non-IID by *who* uses each device -- one device hears
its owner's voice, not a random sample of every voice. With ``edgefleet simulate --local-data
kws`` (the built-in keyword-spotting set) or a user's ``.npz`` carrying ``groups``, the groups
are dealt round-robin to the devices (sorted, so the same data and device count give every
device the same groups on every run) and each device's rows are split per class into local
train and held-out parts by :func:`edgefleet.fl.partition.group_shards` -- the same shards the
demo's federated run uses, so on-device and federated fine-tuning see the same kind of data.

Devices hold the groups the model was *not* trained on when there are enough (the dataset's
validation and test groups: its users, whom the coordinator never heard); otherwise every
group. Rows stay as the dataset keeps them: raw audio for ``kws`` (the device's frontend
computes the features, as when serving), the user's arrays for an ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.datasets.core import Dataset, DatasetError

__all__ = ["GroupedLocalData", "group_local_data", "is_grouped_source", "is_text_source"]


class GroupedLocalData:
    """The shard file of every device and the groups each holds (for the operator's log)."""

    def __init__(self, paths: list[Path], groups: list[list[str]], held_out: bool) -> None:
        self.paths = paths
        self.groups = groups
        self.held_out = held_out

    def describe(self) -> str:
        pool = "held-out groups" if self.held_out else "all groups"
        counts = sorted({len(g) for g in self.groups})
        per = "-".join(str(c) for c in (counts[0], counts[-1]) if c) if counts else "0"
        return f"{len(self.paths)} devices, {per} whole group(s) each ({pool})"


def is_grouped_source(source: str) -> bool:
    """``kws``, ``text`` or an ``.npz`` path: local data dealt by group (``digits`` partitions
    itself)."""
    return (
        source == "kws" or source.startswith("kws:") or source.endswith(".npz")
        or is_text_source(source)
    )  # fmt: skip


def is_text_source(source: str) -> bool:
    """``text`` (or ``text:BYTES``): each device holds standard-library packages by source, the
    text a language model's federated LoRA run trains on (``edgefleet.datasets.text_shards``)."""
    return source == "text" or source.startswith("text:")


def _text_local_data(source: str, devices: int, out_dir: Path) -> GroupedLocalData:
    """One text shard per device (whole packages each, its own modules held out)."""
    from edgefleet.datasets.text_shards import save_text_shard, stdlib_package_shards

    size = source.partition(":")[2]
    if size and not size.isdigit():
        raise DatasetError(f"{source}: use text or text:BYTES (text per device, e.g. text:60000)")
    shards = stdlib_package_shards(devices, max_bytes=int(size or 150_000))
    paths = [save_text_shard(s, out_dir / f"device-{i:04d}.npz") for i, s in enumerate(shards)]
    return GroupedLocalData(paths, [list(s.sources) for s in shards], held_out=True)


def _load(source: str, data_dir: Path | None) -> Dataset:
    from edgefleet.datasets.loaders import load_npz

    if source == "kws" or source.startswith("kws:"):
        from edgefleet.datasets.kws import load_kws

        size = source.partition(":")[2] or "default"
        if data_dir is None:
            from edgefleet.modelops.data import default_cache_dir

            data_dir = default_cache_dir()
        return load_kws(data_dir, size=size)
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"{source}: no such file (--local-data takes digits, kws or an .npz)")
    return load_npz(path)


def group_local_data(
    source: str, devices: int, out_dir: Path, *, data_dir: Path | None = None, seed: int = 0
) -> GroupedLocalData:
    """Write one shard per device under ``out_dir``; raises :class:`DatasetError` (one line)."""
    from edgefleet.fl.partition import group_shards, save_shard

    if is_text_source(source):
        return _text_local_data(source, devices, out_dir)
    data = _load(source, data_dir)
    if data.groups is None:
        raise DatasetError(
            f"{source}: has no 'groups' array (speaker, user or device id per row), "
            "so devices cannot each get whole groups"
        )
    held = np.concatenate([data.val, data.test])
    held_groups = sorted(set(data.groups[held].tolist()))
    held_out = len(held_groups) >= devices
    rows = np.sort(held) if held_out else np.arange(len(data.y))
    names = held_groups if held_out else sorted(set(data.groups.tolist()))
    if len(names) < devices:
        raise DatasetError(
            f"{source}: {len(names)} groups for {devices} devices; each device needs a "
            "whole group (use fewer devices)"
        )
    owner = {g: i % devices for i, g in enumerate(names)}
    device_of = np.asarray([f"device-{owner[g]:04d}" for g in data.groups[rows].tolist()])
    shards = group_shards(data.x[rows], data.y[rows], device_of, eval_fraction=0.4, seed=seed)
    paths = [
        save_shard(shards[f"device-{i:04d}"], out_dir / f"device-{i:04d}.npz")
        for i in range(devices)
    ]
    groups = [[g for g in names if owner[g] == i] for i in range(devices)]
    return GroupedLocalData(paths, groups, held_out)

"""Non-IID client shards: Dirichlet over labels, seeded, with optional per-device shift.

Why here (shared, numpy only): the simulator and the tests materialise shards on the
coordinator side, while the agent's ClientApp only ever loads its own shard from the
``.npz`` file named in its SuperNode's ``node_config`` -- so loading must be cheap and
import nothing heavier than numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "Shard",
    "dirichlet_partition",
    "group_shards",
    "load_shard",
    "make_shards",
    "save_shard",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Shard:
    """One device's local data: a train part and a held-out part it never trains on."""

    x_train: FloatArray
    y_train: IntArray
    x_eval: FloatArray
    y_eval: IntArray


def dirichlet_partition(
    labels: IntArray, num_partitions: int, alpha: float, seed: int, min_size: int = 10
) -> list[IntArray]:
    """Split sample indices into ``num_partitions`` label-skewed parts.

    For every class, the class's samples are divided among partitions in proportions
    drawn from ``Dirichlet(alpha)``; small ``alpha`` means strongly non-IID. Redrawn (with the
    same seeded generator, so still deterministic) until every part has ``min_size`` samples.
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    min_size = min(min_size, len(labels) // num_partitions)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            break
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _shift(x: FloatArray, rng: np.random.Generator, noise: float, max_rotate: int) -> FloatArray:
    """A device-specific covariate shift: a fixed 90-degree rotation and additive noise."""
    out = x
    if max_rotate:
        k = int(rng.integers(0, max_rotate + 1))
        out = np.rot90(out, k=k, axes=(-2, -1)).copy()
    if noise > 0:
        out = out + rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    return out.astype(np.float32)


def make_shards(
    x: FloatArray,
    y: IntArray,
    num_partitions: int,
    alpha: float = 0.5,
    seed: int = 0,
    eval_fraction: float = 0.25,
    noise: float = 0.0,
    max_rotate: int = 0,
) -> list[Shard]:
    """Dirichlet-partition ``(x, y)`` and split each part into local train / held-out data."""
    shards = []
    for pid, idx in enumerate(dirichlet_partition(y, num_partitions, alpha, seed)):
        rng = np.random.default_rng([seed, pid])
        idx = rng.permutation(idx)
        n_eval = max(1, round(len(idx) * eval_fraction))
        xs = _shift(x[idx], rng, noise, max_rotate)
        ys = y[idx]
        shards.append(Shard(xs[n_eval:], ys[n_eval:], xs[:n_eval], ys[:n_eval]))
    return shards


def group_shards(
    x: FloatArray,
    y: IntArray,
    groups: npt.NDArray[np.str_],
    eval_fraction: float = 0.4,
    seed: int = 0,
) -> dict[str, Shard]:
    """One shard per group (a speaker, a user, a machine): the natural non-IID split of real fleets.

    Each group's rows are split per class into local train / held-out parts (at least one
    held-out row per class with two or more rows), so a device's accuracy before and after
    fine-tuning is measured on its own unseen data: personalization made measurable.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not len(x) == len(y) == len(groups):
        raise ValueError(f"x, y and groups differ in length ({len(x)}, {len(y)}, {len(groups)})")
    shards: dict[str, Shard] = {}
    for gi, group in enumerate(sorted(set(groups.tolist()))):
        rng = np.random.default_rng([seed, gi])
        train: list[int] = []
        held: list[int] = []
        rows = np.flatnonzero(groups == group)
        for c in np.unique(y[rows]):
            idx = rng.permutation(rows[y[rows] == c])
            n_eval = round(len(idx) * eval_fraction) if len(idx) > 1 else 0
            n_eval = max(1, n_eval) if len(idx) > 1 else 0
            held += idx[:n_eval].tolist()
            train += idx[n_eval:].tolist()
        tr, ev = np.asarray(sorted(train), np.int64), np.asarray(sorted(held), np.int64)
        shards[group] = Shard(x[tr], y[tr], x[ev], y[ev])
    return shards


def save_shard(shard: Shard, path: Path) -> Path:
    """Write a shard as one ``.npz`` (what a device keeps as its local dataset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path, x_train=shard.x_train, y_train=shard.y_train, x_eval=shard.x_eval, y_eval=shard.y_eval
    )
    return path


def load_shard(path: str | Path) -> Shard:
    """Read a shard written by :func:`save_shard`."""
    with np.load(path) as z:
        return Shard(
            z["x_train"].astype(np.float32),
            z["y_train"].astype(np.int64),
            z["x_eval"].astype(np.float32),
            z["y_eval"].astype(np.int64),
        )

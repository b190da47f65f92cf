"""Dirichlet shards: deterministic, disjoint, non-IID, every device gets data."""

from __future__ import annotations

import numpy as np

from edgefleet.fl.partition import dirichlet_partition, load_shard, make_shards, save_shard


def test_partition_is_seeded_disjoint_and_complete() -> None:
    y = np.repeat(np.arange(10), 50)
    a = dirichlet_partition(y, 6, alpha=0.3, seed=7)
    b = dirichlet_partition(y, 6, alpha=0.3, seed=7)
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    joined = np.concatenate(a)
    assert len(joined) == len(y) == len(np.unique(joined))
    assert min(len(p) for p in a) >= 10


def test_small_alpha_skews_labels() -> None:
    y = np.repeat(np.arange(10), 50)
    parts = dirichlet_partition(y, 5, alpha=0.1, seed=0)
    top_share = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.3  # IID would be ~0.1


def test_shard_round_trip_and_shift(tmp_path: object) -> None:
    from pathlib import Path

    x = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    y = np.repeat(np.arange(10), 20)
    shards = make_shards(x, y, 2, alpha=1.0, seed=3, noise=0.1, max_rotate=3)
    assert all(len(s.y_eval) > 0 and len(s.y_train) > 0 for s in shards)
    path = save_shard(shards[0], Path(str(tmp_path)) / "s.npz")
    back = load_shard(path)
    np.testing.assert_array_equal(back.x_train, shards[0].x_train)
    np.testing.assert_array_equal(back.y_eval, shards[0].y_eval)

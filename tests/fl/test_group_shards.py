"""Shards by group (a voice, a user): each device's own rows, split per class into train/held-out."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.fl.partition import group_shards


def test_one_shard_per_group_with_held_out_rows_of_every_class() -> None:
    rng = np.random.default_rng(0)
    groups = np.asarray(["a"] * 30 + ["b"] * 20)
    y = np.asarray([i % 3 for i in range(50)], dtype=np.int64)
    x = rng.normal(size=(50, 1, 4, 4)).astype(np.float32)
    shards = group_shards(x, y, groups, eval_fraction=0.4, seed=1)
    assert sorted(shards) == ["a", "b"]
    a = shards["a"]
    assert len(a.y_train) + len(a.y_eval) == 30
    assert set(a.y_eval.tolist()) == {0, 1, 2}
    # rows stay with their group: group a's rows are the first 30
    rows_a = {x[i].tobytes() for i in range(30)}
    assert {r.tobytes() for r in a.x_train} | {r.tobytes() for r in a.x_eval} == rows_a
    again = group_shards(x, y, groups, eval_fraction=0.4, seed=1)
    assert np.array_equal(again["b"].y_eval, shards["b"].y_eval)


def test_bad_arguments_are_refused() -> None:
    x = np.zeros((4, 1), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="eval_fraction"):
        group_shards(x, y, np.asarray(["a"] * 4), eval_fraction=1.0)
    with pytest.raises(ValueError, match="differ in length"):
        group_shards(x, y, np.asarray(["a"] * 3))

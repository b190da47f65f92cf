"""Which of a model's tensors count rather than weigh: the ones DP never releases.

A torch state dict holds one integer entry in our zoo, BatchNorm's ``num_batches_tracked``
(one per BatchNorm: 9 in DS-CNN and in ResNet-8). Under fixed-clipping DP it was treated as a
weight: a full-scope device that ran ``B`` batches moved it by ``B`` in each of the 9, adding
``3 * B`` to its update's norm (60 at ``B = 20``, against a clipping norm of 5 to 10), so the
clip shrank the real weight update to a fraction; Flower's client-side clipping left the
0-d counter itself unscaled, and the counter told the server how many batches the device ran.

The rule (both DP modes, :mod:`edgefleet.agent.fl.clientapp` and
:mod:`edgefleet.flower.strategies`): a counter is never released -- a reply's counters are the
global model's (delta 0), so they add nothing to the clipping norm, get no noise, reveal
nothing, and the aggregate keeps the global counters. Nothing is lost: a BatchNorm with a
``momentum`` (every BatchNorm in :mod:`edgefleet.zoo` keeps torch's 0.1) never reads
``num_batches_tracked``; only ``momentum=None`` (a cumulative average) divides by it.

Why a name and not only the dtype: Flower's messages carry every tensor as float32 (the
ClientApp and the server cast the state dict once, on the way in), so on the wire a counter is
a float. A non-floating dtype still counts, for arrays that kept theirs. ``tests/fl`` checks
that this rule finds exactly the zoo's non-floating state-dict entries.

numpy only: the ClientApp imports this in every per-message process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np

__all__ = ["COUNTER_NAMES", "counter_keys", "is_counter"]

#: the last component of a state-dict key that holds an integer counter (torch's BatchNorm)
COUNTER_NAMES: Final[frozenset[str]] = frozenset({"num_batches_tracked"})


def is_counter(key: str, value: Any = None) -> bool:
    """Whether ``key`` (its array ``value``, when given) is a counter DP keeps at the global
    value: named as one, or of a non-floating dtype (integer or bool)."""
    if key.rsplit(".", 1)[-1] in COUNTER_NAMES:
        return True
    dtype = getattr(value, "dtype", None)  # numpy's, or a Flower Array's name ("int64")
    return dtype is not None and np.dtype(dtype).kind in "iub"


def counter_keys(arrays: Iterable[tuple[str, Any]]) -> list[str]:
    """The counters among ``(key, array)`` pairs (a mapping's ``.items()``), in order."""
    return [k for k, v in arrays if is_counter(k, v)]

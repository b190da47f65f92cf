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

**Variances stay variances.** BatchNorm's ``running_var`` is a float the rounds average like a
weight, so DP noises it; near zero (a channel that barely varies) noise can push an entry
below ``-eps`` and the layer divides by the square root of a negative number: NaN in every
later output (one benchmark run fell to 10 % for a round). :func:`floor_variances` sets such
entries to 0 after the noise -- post-processing of the released model, so the guarantee is
unchanged -- and :func:`edgefleet.flower.strategies.noise_per_tensor` applies it.

numpy only: the ClientApp imports this in every per-message process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np

__all__ = [
    "COUNTER_NAMES",
    "VARIANCE_NAMES",
    "counter_keys",
    "floor_variances",
    "is_counter",
    "is_variance",
]

#: the last component of a state-dict key that holds an integer counter (torch's BatchNorm)
COUNTER_NAMES: Final[frozenset[str]] = frozenset({"num_batches_tracked"})
#: the last component of a state-dict key that holds a variance (torch's BatchNorm)
VARIANCE_NAMES: Final[frozenset[str]] = frozenset({"running_var"})


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


def is_variance(key: str) -> bool:
    """Whether ``key`` names a running variance (never negative in a valid model)."""
    return key.rsplit(".", 1)[-1] in VARIANCE_NAMES


def floor_variances(key: str, value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``value`` with negative entries set to 0 when ``key`` is a variance, else as it is."""
    if not is_variance(key):
        return value
    floored: np.ndarray[Any, Any] = np.maximum(value, 0).astype(value.dtype, copy=False)
    return floored

"""A device's raw-audio shard turned into the network's features, by the serving frontend code.

Why one function for every trainer: a device keeps what its microphone gave it (raw audio),
and the federated ClientApp, on-device fine-tuning and serving must all feed the network what
it was trained on. Computing the features anywhere else (or with a copy of this code) is how
a training path drifts from the serving path. Numpy only, like the frontend itself: the
ClientApp pays no torch import for it.

``fixed_point`` is what a microcontroller runs (q15, as CMSIS-DSP's ``arm_mfcc_q15``), so an
MCU trains on the features it will serve with (``Runtime.frontend_fixed_point``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.fl.partition import Shard
from edgefleet.frontend.spec import FrontendSpec

__all__ = ["featurize", "featurize_shard"]


def featurize(
    audio: npt.NDArray[Any], spec: FrontendSpec, *, fixed_point: bool = False
) -> npt.NDArray[np.float32]:
    """``(N, 1, frames, coeffs)`` float32 features of raw audio ``(N, [1,] samples)``."""
    if fixed_point:
        from edgefleet.frontend.mfcc_q15 import mfcc_q15, to_float

        return to_float(mfcc_q15(audio, spec))
    from edgefleet.frontend.mfcc import mfcc

    return mfcc(audio, spec)


def featurize_shard(shard: Shard, spec: FrontendSpec, *, fixed_point: bool = False) -> Shard:
    """The shard with both parts' raw audio replaced by the frontend's features."""
    return Shard(
        featurize(shard.x_train, spec, fixed_point=fixed_point),
        shard.y_train,
        featurize(shard.x_eval, spec, fixed_point=fixed_point),
        shard.y_eval,
    )

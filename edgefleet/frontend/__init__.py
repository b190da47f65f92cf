"""The signal frontend that is part of a model: raw audio -> MFCC features, on either side.

Shared and light (numpy only): the coordinator trains on these features and the agent computes
them on the device from raw audio, so both import the same code. :mod:`.spec` is the parameters
and their cost, :mod:`.mfcc` the float version, :mod:`.mfcc_q15` the fixed-point one an MCU runs.
"""

from __future__ import annotations

from edgefleet.frontend.spec import FrontendCost, FrontendError, FrontendSpec

__all__ = ["FrontendCost", "FrontendError", "FrontendSpec"]

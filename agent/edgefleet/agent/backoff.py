"""Exponential backoff with full jitter for reconnecting to the coordinator.

Full jitter (a uniform draw in [0, min(cap, base * 2**attempt)]) spreads a
fleet's retries after a coordinator restart instead of having thousands of
devices reconnect in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0

"""The rollout document: what Redis holds for a rollout, and what a caller asks for.

The document is the whole truth of a rollout (the manager re-derives everything else from
it on every tick), so it is plain frozen data with a JSON round trip, kept apart from the
code that plans and advances it. States: ``running`` -> ``succeeded`` | ``rolled_back``;
``running`` <-> ``paused``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgefleet.coordinator.state.model import Desired
from edgefleet.coordinator.variant_selection import Policy

STRATEGIES = ("all", "canary", "waves")
ACTIVE_STATES = ("running", "paused")
DEFAULT_WAVES = (0.05, 0.25, 1.0)
DEFAULT_CANARY = 0.1
#: Requests each device must have served with its new variant before its wave can pass.
DEFAULT_MIN_INFERENCES = 20


@dataclass(frozen=True)
class Gate:
    """When a wave counts as healthy, and when a rollout must roll back.

    A device that reports no inferences reports no error rate, latency or accuracy either,
    so without ``min_inferences`` every such gate would pass on no evidence. A wave whose
    devices have served fewer requests with the new variant holds ("no traffic: cannot
    judge") and, like a wave that never activates, rolls back when ``wave_timeout_seconds``
    runs out: a variant nobody could judge is not left half-deployed. 0 turns it off.

    A language model is judged on what its users wait for: the median time to first token
    (``max_ttft_ms``) and decode rate (``min_tokens_per_s``) its devices report from
    ``Generate`` (0: no such gate). Absolute bounds, not ratios to a prediction: what is
    acceptable to wait for a first token does not depend on what the device was predicted
    to do, and the decode floor is the same reading-pace floor LM selection plans with.
    """

    soak_seconds: float = 30.0
    max_failed_devices: int = 0  # activation failures tolerated per rollout
    max_error_rate: float = 0.05  # reported inference_error_rate
    max_latency_ratio: float = 3.0  # reported inference_latency_ms / predicted
    min_accuracy: float = 0.0  # reported inference_accuracy (where labels exist)
    wave_timeout_seconds: float = 600.0
    min_inferences: int = DEFAULT_MIN_INFERENCES
    max_ttft_ms: float = 0.0  # reported generation_ttft_ms (language models)
    min_tokens_per_s: float = 0.0  # reported generation_tokens_per_s (language models)


@dataclass(frozen=True)
class PlannedDevice:
    device_id: str
    name: str
    profile: str
    wave: int
    variant: str
    recipe: str
    runtime: str
    variant_bytes: int
    predicted_latency_ms: float
    previous: Desired
    #: What the device measured for the variant it served before (0: none). The prediction
    #: above is calibrated by it, so the latency gate compares with the device's own baseline.
    baseline_latency_ms: float = 0.0
    #: The runtime's per-call overhead included in the prediction (0: not reported yet).
    call_overhead_ms: float = 0.0
    #: Language models: the positions LM selection gave the device (sent with the desired
    #: state) and the decode rate it predicted there (0: not a language model).
    context_limit: int = 0
    predicted_decode_tok_s: float = 0.0


@dataclass(frozen=True)
class SkippedDevice:
    device_id: str
    name: str
    reason: str


@dataclass(frozen=True)
class Rollout:
    id: str
    model: str
    selector: str
    strategy: str
    waves: tuple[float, ...]
    gate: Gate
    devices: tuple[PlannedDevice, ...]
    skipped: tuple[SkippedDevice, ...]
    state: str = "running"
    current_wave: int = 0
    wave_started_at: float = 0.0
    wave_healthy_since: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    message: str = ""
    version: int = 0

    def in_applied_waves(self) -> list[PlannedDevice]:
        return [d for d in self.devices if d.wave <= self.current_wave]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        d: dict[str, Any] = json.loads(text)
        return cls(
            id=d["id"],
            model=d["model"],
            selector=d["selector"],
            strategy=d["strategy"],
            waves=tuple(d["waves"]),
            # a rollout stored before min_inferences existed keeps the gate it was created with
            gate=Gate(**{"min_inferences": 0, **d["gate"]}),
            devices=tuple(
                PlannedDevice(**{**p, "previous": Desired(**p["previous"])}) for p in d["devices"]
            ),
            skipped=tuple(SkippedDevice(**s) for s in d["skipped"]),
            state=d["state"],
            current_wave=d["current_wave"],
            wave_started_at=d["wave_started_at"],
            wave_healthy_since=d["wave_healthy_since"],
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            message=d["message"],
            version=d["version"],
        )


@dataclass(frozen=True)
class RolloutRequest:
    model: str
    selector: str
    strategy: str = "all"
    waves: tuple[float, ...] = ()
    canary_fraction: float = DEFAULT_CANARY
    gate: Gate = field(default_factory=Gate)
    policy: Policy = field(default_factory=Policy)

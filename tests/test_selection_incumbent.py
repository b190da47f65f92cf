"""Selection keeps the running variant among near-equals, so latency noise cannot flap a fleet."""

from __future__ import annotations

from edgefleet.catalog import get_profile
from edgefleet.coordinator.variant_selection import (
    INCUMBENT_MARGIN,
    LatencyPredictor,
    Policy,
    VariantFacts,
    select,
)


class _Fixed(LatencyPredictor):
    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms

    def predict_ms(self, variant: VariantFacts, runtime: str) -> float:
        return self.ms[variant.id]


def _variant(vid: str, accuracy: float) -> VariantFacts:
    return VariantFacts(
        id=vid, model="m", recipe=vid, precision="int8-static", bundle_bytes=1000,
        weight_bytes=1000, peak_memory_bytes=1000, accuracy=accuracy, macs=1000,
        runtimes=("onnxruntime",),
    )  # fmt: skip


def test_the_running_variant_is_kept_within_the_margin_and_replaced_beyond_it() -> None:
    rpi4 = get_profile("rpi4")
    a, b = _variant("a", 0.90), _variant("b", 0.899)  # within the 0.5 pt tolerance
    near = _Fixed({"a": 1.0, "b": 1.0 + INCUMBENT_MARGIN / 2})
    assert select(rpi4, [a, b], near).winner.variant.id == "a"  # type: ignore[union-attr]
    kept = select(rpi4, [a, b], near, Policy(incumbent="b"))
    assert kept.winner is not None and kept.winner.variant.id == "b"
    assert "kept as the running variant" in kept.reason
    far = _Fixed({"a": 1.0, "b": 1.0 + 2 * INCUMBENT_MARGIN})
    moved = select(rpi4, [a, b], far, Policy(incumbent="b"))
    assert moved.winner is not None and moved.winner.variant.id == "a"
    # an incumbent outside the accuracy tolerance is not kept, however fast
    worse = _variant("c", 0.80)
    fast = _Fixed({"a": 1.0, "c": 0.5})
    assert select(rpi4, [a, worse], fast, Policy(incumbent="c")).winner.variant.id == "a"  # type: ignore[union-attr]

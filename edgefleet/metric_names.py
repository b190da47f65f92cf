"""Metric names the agent reports and the coordinator's rollout gates read.

Why a shared module: the gate that asks "has this device served enough requests with the new
variant?" must read exactly the name the agent writes, and the coordinator keeps only the
latest value per metric name and device (labels are not stored). A per-interval count of
whichever variant was serving cannot answer that question: right after an activation the
latest value may still be the previous variant's. So the count is cumulative since the
variant was loaded and the variant is part of the name: a value under that name can only
be evidence about that variant.
"""

from __future__ import annotations

import re

__all__ = [
    "CALL_OVERHEAD_PREFIX",
    "VARIANT_INFERENCES_PREFIX",
    "call_overhead_metric",
    "variant_inferences_metric",
]

#: Followed by the first 12 characters of the variant id.
VARIANT_INFERENCES_PREFIX = "inference_variant_count_"


def variant_inferences_metric(variant_id: str) -> str:
    """Name of the gauge: requests served by ``variant_id`` since this agent loaded it
    (metric names are ``[a-z0-9_]``; variant ids are hex digests)."""
    return VARIANT_INFERENCES_PREFIX + re.sub(r"[^a-z0-9]", "_", variant_id[:12].lower())


#: Followed by the runtime's name (``-`` as ``_``): ms of one call that computes nothing.
CALL_OVERHEAD_PREFIX = "runtime_call_overhead_ms_"


def call_overhead_metric(runtime: str) -> str:
    """Name of the gauge: the agent's measured per-call overhead of ``runtime``."""
    return CALL_OVERHEAD_PREFIX + re.sub(r"[^a-z0-9]", "_", runtime.lower())

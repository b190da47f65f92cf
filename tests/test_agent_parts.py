"""Agent building blocks: backoff with jitter, and the identity kept on disk."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.identity import Identity, IdentityError, load_identity, save_identity


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [backoff.next_delay() for _ in ceilings]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.0 <= delay <= ceiling


def test_backoff_jitter_spreads_a_fleet() -> None:
    """Many devices failing at once must not retry in lockstep."""
    delays = []
    for seed in range(200):
        b = Backoff(base=1.0, cap=30.0, rng=random.Random(seed))
        for _ in range(4):
            delay = b.next_delay()
        delays.append(delay)
    assert max(delays) - min(delays) > 4.0  # spread over the 0..8 s window
    assert len({round(d, 3) for d in delays}) > 150


def test_backoff_reset_starts_small_again() -> None:
    b = Backoff(base=1.0, cap=30.0, rng=random.Random(0))
    for _ in range(10):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 1.0


def test_identity_round_trip_is_private(tmp_path: Path) -> None:
    ident = Identity(instance_key="k" * 32, coordinator="h:1", device_id="dev-1", credential="s")
    save_identity(tmp_path, ident)
    assert load_identity(tmp_path) == ident
    mode = stat.S_IMODE((tmp_path / "identity.json").stat().st_mode)
    assert mode == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_identity_is_none(tmp_path: Path) -> None:
    assert load_identity(tmp_path) is None


def test_corrupt_identity_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"instance_key": ')
    with pytest.raises(IdentityError, match=r"identity\.json"):
        load_identity(tmp_path)


def test_an_empty_desired_state_unloads_only_when_the_coordinator_assigned_it(
    tmp_path: Path,
) -> None:
    """Generation 0 with no variant: the coordinator never assigned anything (a fresh or reset
    store), so the served variant stays. A later generation with no variant is a rollback to
    "no variant": the agent stops serving and the bundle is kept as previous."""
    import asyncio

    from edgefleet.agent.artifacts import ArtifactCache
    from edgefleet.agent.desired import Desired
    from edgefleet.agent.reconcile import Reconciler
    from tests.test_activation import FakeRunner

    cache = ArtifactCache(tmp_path)
    vid = "ab" * 32
    (cache.variants_dir / vid).mkdir()
    cache.activate(vid)
    runner = FakeRunner()
    unloaded = runner.unloaded
    rec = Reconciler(cache, runner=runner)

    async def reconcile(generation: int) -> str:
        desired = Desired(generation=generation, variant_id="")
        status = await rec.reconcile(desired, None, ())  # type: ignore[arg-type]
        return status.active_variant

    assert asyncio.run(reconcile(0)) == vid and not unloaded
    assert asyncio.run(reconcile(3)) == "" and unloaded
    assert cache.current() == "" and cache.previous() == vid
    assert asyncio.run(reconcile(3)) == ""  # idempotent


def test_the_served_count_is_per_variant_and_restarts_with_each_load() -> None:
    """A rollout gate judges a variant by what it served: right after a swap the count must
    not still be the previous variant's (that would pass a gate on someone else's evidence)."""
    from collections.abc import Mapping
    from types import SimpleNamespace
    from typing import Any

    import numpy as np

    from edgefleet.agent.runtimes import MemoryUsage, Runtime
    from edgefleet.agent.serving import Serving
    from edgefleet.catalog import get_profile
    from edgefleet.metric_names import variant_inferences_metric

    class Echo(Runtime):
        name = "onnxruntime"

        def _load(self, bundle: Any, entry: Mapping[str, Any]) -> None:
            pass

        def _infer(self, batch: Any) -> Any:
            return batch.astype(np.float32)

        def memory(self) -> MemoryUsage:
            return MemoryUsage(0, 0, "none")

    def bundle(vid: str) -> Any:
        manifest = {
            "runtimes": {"onnxruntime": {}},
            "precision": "fp32",
            "input": {"shape": [1, 2], "dtype": "float32"},
        }
        return SimpleNamespace(variant_id=vid, manifest=manifest)

    serving = Serving(get_profile("rpi4"), opener=lambda name, profile: Echo(profile))
    a, b = "a" * 64, "b" * 64
    assert serving.load(bundle(a)) is None
    for _ in range(3):
        serving.infer(np.zeros((1, 2), np.float32))
    assert serving.variant_requests == 3
    assert serving.load(bundle(b)) is None
    assert serving.variant_requests == 0
    serving.infer(np.zeros((1, 2), np.float32))
    assert serving.variant_requests == 1 and serving.total_requests == 4
    assert variant_inferences_metric(b) == "inference_variant_count_bbbbbbbbbbbb"
    serving.unload()
    assert serving.variant_id == "" and serving.variant_requests == 0

"""Make a variant a device's desired one, for benchmarks that download without a rollout.

The coordinator serves a device only the variant it is desired to run (issue 14), and a
rollout needs a registered model with measured variants; benchmarks of the transfer itself
write the desired state straight into the coordinator's embedded Redis instead, through
the same store call the rollout controller uses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis

from edgefleet.coordinator.state.model import Desired
from edgefleet.coordinator.state.store import FleetStore

__all__ = ["assign_variant"]


def assign_variant(data_dir: Path, device_ids: list[str], variant: str) -> None:
    """Set ``variant`` as the desired variant of ``device_ids`` at the coordinator of
    ``data_dir`` (one started with its embedded Redis)."""
    url = json.loads((data_dir / "coordinator.json").read_text())["embedded_redis"]
    if not url:
        raise RuntimeError(f"the coordinator of {data_dir} does not run an embedded Redis")

    async def write() -> None:
        store = FleetStore(aioredis.Redis.from_url(url, decode_responses=True))
        try:
            for device_id in device_ids:
                if await store.set_desired(device_id, Desired(variant=variant)) is None:
                    raise RuntimeError(f"device {device_id} is not registered")
        finally:
            await store.close()

    asyncio.run(write())

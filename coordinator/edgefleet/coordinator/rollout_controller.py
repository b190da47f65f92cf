"""Run ``RolloutManager.tick`` periodically on exactly one coordinator replica.

Replicas share Redis; a lease (a key with a TTL, renewed every tick) elects
the one that advances rollouts, so two replicas never race the same
transition (and compare-and-set on the document catches it if they did). If
the holder dies its lease expires and another replica takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from edgefleet.coordinator.errors import CoordinatorError
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.state.store import FleetStore

log = logging.getLogger(__name__)
LEASE_NAME = "rollout-controller"


class RolloutController:
    def __init__(self, manager: RolloutManager, store: FleetStore, interval: float = 2.0) -> None:
        self._manager = manager
        self._store = store
        self.interval = interval
        self.owner = f"coordinator-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def tick_once(self) -> bool:
        """One pass if we hold the lease; True if we did."""
        if not await self._store.hold_lease(LEASE_NAME, self.owner, ttl_seconds=self.interval * 5):
            return False
        await self._manager.tick()
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.tick_once()
            except CoordinatorError as exc:  # Redis away, a bad manifest: retry next tick
                log.warning("rollout controller: %s", exc)
            except Exception:  # never let one bad rollout stop the loop
                log.exception("rollout controller tick failed")
            await asyncio.sleep(self.interval)

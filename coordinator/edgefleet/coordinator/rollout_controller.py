"""Run ``RolloutManager.tick`` periodically on exactly one coordinator replica.

Replicas share Redis; a lease (a key with a TTL, renewed every tick) elects
the one that advances rollouts, so two replicas never race the same
transition (and compare-and-set on the document catches it if they did). If
the holder dies its lease expires and another replica takes over; if it stops
cleanly (SIGTERM) it releases the lease, so another replica takes over on its
next tick instead of after the TTL (issue 18: 9.6 s with no controller).

The rollout gauges are not the lease holder's business alone: ``rollout_gauges``
reads them from Redis, and every replica's metrics refresh calls it, so a replica
that lost the lease never exports a rollout that has since moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

from edgefleet.coordinator.errors import CoordinatorError, Unavailable
from edgefleet.coordinator.rollouts.document import ACTIVE_STATES
from edgefleet.coordinator.rollouts.gates import device_status
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.state.store import FleetStore

log = logging.getLogger(__name__)
LEASE_NAME = "rollout-controller"


def replica_owner(data_dir: Path) -> str:
    """This replica's lease owner name, kept in its data dir: a replica killed -9 and
    restarted on the same data dir holds its lease again at once (and adopts the SuperLink
    it left running, ``fl.fleet_superlink``) instead of waiting out the TTL. Two live
    processes never share it: the data dir is locked per process."""
    path = data_dir / "replica-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        owner = f"coordinator-{uuid.uuid4().hex[:8]}"
        path.write_text(owner + "\n")
        return owner


class RolloutController:
    def __init__(
        self,
        manager: RolloutManager,
        store: FleetStore,
        interval: float = 2.0,
        owner: str = "",
    ) -> None:
        self._manager = manager
        self._store = store
        self.interval = interval
        self.owner = owner or f"coordinator-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        #: whether this replica held the lease at its last tick (the fleet's SuperLink runs
        #: on the holder: ``fl.fleet_superlink``)
        self.leader = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-controller")

    async def stop(self) -> None:
        """Stop ticking, then release the lease if we hold it (Redis away: it expires)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            if await self._store.release_lease(LEASE_NAME, self.owner):
                log.info("rollout controller: lease released")
        except CoordinatorError as exc:
            log.warning("rollout controller: could not release the lease: %s", exc)

    async def tick_once(self) -> bool:
        """One pass if we hold the lease; True if we did."""
        self.leader = await self._store.hold_lease(
            LEASE_NAME, self.owner, ttl_seconds=self.interval * 5
        )
        if not self.leader:
            return False
        await self._manager.tick()
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.tick_once()
            except CoordinatorError as exc:  # Redis away, a bad manifest: retry next tick
                if isinstance(exc, Unavailable):
                    self.leader = False  # cannot renew: another replica may take it over
                log.warning("rollout controller: %s", exc)
            except Exception:  # never let one bad rollout stop the loop
                log.exception("rollout controller tick failed")
            await asyncio.sleep(self.interval)


async def rollout_gauges(
    manager: RolloutManager,
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Rollouts by state and devices of active rollouts by (model, status), read from Redis.

    The same numbers ``RolloutManager.tick`` exports, without advancing anything, so any
    replica (leader or not) can export them.
    """
    states: dict[str, int] = {}
    devices: dict[tuple[str, str], int] = {}
    for rollout in await manager.list_rollouts():
        states[rollout.state] = states.get(rollout.state, 0) + 1
        if rollout.state in ACTIVE_STATES:
            health = {h.device_id: h for h in await manager.health(rollout)}
            for d in rollout.devices:
                key = (rollout.model, device_status(rollout, d, health.get(d.device_id)))
                devices[key] = devices.get(key, 0) + 1
    return states, devices

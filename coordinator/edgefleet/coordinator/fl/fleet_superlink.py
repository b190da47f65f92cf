"""One SuperLink per fleet, however many replicas: supervised by the rollout-lease holder only.

Why: each replica used to supervise its own SuperLink, so two replicas on one Redis split the
agents' SuperNodes between two federations and a run asking for ``--min-devices 2`` waited
forever (issue 18). Now ``--superlink local`` means "the fleet runs one, on whichever replica
holds the rollout-controller lease" (one elected singleton is enough; a second lease would only
add a second failover to reason about). The holder starts it and names it in Redis
(``fl:superlink``); every replica reads that record and tells its agents on heartbeat, as before.
When the lease moves (the holder died or stopped), the new holder starts its own SuperLink and
overwrites the record; agents follow within a heartbeat. A replica that lost the lease stops
the SuperLink it ran. The record is never deleted: while the lease moves, agents keep the last
address rather than leaving the federation.

A run in flight does not survive the move (its state lives in the old SuperLink's database); its
ServerApp stops reporting and the run reads as failed. An external SuperLink
(``--superlink HOST:PORT``) has no such gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgefleet.coordinator.errors import CoordinatorError
from edgefleet.coordinator.rollout_controller import LEASE_NAME, RolloutController
from edgefleet.coordinator.state.store import FleetStore

if TYPE_CHECKING:
    from edgefleet.coordinator.fl.superlink import SuperLinkSupervisor

log = logging.getLogger(__name__)


class FleetSuperLink:
    """Keeps this replica's part of the fleet's one SuperLink: run it while holding the lease,
    and report the fleet's current one (``on_change(address, tls)``) to the device service."""

    def __init__(
        self,
        store: FleetStore,
        controller: RolloutController,
        make_supervisor: Callable[[], SuperLinkSupervisor],
        address: str,
        tls: bool,
        wait_listening: Callable[[], bool],
        on_change: Callable[[str, bool], None],
        interval: float = 2.0,
    ) -> None:
        """``address``: where agents reach a SuperLink this replica runs; ``wait_listening``
        blocks until it accepts connections (False after its timeout)."""
        self._store = store
        self._controller = controller
        self._make = make_supervisor
        self.address = address
        self.tls = tls
        self._wait_listening = wait_listening
        self._on_change = on_change
        self.interval = interval
        self.supervisor: SuperLinkSupervisor | None = None
        self.current: tuple[str, bool] | None = None  # the fleet's SuperLink, as last read
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the lease now if it is free (a single replica runs its SuperLink before it
        writes coordinator.json), reconcile once, then keep reconciling every ``interval``."""
        c = self._controller
        c.leader = await self._store.hold_lease(LEASE_NAME, c.owner, ttl_seconds=c.interval * 5)
        await self.reconcile_once()
        self._task = asyncio.create_task(self._run(), name="fleet-superlink")

    async def reconcile_once(self) -> None:
        if self._controller.leader:
            if self.supervisor is None:
                supervisor = self._make()
                await asyncio.to_thread(supervisor.start)
                self.supervisor = supervisor
                if not await asyncio.to_thread(self._wait_listening):
                    raise RuntimeError(f"the SuperLink did not open {self.address} within 30 s")
                log.info(
                    "SuperLink %s at %s (this replica holds the lease)",
                    "adopted" if supervisor.adopted else "started",
                    self.address,
                )
            await self._store.publish_superlink(
                {"address": self.address, "tls": self.tls, "owner": self._controller.owner}
            )
        elif self.supervisor is not None:
            log.warning("lost the rollout lease: stopping this replica's SuperLink")
            supervisor, self.supervisor = self.supervisor, None
            await asyncio.to_thread(supervisor.stop, 5.0)
        record = await self._store.fleet_superlink()
        if record is not None:
            now = (str(record.get("address", "")), bool(record.get("tls")))
            if now[0] and now != self.current:
                self.current = now
                log.info("the fleet's SuperLink is %s", now[0])
                self._on_change(*now)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile_once()
            except (CoordinatorError, OSError, RuntimeError) as exc:  # retry next time
                log.warning("fleet SuperLink: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.supervisor is not None:
            await asyncio.to_thread(self.supervisor.stop, 5.0)
            self.supervisor = None

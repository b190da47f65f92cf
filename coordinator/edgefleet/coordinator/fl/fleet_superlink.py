"""One SuperLink per fleet, however many replicas: started by the rollout-lease holder, kept
while it answers.

Why: each replica used to supervise its own SuperLink, so two replicas on one Redis split the
agents' SuperNodes between two federations and a run asking for ``--min-devices 2`` waited
forever (issue 18). Now ``--superlink local`` means "the fleet runs one, on whichever replica
holds the rollout-controller lease" (one elected singleton is enough; a second lease would only
add a second failover to reason about). The holder starts it and names it in Redis
(``fl:superlink``); every replica reads that record and tells its agents on heartbeat, as before.

The SuperLink named in Redis stays the fleet's for as long as it answers, whoever holds the
lease: a run in flight lives in that SuperLink's database and its ServerApp, so replacing a
SuperLink that still works would fail the run. Hence, when the lease moves (the holder died or
stopped), the new holder first dials the named SuperLink: a holder killed -9 leaves its
SuperLink running (its own process group), so the new holder keeps naming it and the run
carries on; a replica restarted on its data dir adopts it again (pidfile). Only when the named
SuperLink does not answer (its host or pod is gone, or its replica stopped cleanly and took it
along) does the holder start its own and overwrite the record; agents follow within a
heartbeat, and a run in flight on the lost SuperLink fails (its ServerApp is gone, or its
devices left it). A replica stops the SuperLink it runs only once Redis names another one. The
record is never deleted: while the lease moves, agents keep the last address rather than
leaving the federation. An external SuperLink (``--superlink HOST:PORT``) has no gap at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
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
        self._kept = ""  # another replica's SuperLink this holder keeps naming (logged once)

    async def start(self) -> None:
        """Take the lease now if it is free (a single replica runs its SuperLink before it
        writes coordinator.json), reconcile once, then keep reconciling every ``interval``."""
        c = self._controller
        c.leader = await self._store.hold_lease(LEASE_NAME, c.owner, ttl_seconds=c.interval * 5)
        await self.reconcile_once()
        self._task = asyncio.create_task(self._run(), name="fleet-superlink")

    async def reconcile_once(self) -> None:
        record = await self._store.fleet_superlink()
        named = str(record.get("address", "")) if record is not None else ""
        owner = self._controller.owner
        # ours by name: this replica started it (perhaps before a kill -9 and restart)
        ours = record is not None and record.get("owner") == owner and named == self.address
        if self.supervisor is None and (
            ours or (self._controller.leader and not await self._answers_elsewhere(named))
        ):
            supervisor = self._make()
            await asyncio.to_thread(supervisor.start)
            self.supervisor = supervisor
            if not await asyncio.to_thread(self._wait_listening):
                raise RuntimeError(f"the SuperLink did not open {self.address} within 30 s")
            log.info(
                "SuperLink %s at %s (%s)",
                "adopted" if supervisor.adopted else "started",
                self.address,
                "this replica holds the lease" if self._controller.leader else "the fleet's",
            )
        if self._controller.leader and self.supervisor is not None and not ours:
            await self._store.publish_superlink(
                {"address": self.address, "tls": self.tls, "owner": owner}
            )
        elif self.supervisor is not None and not ours and not self._controller.leader:
            log.warning("the fleet names another SuperLink (%s): stopping this replica's", named)
            supervisor, self.supervisor = self.supervisor, None
            await asyncio.to_thread(supervisor.stop, 5.0)
        record = await self._store.fleet_superlink()
        if record is not None:
            now = (str(record.get("address", "")), bool(record.get("tls")))
            if now[0] and now != self.current:
                self.current = now
                log.info("the fleet's SuperLink is %s", now[0])
                self._on_change(*now)

    async def _answers_elsewhere(self, named: str) -> bool:
        """Whether the fleet's named SuperLink is another replica's and accepts connections
        (then it stays the fleet's: runs in flight live in it)."""
        if not named or named == self.address:
            return False
        host, _, port = named.rpartition(":")
        try:
            await asyncio.to_thread(
                lambda: socket.create_connection((host.strip("[]"), int(port)), 2.0).close()
            )
        except (OSError, ValueError):
            return False
        if named != self._kept:
            self._kept = named
            log.info("keeping the fleet's SuperLink at %s: it still answers", named)
        return True

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

"""Each replica advertises its device endpoint; every reply to an agent lists the live ones.

Why: an agent must know where to go when its replica dies, and the set of replicas changes
(scale-out, a replica replaced under another name). Each replica re-advertises its stable
``NAME:PORT`` in Redis every ``refresh`` seconds and reads back every endpoint advertised in
the last ``ttl``; Register and Heartbeat replies carry that list, this replica first. A replica
stopped cleanly withdraws at once; one killed -9 drops out after ``ttl`` (an agent that tries
it meanwhile just moves on to the next one). Clocks of replicas on different hosts must agree
to well within ``ttl`` (NTP does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from edgefleet.coordinator.errors import Unavailable
from edgefleet.coordinator.state.fleet_identity import FleetIdentityState

__all__ = ["ReplicaEndpoints", "advertised_endpoint"]

REFRESH_SECONDS = 2.0
TTL_SECONDS = 10.0
_WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def advertised_endpoint(
    device_endpoint: str, advertise_device: str, public_host: str, port: int
) -> str:
    """The device endpoint a replica puts in the fleet's list ("" = none to advertise).

    TLS: the mutual-TLS endpoint. Plaintext: the main port, which serves device calls too --
    unless it is bound to a wildcard with no name to advertise (agents then keep dialling
    the ``--coordinator`` addresses they were given).
    """
    if device_endpoint:
        return device_endpoint
    if advertise_device:
        return advertise_device
    if public_host in _WILDCARDS:
        return ""
    return f"{public_host}:{port}"


class ReplicaEndpoints:
    """Keeps this replica's endpoint advertised and hands ``publish`` the live list."""

    def __init__(
        self,
        state: FleetIdentityState,
        endpoint: str,
        publish: Callable[[list[str]], None],
        refresh: float = REFRESH_SECONDS,
        ttl: float = TTL_SECONDS,
    ) -> None:
        self.endpoint = endpoint
        self._state = state
        self._publish = publish
        self._refresh = refresh
        self._ttl = ttl
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def advertise(self) -> None:
        """One round: say we are live, read who else is (Redis away: keep the last list)."""
        if not self.endpoint:
            return
        now = time.time()
        try:
            await self._state.advertise_endpoint(self.endpoint, now)
            live = await self._state.live_endpoints(now - self._ttl)
        except Unavailable:
            return
        self._publish([self.endpoint, *sorted(e for e in live if e != self.endpoint)])

    async def start(self) -> None:
        await self.advertise()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._refresh)
                return
            except TimeoutError:
                await self.advertise()

    async def stop(self, withdraw: bool = True) -> None:
        """Stop advertising and (``withdraw``) leave the list, so agents are not sent here.

        The loop is asked to finish its round rather than cancelled: a Redis command cut off
        mid-flight can leave its pooled connection unusable for the withdrawal that follows.
        ``withdraw=False`` is what a replica killed -9 amounts to (tests use it).
        """
        self._stopping.set()
        if self._task is not None:
            await self._task
        if withdraw and self.endpoint:
            await self._state.withdraw_endpoint(self.endpoint)

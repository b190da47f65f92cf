"""The fleet's one SuperLink stays named while it answers (``fl.fleet_superlink``, issue 18).

Real Redis (the fleet's record) and real sockets (a SuperLink "answers" when something
accepts connections at its address); the supervisor is a stand-in that listens on a socket
instead of starting ``flower-superlink`` (tests/test_replicas_fl_kill.py runs the real one,
killed -9 with its replica), and the controller a stand-in holding ``leader``/``owner``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from edgefleet.coordinator.fl.fleet_superlink import FleetSuperLink
from edgefleet.coordinator.rollout_controller import RolloutController
from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.store import FleetStore


class Listening:
    """Stands in for a SuperLink process: accepts connections on 127.0.0.1 until stopped."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.adopted = False
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 0.0) -> None:
        self.stopped = True
        self.sock.close()


class Controller:
    def __init__(self, owner: str, leader: bool) -> None:
        self.owner, self.leader = owner, leader


def replica(store: FleetStore, owner: str, leader: bool) -> tuple[FleetSuperLink, list[str]]:
    """A replica's FleetSuperLink whose supervisor listens at a fresh address; it reports the
    fleet's SuperLink into the returned list."""
    node = Listening()
    told: list[str] = []
    fleet = FleetSuperLink(
        store,
        cast(RolloutController, Controller(owner, leader)),
        lambda: cast(Any, node),
        node.address,
        False,
        lambda: True,
        lambda address, tls: told.append(address),
    )
    return fleet, told


def test_a_new_lease_holder_keeps_the_superlink_that_answers_and_replaces_a_dead_one(
    redis_url: str,
) -> None:
    async def main() -> None:
        store = FleetStore(connect(redis_url))
        try:
            a, _ = replica(store, "a", leader=True)
            await a.reconcile_once()  # A holds the lease: starts its SuperLink, names it
            assert a.supervisor is not None
            assert (await store.fleet_superlink() or {})["address"] == a.address

            # A is killed -9 (its SuperLink lives on); B holds the lease now and keeps it
            orphan, a.supervisor = a.supervisor, None
            b, told_b = replica(store, "b", leader=True)
            await b.reconcile_once()
            assert b.supervisor is None and told_b == [a.address]
            assert (await store.fleet_superlink() or {})["address"] == a.address

            # A restarted on its data dir (same owner, same address), not the holder: it
            # supervises the SuperLink the fleet still names again (the real one adopts)
            a2, told_a = replica(store, "a", leader=False)
            a2.address = a.address
            await a2.reconcile_once()
            assert a2.supervisor is not None and told_a == [a.address]

            # the SuperLink dies (host or pod lost): B starts its own and names it
            orphan.stop()
            await b.reconcile_once()
            assert b.supervisor is not None and told_b == [a.address, b.address]
            assert (await store.fleet_superlink() or {})["owner"] == "b"

            # A, not the holder and no longer named, stops the SuperLink it supervised
            await a2.reconcile_once()
            assert a2.supervisor is None and told_a == [a.address, b.address]
        finally:
            await store.close()

    asyncio.run(main())

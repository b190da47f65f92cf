"""The ServerApp's own record of a run in the fleet's Redis (issue 18), readable from any host.

Why the ServerApp writes it, not the CLI or the replica that submitted the run: the ServerApp
is the one process that knows each round as it ends, and it outlives both (a CLI closed, a
replica killed); a record it writes itself is complete however the run is followed. Why Redis:
``progress.json`` lands on the SuperLink's host, so ``train status`` from another host or
replica saw nothing. The run config names the fleet's Redis (``redis-url``, any scheme the
coordinator accepts: one server, ``redis+cluster://``, ``redis+sentinel://``), without its
credentials, and the run (``run-name``); the password comes from this process's environment
(``edgefleet.fl.redis_secret``: the SuperLink's, which the coordinator sets).

Each finished round (and a failed run's failed round) also goes into the fleet's round records,
exactly once and oldest first, which every replica exports as the ``edgefleet_fl_*`` metrics
(dashboards and the FederatedRoundFailed alert read them): no CLI has to stay attached for that.

A background thread renews the run's ``alive`` key every :data:`HEARTBEAT_SECONDS`: a reader on
any host tells a running run from one whose ServerApp died. Redis being away never fails the
run: the latest record is kept and sent on the next write or heartbeat.

Flower's app calls this module synchronously; the store is async, so one private event loop
(``asyncio.Runner``) serves every call, under a lock (the heartbeat thread shares it).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.coordinator.state.connect import connect
from edgefleet.coordinator.state.model import FederatedRound
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.fl.redis_secret import with_credentials

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
ALIVE_TTL_SECONDS = 10.0
INIT_BLOB = "init"  #: the run's initial weights (.npz, base64), uploaded with StartRun


class RunStore:
    """Writes one run's record to the fleet's Redis; ``close()`` when the run ends."""

    def __init__(self, redis_url: str, run_name: str) -> None:
        self.run_name = run_name
        self._runner = asyncio.Runner()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._rounds: list[FederatedRound] = []  # round records not yet written
        self._seen_rounds = 0
        self._failure_queued = False
        # the run config's URL carries no password: this process's environment does
        url = with_credentials(redis_url, os.environ)
        self._store = FleetStore(connect(url, max_connections=4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-heartbeat", daemon=True)
        self._thread.start()

    def write(self, doc: dict[str, Any]) -> None:
        """Send the whole record (the latest one wins if Redis is away for a while)."""
        with self._lock:
            self._pending = dict(doc)
            self._queue_rounds(doc)
            self._flush()

    def _queue_rounds(self, doc: dict[str, Any]) -> None:
        """Round records for what is new in ``doc``: finished rounds, then a failure."""
        model = str((doc.get("settings") or {}).get("arch") or "")
        rounds = list(doc.get("rounds") or [])
        for r in rounds[self._seen_rounds :]:
            acc = r.get("test_acc", r.get("client_eval_acc"))
            self._rounds.append(FederatedRound(
                model, self.run_name, int(r["round"]), "completed", _num(r.get("train_loss")),
                _num(acc), len(r.get("participants") or []), float(r.get("ended") or 0.0),
                int(r.get("bytes_up") or 0),
            ))  # fmt: skip
        self._seen_rounds = len(rounds)
        if doc.get("state") == "failed" and not self._failure_queued:
            self._failure_queued = True
            last = int(rounds[-1]["round"]) if rounds else 0
            self._rounds.append(FederatedRound(
                model, self.run_name, last + 1, "failed", float("nan"), float("nan"), 0,
                float(doc.get("finished") or 0.0),
            ))  # fmt: skip

    def initial_weights(self) -> dict[str, npt.NDArray[np.float32]] | None:
        """The weights uploaded with the run, if any (state-dict order kept)."""
        with self._lock:
            text = self._runner.run(self._store.run_blob(self.run_name, INIT_BLOB))
        if not text:
            return None
        with np.load(io.BytesIO(base64.b64decode(text))) as npz:
            return {k: npz[k].astype(np.float32) for k in npz.files}

    def _flush(self) -> None:
        try:
            while self._rounds:  # each round once: dropped from the queue only when written
                self._runner.run(self._store.record_fl_round(self._rounds[0]))
                self._rounds.pop(0)
        except Exception as exc:
            log.warning("round record not written to the fleet state (will retry): %s", exc)
            return
        if self._pending is None:
            return
        try:
            self._runner.run(
                self._store.put_run_progress(self.run_name, self._pending, ALIVE_TTL_SECONDS)
            )
            self._pending = None
        except Exception as exc:  # never let the record fail the run
            log.warning("run record not written to the fleet state (will retry): %s", exc)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                if self._pending is not None or self._rounds:
                    self._flush()
                    continue
                try:
                    self._runner.run(self._store.renew_run_alive(self.run_name, ALIVE_TTL_SECONDS))
                except Exception as exc:
                    log.warning("run heartbeat not written: %s", exc)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the heartbeat; try for ``timeout`` s to send what is pending."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            deadline = timeout
            while (self._pending is not None or self._rounds) and deadline > 0:
                self._flush()
                if self._pending is not None or self._rounds:
                    self._stop.wait(1.0)
                    deadline -= 1.0
            try:
                self._runner.run(self._store.close())
            finally:
                self._runner.close()


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)

"""Reconcile the device's served variant toward the coordinator's desired state.

Level-triggered, like a Kubernetes controller: every heartbeat reply carries the whole
desired state and :meth:`Reconciler.reconcile` compares it with what is active on disk, so a
lost reply, an agent restart or a coordinator restart never wedges the device; the next
heartbeat simply repeats the comparison.

The download runs as a background task so heartbeats keep flowing while a large bundle
trickles over a slow link (a device that stopped heartbeating for the length of a download
would look dead to the rollout gates). ``reconcile`` starts the task, waits at most
``wait_seconds`` for it, and activates the bundle on the first call that finds it finished.

Activation itself is :class:`edgefleet.agent.update.UpdateMachine`'s: the stages
(fetch, verify, stage, commit or rollback) are persisted in the activation record, and a new
reconciler (an agent restart) first recovers whatever a crash left in flight. The reconciler
takes :class:`~edgefleet.agent.desired.Desired`, never the wire message.

Failures are remembered per variant: a bundle that fails verification is retried with
exponential backoff rather than on every heartbeat, and is reported as ``failed_variant``
with its reason until some variant activates successfully. Transient transfer errors (cut
stream, coordinator away) are not reported as failures - the partial download is kept and
resumed on a later heartbeat, after a short backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.agent.artifacts import ArtifactCache, ArtifactError, DownloadResult, Metadata
from edgefleet.agent.desired import Desired
from edgefleet.agent.update import Runner, UpdateMachine
from edgefleet.v1 import artifact_pb2_grpc

__all__ = ["ReconcileStatus", "Reconciler"]

log = logging.getLogger("edgefleet.agent.reconcile")


@dataclass(frozen=True)
class ReconcileStatus:
    """What the agent reports in its next heartbeat."""

    active_variant: str = ""
    previous_variant: str = ""
    failed_variant: str = ""
    failure_reason: str = ""


@dataclass
class _Failure:
    reason: str
    attempts: int
    retry_at: float
    permanent: bool


class Reconciler:
    """Drives an :class:`ArtifactCache` toward the desired variant, one heartbeat at a time."""

    def __init__(
        self,
        cache: ArtifactCache,
        *,
        device_id: str = "",
        wait_seconds: float | None = 0.0,
        backoff_base: float = 5.0,
        backoff_max: float = 600.0,
        transient_backoff_max: float = 30.0,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.device_id = device_id
        self.wait_seconds = wait_seconds
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._transient_max = transient_backoff_max
        #: The persisted stages; constructing the reconciler recovers from a crash.
        self.machine = UpdateMachine(cache, runner)
        self.machine.recover()
        self._clock = clock
        self._failures: dict[str, _Failure] = {}
        self._reported: tuple[str, str] = ("", "")
        self._task: asyncio.Task[DownloadResult] | None = None
        self._task_desired: Desired | None = None
        #: The last download that completed over the wire (diagnostics and tests).
        self.last_download: DownloadResult | None = None

    def status(self) -> ReconcileStatus:
        return ReconcileStatus(
            active_variant=self.cache.current(),
            previous_variant=self.cache.previous(),
            failed_variant=self._reported[0],
            failure_reason=self._reported[1],
        )

    def _backoff(self, attempts: int, ceiling: float) -> float:
        return float(min(ceiling, self._backoff_base * 2 ** (attempts - 1)))

    async def _cancel_task(self) -> None:
        task, self._task, self._task_desired = self._task, None, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ArtifactError):
                await task
        if task is not None:
            self.machine.rollback_update()  # the fetch is abandoned: back to idle

    async def reconcile(
        self,
        desired: Desired,
        stub: artifact_pb2_grpc.ArtifactServiceStub,
        metadata: Metadata,
    ) -> ReconcileStatus:
        """One pass: start, collect or skip the work ``desired`` calls for; return the status."""
        target = desired.variant_id
        if not target:
            await self._cancel_task()
            if desired.generation > 0:  # told to serve nothing (a rollback to "no variant")
                self._serve_nothing(desired.generation)
            # generation 0: the coordinator never assigned anything (e.g. its store was
            # reset); leave whatever is served alone rather than take a device down
            return self.status()
        if target == self.cache.current():
            await self._cancel_task()
            self._failures.pop(target, None)
            return self.status()
        if self._task is not None and (
            self._task_desired is None or self._task_desired.variant_id != target
        ):
            log.info("desired variant changed to %s; abandoning the previous download", target)
            await self._cancel_task()
        if self._task is None:
            failure = self._failures.get(target)
            if failure is not None and self._clock() < failure.retry_at:
                return self.status()
            self.machine.fetch(desired)
            self._task = asyncio.create_task(
                self.cache.fetch(target, stub, metadata, self.device_id),
                name=f"fetch-{target[:12]}",
            )
            self._task_desired = desired
        task = self._task
        if self.wait_seconds is None:
            await asyncio.wait({task})
        elif self.wait_seconds > 0:
            await asyncio.wait({task}, timeout=self.wait_seconds)
        if task.done():
            await self._finish(task, desired)
        return self.status()

    async def _finish(self, task: asyncio.Task[DownloadResult], desired: Desired) -> None:
        self._task, self._task_desired = None, None
        target = desired.variant_id
        try:
            result = task.result()
            if not result.cached:
                self.last_download = result
            await self.machine.install(desired)  # verify, stage, commit (rolls back on error)
        except asyncio.CancelledError:
            self.machine.rollback_update()
            return
        except ArtifactError as exc:
            self.machine.rollback_update()
            self._record_failure(target, exc)
            return
        except OSError as exc:  # disk full, permissions: the device cannot take it now
            self.machine.rollback_update()
            self._record_failure(target, ArtifactError(f"cannot store variant: {exc}"))
            return
        except Exception as exc:  # a bug or an unforeseen error must not stop the heartbeats
            log.exception("unexpected error while fetching variant %s", target[:12])
            self.machine.rollback_update()
            err = ArtifactError(f"unexpected error: {exc!r}")
            err.permanent = False
            self._record_failure(target, err)
            return
        self._failures.pop(target, None)
        self._reported = ("", "")
        removed = self.cache.gc()
        log.info(
            "variant %s active%s", target[:12], f"; removed {len(removed)} old" if removed else ""
        )

    def _serve_nothing(self, generation: int) -> None:
        if self.machine.serve_nothing(generation):
            self._reported = ("", "")

    def _record_failure(self, target: str, exc: ArtifactError) -> None:
        previous = self._failures.get(target)
        attempts = (previous.attempts if previous else 0) + 1
        if exc.permanent:
            delay = self._backoff(attempts, self._backoff_max)
            self._reported = (target, str(exc)[:1024])
            log.error(
                "variant %s refused: %s (retry in %.0fs; still serving %s)",
                target[:12],
                exc,
                delay,
                self.cache.current()[:12] or "nothing",
            )
        else:
            delay = self._backoff(attempts, self._transient_max)
            log.warning("variant %s: %s (retry in %.0fs)", target[:12], exc, delay)
        self._failures[target] = _Failure(str(exc), attempts, self._clock() + delay, exc.permanent)

    async def aclose(self) -> None:
        """Stop an in-flight download (its partial file is kept for the next run)."""
        await self._cancel_task()

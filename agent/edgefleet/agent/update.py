"""The update state machine: fetch -> verify -> stage -> commit | rollback, persisted.

Modelled on an over-the-air update client's state machine (Mender's download, install, commit
and rollback states). Three modules share the work:

- ``edgefleet.agent.desired`` - :class:`Desired`, the coordinator's desired state as a plain
  value (the session converts the wire message; nothing below it sees protobuf types);
- ``edgefleet.agent.activation`` - the activation record (``artifacts/activation.json``), the
  single source of truth for what is active; the ``current``/``previous`` links derive from it;
- this module - :class:`UpdateMachine`: the stages, crash recovery, rollback.

Each transition writes the activation record *before* the stage's work, so a crash anywhere
is followed, at the next start, by :meth:`UpdateMachine.recover`:

============  ===========================================================================
crashed in    on restart
============  ===========================================================================
fetch         roll back to the served variant; the partial download is kept, so the next
              heartbeat that still wants the target resumes it from its last whole chunk
verify        roll back; a bundle only ever reaches ``variants/<id>`` verified, so the next
              attempt finds it cached (and verifies it again) or fetches it again
stage         roll back: the runtime that was loading died with the process and the links
              never moved; the next heartbeat stages the target again
commit        roll forward: the target was verified and loaded by then; the links are
              repointed to what the record names and the record goes idle
rollback      finish the rollback: the links go back to the served variant
============  ===========================================================================

so ``current`` never disagrees with the record once the agent is running, and nothing is
served that was not committed. The served runtime follows the record too: it is loaded next
to the one serving during *stage* and swapped in only after the commit is on disk
(:class:`Runner`); a refusal or an error before that drops it and rolls back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Protocol

from edgefleet.agent.activation import ActivationRecord, Stage
from edgefleet.agent.artifacts import ArtifactCache, ArtifactError
from edgefleet.agent.desired import Desired
from edgefleet.bundle import Bundle

__all__ = ["Runner", "UpdateMachine"]

log = logging.getLogger("edgefleet.agent.update")


class Runner(Protocol):
    """What serves the active variant (``edgefleet.agent.serving.Serving``)."""

    def stage(self, bundle: Bundle, runtime: str = "") -> str | None:
        """Load ``bundle`` next to the served runtime; a reason on refusal (nothing changes)."""
        ...

    def swap(self) -> None:
        """Serve the staged runtime (after the commit is persisted)."""
        ...

    def abort(self) -> None:
        """Drop the staged runtime (the update rolled back)."""
        ...

    def unload(self) -> None:
        """Serve nothing."""
        ...


class UpdateMachine:
    """Drives one :class:`ArtifactCache`'s activation record through the stages."""

    def __init__(self, cache: ArtifactCache, runner: Runner | None = None) -> None:
        self.cache = cache
        self.store = cache.store
        self.runner = runner

    @property
    def record(self) -> ActivationRecord:
        return self.store.read()

    def _write(self, record: ActivationRecord) -> ActivationRecord:
        self.store.write(record)
        return record

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> ActivationRecord:
        """At start-up: finish or undo whatever the record says was in flight, and make the
        links agree with the record. Idempotent; writes nothing when all is settled."""
        record = self.record
        if record.stage == Stage.COMMIT and (not record.target or self.cache.has(record.target)):
            log.warning(
                "resuming the commit of %s after a restart", record.target[:12] or "nothing"
            )
            done = record.committed()
        elif record.stage != Stage.IDLE:
            log.warning(
                "rolling back the update to %s (interrupted at %s); serving %s",
                record.target[:12] or "nothing",
                record.stage,
                record.variant[:12] or "nothing",
            )
            done = record.rolled_back()
        else:
            done = record
        if done.variant and not self.cache.has(done.variant):
            log.error("active variant %s is missing from the cache", done.variant[:12])
            done = replace(done, variant="", runtime="")
        if done.previous and not self.cache.has(done.previous):
            done = replace(done, previous="")
        if done != record or not self.store.path.exists() or not self.store.links_agree(done):
            self.store.sync_links(done)
            self.store.write(done)
        return done

    # --- the stages -------------------------------------------------------------------------

    def fetch(self, desired: Desired) -> None:
        """Persist: downloading ``desired.variant_id`` (the cache does the download)."""
        record = self.record
        self._write(
            replace(
                record.rolled_back(),
                stage=Stage.FETCH,
                generation=desired.generation,
                target=desired.variant_id,
                target_runtime=desired.runtime,
            )
        )

    async def install(self, desired: Desired) -> None:
        """After the fetch: verify, stage, commit; on any failure roll back and re-raise.

        Raises :class:`ArtifactError` for a refusal (verification, the runtime) and lets
        other errors (disk full) through after the rollback.
        """
        record = self.record
        if record.stage != Stage.FETCH or record.target != desired.variant_id:
            record = replace(
                record.rolled_back(),
                generation=desired.generation,
                target=desired.variant_id,
                target_runtime=desired.runtime,
            )
        try:
            record = self._write(replace(record, stage=Stage.VERIFY))
            bundle = await asyncio.to_thread(self.cache.load, desired.variant_id)
            record = self._write(replace(record, stage=Stage.STAGE))
            if self.runner is not None:
                refusal = await asyncio.to_thread(self.runner.stage, bundle, desired.runtime)
                if refusal:
                    raise ArtifactError(refusal)
            self.store.commit(record)
        except BaseException:
            self.rollback_update()
            raise
        if self.runner is not None:
            self.runner.swap()
        log.info("committed variant %s", desired.variant_id[:12])

    def rollback_update(self) -> None:
        """Abandon the update in flight: drop its runtime, keep serving ``variant``."""
        if self.runner is not None:
            self.runner.abort()
        record = self.record
        if record.stage == Stage.IDLE:
            return
        self._write(replace(record, stage=Stage.ROLLBACK))
        done = record.rolled_back()
        self.store.sync_links(done)
        self.store.write(done)

    def serve_nothing(self, generation: int) -> bool:
        """Commit "no variant" (the coordinator rolled back to nothing). True if it changed."""
        record = self.record
        if record.stage == Stage.IDLE and not record.variant:
            return False
        self._write(
            replace(
                record.rolled_back(),
                stage=Stage.COMMIT,
                generation=generation or record.generation,
                target="",
                target_runtime="",
            )
        )
        if self.runner is not None:
            self.runner.unload()
        self.store.commit(self.record)
        log.info("serving nothing (was %s)", record.variant[:12] or "nothing")
        return True

    def rollback(self) -> str:
        """Go back to the previous variant (served and previous swap); return it."""
        record = self.record
        if record.stage != Stage.IDLE:
            raise ArtifactError(f"an update is in flight ({record.stage})")
        if not record.previous or not self.cache.has(record.previous):
            raise ArtifactError("no previous variant to roll back to")
        target = replace(record, target=record.previous, target_runtime="")
        self._write(replace(target, stage=Stage.ROLLBACK))
        if self.runner is not None:
            bundle = self.cache.load(record.previous)
            refusal = self.runner.stage(bundle, "")
            if refusal:
                self.rollback_update()
                raise ArtifactError(refusal)
        self.store.commit(target)
        if self.runner is not None:
            self.runner.swap()
        log.info("rolled back to variant %s", record.previous[:12])
        return record.previous

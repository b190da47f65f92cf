"""The activation record: one JSON file, written atomically, that says what is active.

``<state dir>/artifacts/activation.json``::

    {"stage": "idle", "variant": "<id>", "previous": "<id>", "generation": 7,
     "runtime": "onnxruntime", "target": "", "target_runtime": ""}

- ``variant`` is the variant being served ("" = nothing) and ``previous`` the one kept for a
  rollback; ``runtime`` is what ``variant`` is served with (so a restarted agent loads it the
  same way; this replaces the old ``serving.json``).
- ``stage`` is ``idle`` when nothing is in flight; otherwise the update of ``target`` (with
  ``target_runtime``, for desired ``generation``) is at that stage. While an update is in
  flight ``variant`` is still what is served: only the commit changes it.

The ``current`` and ``previous`` symlinks under ``artifacts/`` are derived from the record
(:meth:`ActivationStore.sync_links`): the record is written first, then the links, so after a
crash the record is right and recovery repoints the links. Readers of "what is active" read
the record. A state dir from before the record (links only) is read from its links.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from edgefleet.fsutil import atomic_write

__all__ = ["RECORD_FILE", "ActivationRecord", "ActivationStore", "Stage"]

log = logging.getLogger("edgefleet.agent.update")

RECORD_FILE = "activation.json"


class Stage(StrEnum):
    """Where an update is; each is persisted before it runs."""

    IDLE = "idle"  # nothing in flight: ``variant`` is committed
    FETCH = "fetch"  # downloading ``target`` (a partial download survives a crash)
    VERIFY = "verify"  # checking the whole bundle: signature, id, every file's hash
    STAGE = "stage"  # loading ``target`` into a runtime next to the one serving
    COMMIT = "commit"  # making ``target`` the served variant (record, then links)
    ROLLBACK = "rollback"  # undoing an update: back to ``variant``


@dataclass(frozen=True)
class ActivationRecord:
    stage: Stage = Stage.IDLE
    variant: str = ""
    previous: str = ""
    generation: int = 0
    runtime: str = ""
    target: str = ""
    target_runtime: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ActivationRecord:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("activation record is not an object")
        return cls(
            stage=Stage(raw.get("stage", "idle")),
            variant=str(raw.get("variant", "")),
            previous=str(raw.get("previous", "")),
            generation=int(raw.get("generation", 0)),
            runtime=str(raw.get("runtime", "")),
            target=str(raw.get("target", "")),
            target_runtime=str(raw.get("target_runtime", "")),
        )

    def committed(self) -> ActivationRecord:
        """The idle record once ``target`` is committed: the served variant becomes previous
        (when there was one; "serve nothing" after "nothing" keeps the old previous)."""
        if self.target == self.variant:
            return replace(self, stage=Stage.IDLE, target="", target_runtime="")
        return ActivationRecord(
            stage=Stage.IDLE,
            variant=self.target,
            previous=self.variant or self.previous,
            generation=self.generation,
            runtime=self.target_runtime if self.target else "",
        )

    def rolled_back(self) -> ActivationRecord:
        """The idle record with the update abandoned: ``variant`` stays served."""
        return replace(self, stage=Stage.IDLE, target="", target_runtime="")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ActivationStore:
    """Reads and writes the record under ``root`` (``<state dir>/artifacts``) and derives the
    ``current``/``previous`` symlinks from it. Reading never writes: another process (a
    checker, a test) may read while the agent runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORD_FILE

    def _link(self, name: str) -> str:
        try:
            return Path(os.readlink(self.root / name)).name
        except OSError:
            return ""

    def read(self) -> ActivationRecord:
        try:
            return ActivationRecord.from_json(self.path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:  # cannot happen with atomic writes
            log.error("activation record unreadable (%s); falling back to the links", exc)
        # No record yet (a fresh device, or a state dir from before the record): the links
        # are all there is, and they were only ever swapped atomically; the runtime was in
        # ``serving.json`` next to ``artifacts/``.
        current = self._link("current")
        runtime = ""
        try:
            legacy = json.loads((self.root.parent / "serving.json").read_text())
            if isinstance(legacy, dict) and legacy.get("variant_id") == current:
                runtime = str(legacy.get("runtime", ""))
        except (OSError, ValueError):
            pass
        return ActivationRecord(variant=current, previous=self._link("previous"), runtime=runtime)

    def write(self, record: ActivationRecord) -> None:
        atomic_write(self.path, record.to_json())

    def links_agree(self, record: ActivationRecord) -> bool:
        return (self._link("current"), self._link("previous")) == (
            record.variant,
            record.previous,
        )

    def sync_links(self, record: ActivationRecord) -> None:
        """Point ``current``/``previous`` at what ``record`` says (previous first, so a crash in
        between leaves both links at valid bundles); remove a link the record leaves empty."""
        for name, variant_id in (("previous", record.previous), ("current", record.variant)):
            if self._link(name) == variant_id and (variant_id or not self._exists(name)):
                continue
            if variant_id:
                self._point(name, variant_id)
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()
                _fsync_dir(self.root)

    def _exists(self, name: str) -> bool:
        return (self.root / name).is_symlink()

    def _point(self, name: str, variant_id: str) -> None:
        """Atomically make ``<root>/<name>`` a symlink to ``variants/<variant_id>``."""
        tmp = self.root / f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(Path("variants") / variant_id, tmp)
        try:
            os.replace(tmp, self.root / name)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.root)

    def commit(self, record: ActivationRecord) -> ActivationRecord:
        """Commit ``record.target``: persist the commit stage, move the links, persist idle."""
        self.write(replace(record, stage=Stage.COMMIT))
        done = record.committed()
        self.sync_links(done)
        self.write(done)
        return done

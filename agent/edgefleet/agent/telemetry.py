"""A bounded, crash-safe, on-disk telemetry buffer with sequence numbers.

Why on disk and numbered: a device may be offline for hours, its agent may be
killed, the coordinator may restart. Every metric and event is committed to
SQLite (WAL, synchronous=FULL) before anything tries to send it, gets the next
sequence number (SQLite AUTOINCREMENT never reuses one, across restarts too),
and is deleted only after the coordinator acknowledged that sequence. Sending is
therefore at-least-once, and the coordinator deduplicates by (device,
sequence), so each record counts exactly once.

Bounded: when ``max_records`` are waiting, the oldest are dropped (a device
must not fill its flash with telemetry) and the number dropped is kept, so the
loss is visible rather than silent.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.agent.identity import ensure_state_dir

TELEMETRY_FILE = "telemetry.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    time_unix REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('metric', 'event')),
    name TEXT NOT NULL,
    value REAL,
    message TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class BufferedRecord:
    sequence: int
    time_unix: float
    kind: str  # "metric" or "event"
    name: str
    value: float | None = None
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _private_file(path: Path) -> None:
    """Create the database 0600, or tighten an existing one (and its WAL files) to 0600.

    Why: telemetry names the device's models, labels and measurements; SQLite
    creates its -wal and -shm files with the database's own mode, so fixing the
    database covers them from here on.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)


class TelemetryBuffer:
    """Thread-safe; one per agent state dir."""

    def __init__(self, state_dir: Path, max_records: int = 10_000) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        ensure_state_dir(state_dir)
        self.max_records = max_records
        self._lock = threading.Lock()
        path = state_dir / TELEMETRY_FILE
        _private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _append(
        self, kind: str, name: str, value: float | None, message: str, labels: dict[str, str]
    ) -> int:
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO records (time_unix, kind, name, value, message, labels) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), kind, name, value, message, json.dumps(labels, sort_keys=True)),
            )
            sequence = int(cur.lastrowid or 0)
            overflow = self._count_locked() - self.max_records
            if overflow > 0:
                self._db.execute(
                    "DELETE FROM records WHERE sequence IN "
                    "(SELECT sequence FROM records ORDER BY sequence LIMIT ?)",
                    (overflow,),
                )
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (overflow,),
                )
            return sequence

    def metric(self, name: str, value: float, labels: dict[str, str] | None = None) -> int:
        """Buffer a measurement; returns its sequence number."""
        return self._append("metric", name, float(value), "", labels or {})

    def event(self, kind: str, message: str = "", attributes: dict[str, str] | None = None) -> int:
        """Buffer an event; returns its sequence number."""
        return self._append("event", kind, None, message, attributes or {})

    def _count_locked(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def pending(self) -> int:
        with self._lock:
            return self._count_locked()

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
            return int(row[0]) if row else 0

    def last_sequence(self) -> int:
        """The highest sequence ever assigned (0 if none), whether sent or not."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
            ).fetchone()
            return int(row[0]) if row else 0

    def peek(self, limit: int) -> list[BufferedRecord]:
        """The oldest ``limit`` unacknowledged records, ascending."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, time_unix, kind, name, value, message, labels FROM records "
                "ORDER BY sequence LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            BufferedRecord(
                sequence=int(seq),
                time_unix=float(ts),
                kind=str(kind),
                name=str(name),
                value=None if value is None else float(value),
                message=str(message),
                labels=json.loads(labels),
            )
            for seq, ts, kind, name, value, message, labels in rows
        ]

    def ack(self, up_to: int) -> int:
        """Forget every record with sequence <= ``up_to``; returns how many went."""
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM records WHERE sequence <= ?", (up_to,))
            return int(cur.rowcount)

"""The journal: every job's record in an embedded SQLite database (WAL mode), so nothing is lost on a restart.

One row per job: its submission metadata and package, idempotency key, state (the terminal state is written once:
the row is never moved out of a terminal state), placement, partition and service ids, result envelope, and
teardown outcome. The :class:`Journal` actor owns the connection; writes are casts, batched into one transaction
per wake-up, so recording a state change never waits for the disk. Reads are calls.

All SQLite work runs in a worker thread (``trio.to_thread``), one at a time (``:memory:`` journals, for tests,
run in the Trio thread).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from cumulus.actors.base import Actor
from cumulus.jobs import JobRecord, JobSpec, JobState, Placement, TeardownReport

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    idempotency_key TEXT,
    name            TEXT NOT NULL DEFAULT '',
    spec            TEXT NOT NULL,          -- JSON: gpu, duration, requirements, env, retries, priority, ...
    package         BLOB NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    attempt         INTEGER NOT NULL DEFAULT 1,
    placement       TEXT,                   -- JSON or NULL
    partition_id    TEXT NOT NULL DEFAULT '',
    service_id      TEXT NOT NULL DEFAULT '',
    result          BLOB,
    teardown        TEXT,                   -- JSON or NULL
    submitted_at    REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(idempotency_key) WHERE idempotency_key != '';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""
TERMINAL = tuple(s.value for s in JobState if s.terminal)


@dataclass(frozen=True)
class Save:
    row: dict[str, Any]


@dataclass(frozen=True)
class Load:
    job_id: str


@dataclass(frozen=True)
class FindKey:
    key: str


@dataclass(frozen=True)
class Unfinished:
    pass


@dataclass(frozen=True)
class Flush:
    pass


def row_of(record: JobRecord, *, with_package: bool) -> dict[str, Any]:
    spec = record.spec
    row: dict[str, Any] = {
        "job_id": record.job_id, "idempotency_key": spec.idempotency_key, "name": spec.name,
        "spec": json.dumps({"gpu": spec.gpu, "duration": spec.duration, "requirements": list(spec.requirements),
                            "env": spec.env, "retries": spec.retries, "retry_exceptions": spec.retry_exceptions,
                            "priority": spec.priority, "max_queue_seconds": spec.max_queue_seconds}),
        "state": record.state.value, "reason": record.reason, "attempt": record.attempt,
        "placement": json.dumps(record.placement.__dict__) if record.placement else None,
        "partition_id": record.partition_id, "service_id": record.service_id, "result": record.result,
        "teardown": None if record.teardown is None else json.dumps(
            {"released": record.teardown.released, "leaked": record.teardown.leaked}),
        "submitted_at": record.submitted_at, "started_at": record.started_at, "finished_at": record.finished_at,
    }
    if with_package:
        row["package"] = spec.package
    return row


def record_of(row: sqlite3.Row) -> JobRecord:
    """Rebuild a record from its row; an ended job's record comes back ended (finished and torn down)."""
    meta = json.loads(row["spec"])
    spec = JobSpec(package=row["package"], gpu=meta["gpu"], duration=meta["duration"],
                   requirements=tuple(meta["requirements"]), env=meta["env"], name=row["name"],
                   idempotency_key=row["idempotency_key"] or "", retries=meta["retries"],
                   retry_exceptions=meta["retry_exceptions"], priority=meta["priority"],
                   max_queue_seconds=meta["max_queue_seconds"])
    record = JobRecord(row["job_id"], spec)
    record.state = JobState(row["state"])
    record.reason = row["reason"]
    record.attempt = row["attempt"]
    record.placement = Placement(**json.loads(row["placement"])) if row["placement"] else None
    if record.placement:
        record.placement = Placement(**{**record.placement.__dict__,
                                        "device_indexes": tuple(record.placement.device_indexes),
                                        "gpu_uuids": tuple(record.placement.gpu_uuids)})
    record.partition_id, record.service_id, record.result = row["partition_id"], row["service_id"], row["result"]
    record.submitted_at, record.started_at, record.finished_at = (
        row["submitted_at"], row["started_at"], row["finished_at"])
    record.announce()
    if record.state.terminal:
        record.finished.set()
        teardown = json.loads(row["teardown"]) if row["teardown"] else {"released": [], "leaked": []}
        record.set_torn_down(TeardownReport(tuple(teardown["released"]), tuple(teardown["leaked"])))
    return record


class JournalStore:
    """The SQLite database itself (blocking; used from one thread at a time)."""

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).expanduser()) if path != ":memory:" else path
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def save_many(self, rows: list[dict[str, Any]]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            for row in rows:
                if "package" in row:  # a new job
                    columns = ", ".join(row)
                    self.db.execute(f"INSERT OR IGNORE INTO jobs ({columns}) VALUES "
                                    f"({', '.join(':' + c for c in row)})", row)
                # A terminal row is never changed again, except to add its teardown outcome.
                updates = ", ".join(f"{c}=:{c}" for c in row if c not in ("job_id", "package"))
                self.db.execute(f"UPDATE jobs SET {updates} WHERE job_id = :job_id "
                                f"AND (state NOT IN {TERMINAL} OR state = :state)", row)

    def load(self, job_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()

    def find_key(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()

    def unfinished(self) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT * FROM jobs WHERE state NOT IN {TERMINAL} OR teardown IS NULL").fetchall()

    def forget_before(self, horizon: float) -> int:
        with self.db:
            cursor = self.db.execute(f"DELETE FROM jobs WHERE state IN {TERMINAL} AND finished_at < ?", (horizon,))
        return cursor.rowcount

    def close(self) -> None:
        self.db.close()


class Journal(Actor):
    """Owns the journal database. ``Save`` casts are batched; ``Load``/``FindKey``/``Unfinished`` are calls."""

    name = "journal"
    mailbox_size = 100_000

    def __init__(self, path: str, retention: float) -> None:
        super().__init__()
        self.path = path
        self.retention = retention
        self.store: JournalStore | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self.writes = 0
        # An in-memory journal (tests) is fast enough to use from the Trio thread directly.
        self._threaded = path != ":memory:"

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._threaded:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def on_start(self) -> None:
        self.store = await self._run(JournalStore, self.path)
        forgotten = await self._run(self.store.forget_before, time.time() - self.retention)
        if forgotten:
            log.info("journal: forgot %d jobs older than %g s", forgotten, self.retention)
        await self.owner.own(self._open_until_stopped(), what="journal database")
        self.start_soon(self._writer)

    async def handle(self, message: Any) -> Any:
        store = self.store
        assert store is not None
        match message:
            case Save(row):
                pending = self._pending.get(row["job_id"])
                self._pending[row["job_id"]] = {**pending, **row} if pending else row
                self._wake.set()
                return None
            case Load(job_id):
                return await self._read(store.load, job_id)
            case FindKey(key):
                return await self._read(store.find_key, key)
            case Unfinished():
                return await self._read(store.unfinished)
            case Flush():
                await self._flush()
                return None
        raise TypeError(f"journal: unknown message {message!r}")

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        async with self._lock:  # one thread at a time on the connection
            if not self._pending or self.store is None:
                return
            rows, self._pending = list(self._pending.values()), {}
            await self._run(self.store.save_many, rows)
            self.writes += len(rows)

    async def _read(self, fn: Any, *args: Any) -> Any:
        await self._flush()
        async with self._lock:
            return await self._run(fn, *args)

    @asynccontextmanager
    async def _open_until_stopped(self) -> AsyncIterator[None]:
        """Held while the actor runs; on exit writes what is pending and closes the database (bounded)."""
        try:
            yield
        finally:
            with trio.move_on_after(10, shield=True):
                await self._flush()
                async with self._lock:
                    if self.store is not None:
                        await self._run(self.store.close)

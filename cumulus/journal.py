"""The journal: every job's record in an embedded SQLite database (WAL mode), so nothing is lost on a restart.

One row per job: its submission metadata and package, idempotency key, state (the terminal state is written once:
the row is never moved out of a terminal state), placement, partition and service ids, result envelope, and
teardown outcome. And each job's history (``job_events``: one row per event, see :mod:`cumulus.history` for
which events and their bounds: at most ``MAX_EVENTS_PER_JOB`` (200) per job, plus its end), deleted with its job.
The :class:`Journal` actor owns the connection; writes (rows and events) are casts, batched into one transaction
per wake-up, so recording a state change or an event never waits for the disk. Reads are calls.

A journal file written before ``job_events`` existed opens as it is: the table is created if missing.

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
from typing import Any, AsyncIterator, Sequence

import trio

from cumulus.actors.base import Actor
from cumulus.history import END_EVENTS_RESERVE, MAX_EVENTS_PER_JOB, HistoryEvent, limit_reached
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
CREATE TABLE IF NOT EXISTS job_events (
    job_id          TEXT NOT NULL,
    seq             INTEGER NOT NULL,       -- 1, 2, ... per job, in the order the events happened
    at              REAL NOT NULL,          -- Unix seconds
    kind            TEXT NOT NULL,          -- state | message | placement | queue | retry | teardown
    payload         TEXT NOT NULL,          -- JSON: text, attempt, state, reason, data
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
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


@dataclass(frozen=True)
class AddEvent:
    """Cast: append one event to its job's history (batched like ``Save``)."""

    event: HistoryEvent


@dataclass(frozen=True)
class LoadEvents:
    """Call: the job's history, oldest first (a list of HistoryEvent; empty for an unknown job)."""

    job_id: str


def row_of(record: JobRecord, *, with_package: bool) -> dict[str, Any]:
    """The record as a row. ``with_package``: the whole row of a new job (spec and package included); otherwise
    only what changes during a job's life (a spec never does)."""
    spec = record.spec
    row: dict[str, Any] = {
        "job_id": record.job_id,
        "state": record.state.value, "reason": record.reason, "attempt": record.attempt,
        "placement": json.dumps(record.placement.__dict__) if record.placement else None,
        "partition_id": record.partition_id, "service_id": record.service_id, "result": record.result,
        "teardown": None if record.teardown is None else json.dumps(
            {"released": record.teardown.released, "leaked": record.teardown.leaked}),
        "submitted_at": record.submitted_at, "started_at": record.started_at, "finished_at": record.finished_at,
    }
    if with_package:
        row.update({
            "idempotency_key": spec.idempotency_key, "name": spec.name, "package": spec.package,
            "spec": json.dumps({"gpu": spec.gpu, "duration": spec.duration, "requirements": list(spec.requirements),
                                "env": spec.env, "retries": spec.retries, "retry_exceptions": spec.retry_exceptions,
                                "priority": spec.priority, "max_queue_seconds": spec.max_queue_seconds}),
        })
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
        self._statements: dict[tuple[str, tuple[str, ...]], str] = {}
        self._event_counts: dict[str, list[int]] = {}

    def save_many(self, rows: list[dict[str, Any]], events: Sequence[HistoryEvent] = ()) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self._add_events(events)
            new = [row for row in rows if "package" in row]
            for row in new:
                self.db.execute(self._statement("INSERT", tuple(row)), row)
            # A terminal row is never changed again, except to add its teardown outcome.
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                by_columns.setdefault(tuple(row), []).append(row)
            for columns, group in by_columns.items():
                self.db.executemany(self._statement("UPDATE", columns), group)

    def _statement(self, kind: str, columns: tuple[str, ...]) -> str:
        statement = self._statements.get((kind, columns))
        if statement is None:
            if kind == "INSERT":
                statement = (f"INSERT OR IGNORE INTO jobs ({', '.join(columns)}) VALUES "
                             f"({', '.join(':' + c for c in columns)})")
            else:
                updates = ", ".join(f"{c}=:{c}" for c in columns if c not in ("job_id", "package"))
                statement = (f"UPDATE jobs SET {updates} WHERE job_id = :job_id "
                             f"AND (state NOT IN {TERMINAL} OR state = :state)")
            self._statements[kind, columns] = statement
        return statement

    def _add_events(self, events: Sequence[HistoryEvent]) -> None:
        """Append ``events`` (inside the caller's transaction), each job's bounded (see :mod:`cumulus.history`)."""
        counts = self._event_counts  # job id -> [events kept, last seq], read once per job from the table
        if len(counts) > EVENT_COUNTS_KEPT:  # bounded memory: forgotten counts are read again when needed
            counts.clear()
        kept_rows = []
        for event in events:
            kept = counts.get(event.job_id)
            if kept is None:
                kept = counts[event.job_id] = list(self.db.execute(
                    "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = ?",
                    (event.job_id,)).fetchone())
            if kept[0] >= MAX_EVENTS_PER_JOB + END_EVENTS_RESERVE:
                continue
            if not event.is_end and kept[0] >= MAX_EVENTS_PER_JOB - 1:
                if kept[0] > MAX_EVENTS_PER_JOB - 1:
                    continue
                event = limit_reached(event.job_id, event.at, event.attempt)
            kept[0] += 1
            kept[1] += 1
            kept_rows.append((event.job_id, kept[1], event.at, event.kind, event.payload()))
        self.db.executemany("INSERT INTO job_events (job_id, seq, at, kind, payload) VALUES (?, ?, ?, ?, ?)",
                            kept_rows)

    def events(self, job_id: str) -> list[HistoryEvent]:
        rows = self.db.execute("SELECT at, kind, payload FROM job_events WHERE job_id = ? ORDER BY seq",
                               (job_id,)).fetchall()
        return [HistoryEvent.from_row(job_id, row["at"], row["kind"], row["payload"]) for row in rows]

    def load(self, job_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()

    def find_key(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()

    def unfinished(self) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT * FROM jobs WHERE state NOT IN {TERMINAL} OR teardown IS NULL").fetchall()

    def forget_before(self, horizon: float) -> int:
        with self.db:
            self.db.execute("DELETE FROM job_events WHERE job_id IN (SELECT job_id FROM jobs WHERE state IN "
                            f"{TERMINAL} AND finished_at < ?)", (horizon,))
            cursor = self.db.execute(f"DELETE FROM jobs WHERE state IN {TERMINAL} AND finished_at < ?", (horizon,))
        self._event_counts.clear()
        return cursor.rowcount

    def close(self) -> None:
        self.db.close()


WRITE_GATHER_SECONDS = 0.01
EVENT_COUNTS_KEPT = 10_000


class Journal(Actor):
    """Owns the journal database. ``Save``/``AddEvent`` casts are batched; ``Load``/``FindKey``/``Unfinished``/
    ``LoadEvents`` are calls."""

    name = "journal"
    mailbox_size = 100_000

    def __init__(self, path: str, retention: float) -> None:
        super().__init__()
        self.path = path
        self.retention = retention
        self.store: JournalStore | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_events: list[HistoryEvent] = []
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
            case AddEvent(event):
                self._pending_events.append(event)
                self._wake.set()
                return None
            case LoadEvents(job_id):
                return await self._read(store.events, job_id)
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
            # Gather what comes in the next moment into the same transaction: a burst of jobs changing state
            # costs one write, not one per change. Nothing waits for it (reads flush first).
            await trio.sleep(WRITE_GATHER_SECONDS)
            self._wake = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        async with self._lock:  # one thread at a time on the connection
            if not (self._pending or self._pending_events) or self.store is None:
                return
            rows, self._pending = list(self._pending.values()), {}
            events, self._pending_events = self._pending_events, []
            await self._run(self.store.save_many, rows, events)
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

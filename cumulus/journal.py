"""The journal: every job's record in an embedded SQLite database (WAL mode), so nothing is lost on a restart.

One row per job: its submission metadata and package, idempotency key, state (the terminal state is written once:
the row is never moved out of a terminal state), placement, partition and service ids, result envelope, and
teardown outcome. And each job's history (``job_events``: one row per event, see :mod:`cumulus.history` for
which events and their bounds: at most ``MAX_EVENTS_PER_JOB`` (200) per job, plus its end), deleted with its job.
The :class:`Journal` actor owns the connection; writes (rows and events) are casts, batched into one transaction
per wake-up, so recording a state change or an event never waits for the disk. Reads are calls.

And every job attempt's device usage (``usage``, :mod:`cumulus.usage`: one row per attempt that reached RUNNING,
cast as ``RecordUsage`` when it ends, summed by ``SummarizeUsage``), which is never deleted with its job.

A journal file written before ``job_events`` or ``usage`` existed opens as it is: the tables are created if missing.
The file is readable by its owner only (0600); a job's secret env values are stored sealed
(:mod:`cumulus.journal_rows`), and idempotency keys are unique per owner. One process at a time uses a journal
file: every connection holds its lock (:mod:`cumulus.journal_lock`); backup and restore: :mod:`cumulus.journal_backup`.

All SQLite work runs in a worker thread (``trio.to_thread``), one at a time (``:memory:`` journals, for tests,
run in the Trio thread).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import trio

from cumulus import journal_lock
from cumulus.actors.base import Actor
from cumulus.history import END_EVENTS_RESERVE, MAX_EVENTS_PER_JOB, HistoryEvent, limit_reached
from cumulus import index_credentials
from cumulus.errors import ConfigError
from cumulus.jobs import JobState
from cumulus.journal_rows import SecretBox, record_of, row_of
from cumulus.usage import (USAGE_SCHEMA, RecordUsage, SummarizeUsage, UsageRecord, UsageReport, insert_usage,
                           select_usage, summarize)

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
    finished_at     REAL,
    owner           TEXT NOT NULL DEFAULT '',  -- the name of the token that submitted the job
    secret_env      BLOB,                   -- sealed (journal_rows.SecretBox), never clear text
    running_at      REAL,                   -- when the current attempt reached RUNNING (re-adoption's usage)
    ran_seconds     REAL NOT NULL DEFAULT 0, -- how long its paused attempts ran (counts against its duration)
    calls           TEXT                    -- an instance's calls per method, JSON (calls.CallStats.to_row)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS tokens (
    name            TEXT PRIMARY KEY,
    hash            TEXT NOT NULL UNIQUE,   -- sha256 of the bearer token; the token itself is never stored
    admin           INTEGER NOT NULL DEFAULT 0,
    limits          TEXT NOT NULL,          -- JSON: max_running, max_queued, max_gpu, rate
    created_at      REAL NOT NULL,
    revoked_at      REAL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id          TEXT NOT NULL,
    seq             INTEGER NOT NULL,       -- 1, 2, ... per job, in the order the events happened
    at              REAL NOT NULL,          -- Unix seconds
    kind            TEXT NOT NULL,          -- state | message | placement | queue | retry | teardown
    payload         TEXT NOT NULL,          -- JSON: text, attempt, state, reason, data
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
SECRETS_UNREADABLE = "secret_env_unreadable"  # set in a row whose secret env values cannot be opened
TERMINAL = tuple(s.value for s in JobState if s.terminal)


@dataclass(frozen=True)
class Save:
    row: dict[str, Any]


@dataclass(frozen=True)
class Load:
    job_id: str


@dataclass(frozen=True)
class FindKey:
    """Call: the row of ``owner``'s job with idempotency key ``key``, or None."""

    key: str
    owner: str = ""


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


# Columns added after the first release: a journal written before them gets them on open.
ADDED_COLUMNS = {"owner": "TEXT NOT NULL DEFAULT ''", "secret_env": "BLOB", "running_at": "REAL",
                 "ran_seconds": "REAL NOT NULL DEFAULT 0", "calls": "TEXT"}
INDEXES = """
DROP INDEX IF EXISTS jobs_idempotency;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency ON jobs(owner, idempotency_key)
    WHERE idempotency_key != '';
"""


def open_database(path: str) -> sqlite3.Connection:
    """The journal's SQLite database at ``path`` (``:memory:`` for tests), created readable by its owner only
    (file 0600, directory 0700: it holds packages, results and token hashes), schema up to date. The connection
    holds the journal's lock (:mod:`cumulus.journal_lock`) until closed: :class:`~cumulus.journal_lock.JournalInUse`
    when another process (a second supervisor, a restore) uses the journal."""
    if path == ":memory:":
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        hold = journal_lock.acquire(path)  # JournalInUse while another supervisor uses it; before any change
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            for file in (path, path + "-wal", path + "-shm"):  # older journals were made 0644
                if os.path.exists(file):
                    os.chmod(file, 0o600)
            db = journal_lock.connect(path, check_same_thread=False, isolation_level=None)
        finally:
            hold.release()  # the connection holds its own
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.executescript(USAGE_SCHEMA)
        db.executescript(index_credentials.SCHEMA)  # users' package index credentials, sealed
        columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        db.executescript(INDEXES)
    except BaseException:
        db.close()  # and its lock
        raise
    return db


class JournalStore:
    """The SQLite database itself (blocking; used from one thread at a time). ``secrets`` seals the jobs'
    secret env values (an ephemeral key when omitted)."""

    def __init__(self, path: str, secrets: SecretBox | None = None) -> None:
        self.path = str(Path(path).expanduser()) if path != ":memory:" else path
        self.secrets = secrets or SecretBox.ephemeral()
        self.db = open_database(self.path)
        self._statements: dict[tuple[str, tuple[str, ...]], str] = {}
        self._event_counts: dict[str, list[int]] = {}

    def save_many(self, rows: list[dict[str, Any]], events: Sequence[HistoryEvent] = (),
                  usage: Sequence[UsageRecord] = ()) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self._add_events(events)
            insert_usage(self.db, usage)
            rows = [{**row, "secret_env": self.secrets.seal(row["secret_env"])} if "secret_env" in row else row
                    for row in rows]
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

    def _opened(self, row: sqlite3.Row | None) -> dict[str, Any] | None:
        """The row as a dict, its secret env values opened."""
        if row is None:
            return None
        try:
            return {**dict(row), "secret_env": self.secrets.open(row["secret_env"])}
        except ConfigError as error:  # the key file changed: this job cannot run again, the others still can
            log.error("journal: job %s: %s", row["job_id"], error, extra={"job_id": row["job_id"]})
            return {**dict(row), "secret_env": {}, SECRETS_UNREADABLE: True}

    def load(self, job_id: str) -> dict[str, Any] | None:
        return self._opened(self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone())

    def find_key(self, key: str, owner: str = "") -> dict[str, Any] | None:
        return self._opened(self.db.execute("SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?",
                                            (owner, key)).fetchone())

    def unfinished(self) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT * FROM jobs WHERE state NOT IN {TERMINAL} OR teardown IS NULL").fetchall()
        return [self._opened(row) for row in rows]  # type: ignore[misc]

    def usage(self, query: SummarizeUsage) -> UsageReport:
        records = select_usage(self.db, since=query.since, owner=query.owner)
        return summarize(records, by=query.by, prices=dict(query.prices), currency=query.currency,
                         since=query.since)

    def forget_before(self, horizon: float) -> int:  # usage rows stay: they are what was used, and billed
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
    """Owns the journal database. ``Save``/``AddEvent``/``RecordUsage`` casts are batched; ``Load``/``FindKey``/
    ``Unfinished``/``LoadEvents``/``SummarizeUsage`` are calls."""

    name = "journal"
    mailbox_size = 100_000

    def __init__(self, path: str, retention: float, secrets: SecretBox | None = None) -> None:
        super().__init__()
        self.path = path
        self.secrets = secrets
        self.retention = retention
        self.store: JournalStore | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_events: list[HistoryEvent] = []
        self._pending_usage: list[UsageRecord] = []
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
        self.store = await self._run(JournalStore, self.path, self.secrets)
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
            case RecordUsage(usage):
                self._pending_usage.append(usage)
                self._wake.set()
                return None
            case SummarizeUsage():
                return await self._read(store.usage, message)
            case LoadEvents(job_id):
                return await self._read(store.events, job_id)
            case Load(job_id):
                return await self._read(store.load, job_id)
            case FindKey(key, owner):
                return await self._read(store.find_key, key, owner)
            case Unfinished():
                return await self._read(store.unfinished)
            case index_credentials.IndexCredentialsCall():  # sealed with the same key as secret env values
                return await self._read(index_credentials.answer, store.db, store.secrets, message)
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
            if not (self._pending or self._pending_events or self._pending_usage) or self.store is None:
                return
            rows, self._pending = list(self._pending.values()), {}
            events, self._pending_events = self._pending_events, []
            usage, self._pending_usage = self._pending_usage, []
            await self._run(self.store.save_many, rows, events, usage)
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

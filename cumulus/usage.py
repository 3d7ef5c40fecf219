"""Device usage and its cost: one :class:`UsageRecord` per job attempt that reached RUNNING, how the journal keeps
them (the ``usage`` table), and :func:`summarize`, which groups them by user, job or worker, with totals and money.

An attempt's record is written when the attempt ends (success, failure, cancel, timeout, retry), by its job's
actor, through the journal. It runs from the attempt's RUNNING (``started_at``) to its end (``ended_at``; the job's
``finished_at`` for its last attempt, so a job's usage is computed from the very times its status shows).
``device_seconds = (ended_at - started_at) x share x devices``: a 0.25 share of one device for an hour is 0.25
device-hours; a job on 2 whole devices counts both. ``gpu_seconds`` is the part on devices that are GPUs (the local
cluster's PoCL CPU devices are not). ``queue_seconds`` runs from the submission (or the retry's start) to RUNNING.
An attempt that ended before RUNNING used no device and has no record.

Records are kept for good: they are not deleted with finished jobs (``jobs.result_retention`` prunes jobs, never
usage), and they survive restarts (SQLite). Writing one twice (same job and attempt) keeps the later one.

Prices (``usage.prices``: currency per device-hour by device model, as ``cumulus workers`` names it) turn device
time into ``cost``; device time on a model without a price is ``unpriced_device_seconds`` (and costs 0).

Pure functions and plain data: nothing here raises but :class:`ValueError` for an unknown grouping, and the SQL
helpers run inside the journal's own thread and transactions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from cumulus.jobs import JobRecord

GROUPS = ("user", "job", "worker")
"""What ``summarize`` can group by: the job's owner (its token's name), the job id, the worker's hostname."""

USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    job_id          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    owner           TEXT NOT NULL,          -- the job's owner: its token's name ('' without tokens)
    worker          TEXT NOT NULL,          -- the worker's hostname
    device_model    TEXT NOT NULL,          -- the device's name, as `cumulus workers` shows it
    is_gpu          INTEGER NOT NULL,
    share           REAL NOT NULL,          -- of each device
    devices         INTEGER NOT NULL,
    queued_at       REAL NOT NULL,          -- submission, or the retry's start (Unix seconds)
    started_at      REAL NOT NULL,          -- the attempt reached RUNNING
    ended_at        REAL NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS usage_ended_at ON usage(ended_at);
"""
COLUMNS = ("job_id", "attempt", "owner", "worker", "device_model", "is_gpu", "share", "devices", "queued_at",
           "started_at", "ended_at")


@dataclass(frozen=True)
class UsageRecord:
    """One attempt's use of its device(s): from ``started_at`` (RUNNING) to ``ended_at``, Unix seconds."""

    job_id: str
    attempt: int
    owner: str
    worker: str
    device_model: str
    is_gpu: bool
    share: float
    devices: int
    queued_at: float
    started_at: float
    ended_at: float

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    @property
    def device_seconds(self) -> float:
        return self.wall_seconds * self.share * self.devices

    @property
    def gpu_seconds(self) -> float:
        return self.device_seconds if self.is_gpu else 0.0

    @property
    def queue_seconds(self) -> float:
        return max(0.0, self.started_at - self.queued_at)


def attempt_usage(record: JobRecord, *, started_at: float | None, ended_at: float | None,
                  queued_at: float | None) -> UsageRecord | None:
    """The usage of ``record``'s current attempt, which reached RUNNING at ``started_at`` and ended at
    ``ended_at``; None if it never reached RUNNING (or was never placed). ``queued_at`` None: not known (an
    attempt re-adopted after a restart), counted as no queue time."""
    placement = record.placement
    if started_at is None or ended_at is None or placement is None:
        return None
    return UsageRecord(
        job_id=record.job_id, attempt=record.attempt, owner=record.spec.owner, worker=placement.worker,
        device_model=placement.device_model, is_gpu=placement.is_gpu, share=placement.share,
        devices=max(1, len(placement.device_indexes)), queued_at=started_at if queued_at is None else queued_at,
        started_at=started_at, ended_at=ended_at)


# ---- the journal's table --------------------------------------------------------------------------------------


def insert_usage(db: sqlite3.Connection, records: Sequence[UsageRecord]) -> None:
    """Write ``records`` (inside the caller's transaction); a second record of the same attempt replaces it."""
    db.executemany(f"INSERT OR REPLACE INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                   [tuple(getattr(r, c) for c in COLUMNS) for r in records])


def select_usage(db: sqlite3.Connection, *, since: float | None = None, owner: str | None = None
                 ) -> Iterator[UsageRecord]:
    """The records of attempts that ended at or after ``since`` (all if None), of ``owner``'s jobs only (every
    owner's if None), oldest end first; read lazily, so a long history is never all in memory."""
    where: list[str] = ["1"]  # ended_at's index serves `--since`
    params: list[object] = []
    if since is not None:
        where.append("ended_at >= ?")
        params.append(since)
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM usage WHERE {' AND '.join(where)} ORDER BY ended_at",
                        params)
    for row in cursor:
        values = dict(zip(COLUMNS, tuple(row)))
        yield UsageRecord(**{**values, "is_gpu": bool(values["is_gpu"])})


# ---- the journal's messages (cumulus.journal handles them) ------------------------------------------------------


@dataclass(frozen=True)
class RecordUsage:
    """Cast to the journal: an attempt's usage, written when it ends (batched with the journal's other writes)."""

    usage: UsageRecord


@dataclass(frozen=True)
class SummarizeUsage:
    """Call to the journal: a :class:`UsageReport` of the attempts that ended at or after ``since`` (all if None),
    of ``owner``'s jobs (everyone's if None), grouped ``by`` user, job or worker, priced with ``prices``."""

    by: str = "user"
    since: float | None = None
    owner: str | None = None
    prices: tuple[tuple[str, float], ...] = ()
    currency: str = "USD"


# ---- grouping, totals and money ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    """One group's use (see ``UsageRow`` in the wire contract): ``key`` is the user, job id or worker, or
    ``"total"``."""

    key: str
    jobs: int = 0
    attempts: int = 0
    device_seconds: float = 0.0
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    queue_seconds: float = 0.0
    cost: float = 0.0
    unpriced_device_seconds: float = 0.0


@dataclass(frozen=True)
class UsageReport:
    rows: tuple[UsageRow, ...]  # largest device_seconds first
    total: UsageRow
    currency: str
    since: float | None = None
    by: str = "user"


@dataclass
class _Sums:
    key: str
    job_ids: set[str] = field(default_factory=set)
    attempts: int = 0
    device_seconds: float = 0.0
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    queue_seconds: float = 0.0
    cost: float = 0.0
    unpriced_device_seconds: float = 0.0

    def add(self, record: UsageRecord, price: float | None) -> None:
        device_seconds = record.device_seconds
        self.job_ids.add(record.job_id)
        self.attempts += 1
        self.device_seconds += device_seconds
        self.gpu_seconds += record.gpu_seconds
        self.wall_seconds += record.wall_seconds
        self.queue_seconds += record.queue_seconds
        if price is None:
            self.unpriced_device_seconds += device_seconds
        else:
            self.cost += device_seconds / 3600.0 * price

    def row(self) -> UsageRow:
        return UsageRow(self.key, len(self.job_ids), self.attempts, self.device_seconds, self.gpu_seconds,
                        self.wall_seconds, self.queue_seconds, self.cost, self.unpriced_device_seconds)


def group_key(record: UsageRecord, by: str) -> str:
    if by == "user":
        return record.owner
    if by == "job":
        return record.job_id
    if by == "worker":
        return record.worker
    raise ValueError(f"cannot group usage by {by!r}: use one of {', '.join(GROUPS)}")


def summarize(records: Iterable[UsageRecord], *, by: str = "user", prices: Mapping[str, float] | None = None,
              currency: str = "USD", since: float | None = None, owner: str | None = None) -> UsageReport:
    """Group ``records`` by ``by`` (one of :data:`GROUPS`), price them, and total them. Only records that ended at
    or after ``since`` and (when given) belong to ``owner`` count, so the journal's query and an in-memory list
    give the same report. The total's ``jobs`` counts distinct jobs (a job retried on two workers is one job)."""
    if by not in GROUPS:
        raise ValueError(f"cannot group usage by {by!r}: use one of {', '.join(GROUPS)}")
    prices = prices or {}
    groups: dict[str, _Sums] = {}
    total = _Sums("total")
    for record in records:
        if (since is not None and record.ended_at < since) or (owner is not None and record.owner != owner):
            continue
        key = group_key(record, by)
        price = prices.get(record.device_model)
        sums = groups.get(key)
        if sums is None:
            sums = groups[key] = _Sums(key)
        sums.add(record, price)
        total.add(record, price)
    rows = sorted((sums.row() for sums in groups.values()), key=lambda row: (-row.device_seconds, row.key))
    return UsageReport(tuple(rows), total.row(), currency, since, by)


__all__ = ["COLUMNS", "GROUPS", "RecordUsage", "SummarizeUsage", "USAGE_SCHEMA", "UsageRecord", "UsageReport",
           "UsageRow", "attempt_usage", "group_key", "insert_usage", "select_usage", "summarize"]

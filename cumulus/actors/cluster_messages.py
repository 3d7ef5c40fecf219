"""The messages the ClusterActor (``cumulus/actors/cluster.py``) takes about jobs and nodes. Every job message
carries its caller: a job is answered to its owner and to admins only."""

from __future__ import annotations

from dataclasses import dataclass

from cumulus.identity import LOCAL_ADMIN, Caller
from cumulus.jobs import JobSpec


@dataclass(frozen=True)
class Submit:
    """Start a job owned by ``caller`` (the spec's owner is set to the caller's name), or answer the caller's job
    of the same idempotency key. Raises QuotaExceeded, AlreadyExists, and the Scheduler's admission errors."""

    spec: JobSpec
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class GetJob:
    """The job's record; NotFound when unknown or not the caller's to see."""

    job_id: str
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class DescribeJob:
    """The job's record and its history from the journal (``(JobRecord, list[HistoryEvent])``)."""

    job_id: str
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class CancelJob:
    """Cancel the job: ``(JobRecord, was_live)`` at once; its record's ``torn_down`` is set when it is gone."""

    job_id: str
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class PauseJob:
    """Ask the job to pause (``grace`` seconds to return; 0: ``jobs.pause_grace``): ``(JobRecord, was_running)``
    at once; its record's state becomes PAUSED once it holds nothing. WrongJobState for a job that has ended."""

    job_id: str
    grace: float = 0.0
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class ResumeJob:
    """Queue a PAUSED job again: its record. WrongJobState for a job that is not PAUSED, or has no duration
    left."""

    job_id: str
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class ListJobs:
    """The caller's jobs (every job for an admin)."""

    include_finished: bool = True
    caller: Caller = LOCAL_ADMIN


@dataclass(frozen=True)
class SyncNodes:
    pass


__all__ = ["CancelJob", "DescribeJob", "GetJob", "ListJobs", "PauseJob", "ResumeJob", "Submit", "SyncNodes"]

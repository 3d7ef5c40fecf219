"""How a job's attempt ended, as a type: :class:`Outcome`, and :class:`JobStopped` to end an attempt with one.

A job's terminal state, its :class:`~cumulus.jobs.FailureReason` and its result travel together; the retry policy
(:func:`should_retry`) decides on the enum, never on text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cumulus.errors import CumulusError
from cumulus.jobs import FailureReason, JobState


class PauseCause(enum.Enum):
    """How a paused attempt ended."""

    RETURNED = "returned"  # the job returned after should_pause() turned true (or saved after it)
    STOPPED = "stopped"  # it was stopped: its grace period ended, or it failed while a pause was asked
    NOT_RUNNING = "not_running"  # its container was not running yet (queued, being placed, between attempts)


@dataclass(frozen=True)
class Outcome:
    """``state`` is COMPLETED, PAUSED, FAILED or CANCELLED (the last two with ``failure``). ``result`` is the runner's
    envelope (recorded only once the outcome is final); ``retry=False`` marks an outcome no retry policy applies to."""

    state: JobState
    failure: FailureReason | None = None
    detail: str = ""
    result: bytes | None = None
    retry: bool = True
    paused_by: PauseCause | None = None  # with a PAUSED state

    @property
    def reason(self) -> str:
        """The human text recorded with the state: ``"<failure>: <detail>"`` for a failure, what stopped it for a
        cancelled job."""
        if self.failure is None:
            return self.detail
        if self.state is JobState.CANCELLED:
            return self.detail or self.failure.value
        return self.failure.text(self.detail)

    @classmethod
    def cancelled(cls, why: str) -> Outcome:
        return cls(JobState.CANCELLED, FailureReason.CANCELLED, why)

    @classmethod
    def paused(cls, why: str, cause: PauseCause) -> Outcome:
        """The job stopped on a pause request: it holds nothing once torn down and waits to be resumed."""
        return cls(JobState.PAUSED, None, why, paused_by=cause)

    @classmethod
    def failed(cls, failure: FailureReason, detail: str = "", *, result: bytes | None = None,
               retry: bool = True) -> Outcome:
        return cls(JobState.FAILED, failure, detail, result, retry)


COMPLETED = Outcome(JobState.COMPLETED)


class JobStopped(CumulusError):
    """Raised inside a job's life to end the current attempt with ``outcome``."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def should_retry(outcome: Outcome, *, attempt: int, retries: int, default_retries: int,
                 retry_exceptions: bool, resume_on_timeout: bool = False) -> bool:
    """Whether a job whose attempt ``attempt`` (counting only the attempts that count as retries) ended with
    ``outcome`` runs again.

    Infrastructure failures are retried ``retries`` times (or ``default_retries`` when the job set none); a job
    lost in a supervisor restart only if the job itself asked for retries; the job's own exception only with
    ``retry_exceptions``; a timeout only with ``resume_on_timeout``; nothing else (completed, paused, cancelled,
    queue timeout, internal errors).
    """
    failure = outcome.failure
    if outcome.state is not JobState.FAILED or failure is None:
        return False
    allowed = retries if failure is FailureReason.LOST else (retries or default_retries)
    if attempt > allowed:
        return False
    if failure is FailureReason.USER_EXCEPTION:
        return retry_exceptions
    if failure is FailureReason.TIMEOUT:
        return resume_on_timeout and outcome.retry
    return outcome.retry and failure.infrastructure


def should_restart(outcome: Outcome, *, attempt: int, max_restarts: int) -> bool:
    """Whether a class instance whose attempt ``attempt`` ended with ``outcome`` is made again: it died (its
    process ended, its node or partition was lost, the supervisor lost it) and it has restarts left. An instance
    whose constructor raised, that timed out, or was never placed is not."""
    failure = outcome.failure
    if outcome.state is not JobState.FAILED or failure is None or attempt > max_restarts:
        return False
    return failure not in (FailureReason.USER_EXCEPTION, FailureReason.TIMEOUT, FailureReason.QUEUE_TIMEOUT,
                           FailureReason.INTERNAL, FailureReason.IMAGE_UNAVAILABLE, FailureReason.INVALID_RESULT)


__all__ = ["COMPLETED", "JobStopped", "Outcome", "PauseCause", "should_restart", "should_retry"]

"""Per-user limits: whether a new job may be admitted (its owner's queue, a GPU share they may ever hold), the
token bucket that paces their submissions, and what each user holds now, for the Scheduler.

Pure logic (no Trio, no I/O): times are passed in, so the policy is tested with plain numbers. Two owners use it:

* the cluster actor (:mod:`cumulus.actors.cluster`) asks :func:`check_limits` and :meth:`SubmissionRates.take`
  before it admits a job; both raise :class:`~cumulus.errors.QuotaExceeded` (gRPC ``RESOURCE_EXHAUSTED``) whose
  message names the limit, the current use, and when to retry;
* the Scheduler keeps an :class:`OwnerHoldings`: a job whose owner already runs ``max_running`` jobs, or holds so
  much GPU that the job would pass ``max_gpu``, waits in the queue (``max_queued`` bounds how many may wait) and
  starts when one of the owner's jobs ends, like Slurm's per-user job limits.

A limit of 0 means no limit (:class:`~cumulus.identity.Limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from cumulus.errors import QuotaExceeded
from cumulus.identity import Limits
from cumulus.jobs import JobState

#: Shares are sums of floats (0.1 + 0.2): a sum this close to the limit is at the limit, not over it.
GPU_TOLERANCE = 1e-9
#: Refills are float products: a bucket this close to one token has one.
TOKEN_TOLERANCE = 1e-9
#: At most this many users' buckets are kept; beyond it, full buckets (same as a fresh one) are dropped.
BUCKETS_KEPT = 1024
RETRY_WHEN_A_JOB_ENDS = "retry when one of your jobs ends"


@dataclass(frozen=True)
class Usage:
    """What one user's live (not yet ended) jobs hold.

    ``running``: jobs that run or are on their way to running (every live job not waiting in the queue);
    ``queued``: jobs waiting in the cluster's queue for capacity; ``gpu``: the GPU share all of them ask for.
    """

    running: int = 0
    queued: int = 0
    gpu: float = 0.0

    @classmethod
    def of(cls, jobs: Iterable[tuple[JobState, int, float]]) -> Usage:
        """The usage of jobs given as (state, queue position, gpu); ended and paused ones are skipped (a paused job
        holds nothing; the Scheduler holds it back on resume if its owner is at a limit then). Every QUEUED job
        counts as waiting, also a new one that has not asked for a place yet (position 0): a burst of submissions
        is counted before the first of them reaches the Scheduler."""
        running = queued = 0
        gpu = 0.0
        for state, queue_position, share in jobs:
            if state.terminal or state is JobState.PAUSED:
                continue
            if state is JobState.QUEUED:
                queued += 1
            else:
                running += 1
            gpu += share
        return cls(running, queued, gpu)


def check_limits(limits: Limits, usage: Usage, gpu: float) -> None:
    """Whether a new job asking ``gpu`` may be admitted for a user whose live jobs use ``usage``.

    Raises :class:`QuotaExceeded` (``retry_after`` None: the user retries when one of their jobs ends; a job
    asking more GPU than the user may ever hold says so and has no retry) for the first limit it would pass:

    * ``max_queued``: the user's jobs waiting in the queue, for capacity or for their own running jobs (the new one
      may have to wait too);
    * ``max_gpu``: a job asking more than the user may ever hold at once.

    ``max_running`` and ``max_gpu`` in use are not admission limits: a job over them waits in the queue
    (:class:`OwnerHoldings`, the Scheduler's).
    """
    if limits.max_queued and usage.queued >= limits.max_queued:
        raise QuotaExceeded(
            f"limit max_queued={limits.max_queued} reached: you have {usage.queued} jobs waiting in the queue; "
            f"{RETRY_WHEN_A_JOB_ENDS}")
    if limits.max_gpu and gpu > limits.max_gpu + GPU_TOLERANCE:
        raise QuotaExceeded(
            f"limit max_gpu={limits.max_gpu:g}: this job asks gpu={gpu:g}, more than you may ever hold; "
            f"ask for at most {limits.max_gpu:g}")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; it starts full. One submission takes one token."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token at time ``now`` (seconds, never going back); 0.0 if taken, else the seconds until one is
        there (nothing is taken then)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1 - TOKEN_TOLERANCE:  # a retry after exactly the wait it was told is admitted
            self.tokens = max(0.0, self.tokens - 1)
            return 0.0
        return (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.burst


def burst_of(rate: float) -> float:
    """How many submissions a user may make at once: max(1, 2 x rate)."""
    return max(1.0, 2 * rate)


class SubmissionRates:
    """Each user's token bucket (``Limits.rate`` submissions a second, burst :func:`burst_of`)."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, user: str, rate: float, now: float) -> None:
        """Count one submission of ``user`` at ``now``; a ``rate`` of 0 means no limit.

        Raises :class:`QuotaExceeded` with ``retry_after`` (seconds until a token is there) when over the rate.
        """
        if rate <= 0:
            self._buckets.pop(user, None)
            return
        bucket = self._buckets.get(user)
        if bucket is None or bucket.rate != rate:  # a new user, or the token's rate changed
            bucket = self._buckets[user] = TokenBucket(rate, burst_of(rate), now)
            self._forget_full(now)
        wait = bucket.take(now)
        if wait:
            raise QuotaExceeded(
                f"limit rate={rate:g} submissions per second (burst {bucket.burst:g}) reached; "
                f"retry in {wait:.2f} s", retry_after=wait)

    def _forget_full(self, now: float) -> None:
        if len(self._buckets) > BUCKETS_KEPT:
            for user in [u for u, bucket in self._buckets.items() if bucket.full(now)]:
                del self._buckets[user]


__all__ = ["BUCKETS_KEPT", "SubmissionRates", "TokenBucket", "Usage", "burst_of", "check_limits"]


class OwnerHoldings:
    """How many reservations each user's jobs hold, and how much GPU (a whole device counts 1). Kept by the
    Scheduler, which is the only one that knows when a share is granted and given back."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, float]] = {}  # job id -> (owner, gpu)
        self._owners: dict[str, tuple[int, float]] = {}  # owner -> (jobs, gpu)

    def add(self, owner: str, job_id: str, gpu: float) -> None:
        self.remove(job_id)
        self._jobs[job_id] = owner, gpu
        jobs, held = self._owners.get(owner, (0, 0.0))
        self._owners[owner] = jobs + 1, held + gpu

    def remove(self, job_id: str) -> None:
        """Idempotent."""
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return
        owner, gpu = entry
        jobs, held = self._owners[owner]
        if jobs <= 1:
            del self._owners[owner]
        else:
            self._owners[owner] = jobs - 1, max(0.0, held - gpu)

    def held(self, owner: str) -> tuple[int, float]:
        return self._owners.get(owner, (0, 0.0))

    def at_limit(self, spec: Any) -> bool:
        """Whether a job (``spec.owner``, ``spec.limits``, ``spec.gpu``) must wait for its owner's other jobs."""
        limits: Limits = spec.limits
        if not (limits.max_running or limits.max_gpu):
            return False
        jobs, held = self.held(spec.owner)
        if limits.max_running and jobs >= limits.max_running:
            return True
        return bool(limits.max_gpu) and held + spec.gpu > limits.max_gpu + GPU_TOLERANCE

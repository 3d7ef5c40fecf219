"""JobActor: one per job. The only writer of its :class:`~cumulus.jobs.JobRecord`; runs the job's attempts and
decides on retries; journals the record and its history.

Each attempt (``cumulus/actors/attempt.py``) owns, nested, everything it holds outside the process::

    reservation (Scheduler)  >  partition lease + job files (worker)  >  task watch  >  service

and releases it in reverse, so **killing a JobActor at any point of its life - cancel request, cancelled task,
crash - releases its partition and removes its service**; a release that fails is recorded in the teardown report,
never hidden.

States: QUEUED -> SCHEDULING -> CREATING_PARTITION -> RUNNING -> COMPLETED | FAILED | CANCELLED. The terminal state
is written once. A job that ended by itself (returned or raised) is COMPLETED/FAILED as soon as its exit and result
are known; a job that is stopped (cancel, timeout, lost partition, infrastructure failure) gets its terminal state
only after teardown, so it is never reported ended while its container still runs. The teardown outcome is
recorded separately (``record.teardown``) and then every event stream of the job ends.

Messages: :class:`Cancel` (from the cluster), and the Scheduler's :class:`~cumulus.actors.scheduler.Granted` and
:class:`~cumulus.actors.scheduler.QueuePosition` for the attempt waiting in its queue.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.attempt import Attempt, JobContext
from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.outcome import JobStopped, Outcome, should_retry
from cumulus.actors.scheduler import Granted, QueuePosition
from cumulus.backends import NodeConnections, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError
from cumulus.history import HistoryEvent
from cumulus.jobs import FailureReason, JobRecord, JobState, TeardownReport
from cumulus.journal import AddEvent, Save, row_of
from cumulus.logs import bind_job
from cumulus.redaction import redact_credentials
from cumulus.usage import RecordUsage, attempt_usage

log = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = 1.0
RETRY_BACKOFF_MAX_SECONDS = 30.0


class Start(enum.Enum):
    """How a JobActor begins (the cluster decides, from the journal, after a supervisor restart)."""

    NEW = "new"  # a new submission: journal it, then run
    ADOPT = "adopt"  # it still runs on its worker: own it again and follow it to its end
    RESTART = "restart"  # its attempt was lost in the restart: run it again as its next attempt
    LOST = "lost"  # it cannot run again: it ends FAILED (lost)
    CLOSE = "close"  # it had ended but its teardown was never recorded: record that


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"


class JobActor(Actor):
    mailbox_size = 64

    def __init__(
        self,
        record: JobRecord,
        *,
        settings: Settings,
        swarm: SwarmBackend,
        connections: NodeConnections,
        scheduler: ActorRef,
        watcher: ActorRef,
        journal: ActorRef,
        start: Start = Start.NEW,
        note: str = "",
    ) -> None:
        super().__init__(f"job:{record.job_id}")
        self.record = record
        self.settings = settings
        self.journal = journal
        self._start, self._note = start, note
        self._ctx = JobContext(record, settings, swarm, connections, scheduler, watcher, self.name,
                               self.start_soon, lambda: self.ref, journal)
        self._tickets = itertools.count(1)
        self._life_scope = trio.CancelScope()
        self._stop_reason: Outcome | None = None
        self.attempt: Attempt | None = None  # the current one
        self._attempt_queued_at: float | None = None  # when the current attempt began to wait (its usage row)

    async def on_start(self) -> None:
        record = self.record
        # First thing, in the actor's own task: every task it starts from here on (attempts, resource holders,
        # threads) inherits the binding, so each of their log lines names the job, its attempt and its trace id.
        bind_job(record)
        record.journal_to(self._journal_record, self._journal_event)
        match self._start:
            case Start.NEW:
                self.journal.cast_nowait(Save(row_of(record, with_package=True)))
                record.announce()  # QUEUED, before anything else happens to it
                log.info("%s: accepted (gpu %g, duration %d s)", self.name, record.spec.gpu, record.spec.duration)
            case Start.RESTART:
                record.running_at = None  # the lost attempt's end was seen by no one: it records no usage
                record.attempt += 1
                record.add_message(f"{self._note}: starting it (attempt {record.attempt})")
            case Start.LOST:
                record.set_state(JobState.FAILED, FailureReason.LOST.text(self._note), failure=FailureReason.LOST)
                record.set_torn_down(TeardownReport(released=("orphans reaped at restart",)))
                count_end(record)
                self.stop()
                return
            case Start.CLOSE:
                record.set_torn_down(TeardownReport(released=("orphans reaped at restart",)))
                self.stop()
                return
        self.start_soon(self._live)

    async def handle(self, message: Any) -> Any:
        match message:
            case Cancel(reason):
                if self._stop_reason is None:
                    self._stop_reason = Outcome.cancelled(reason)
                self._life_scope.cancel()
                return None
            case Granted() if self.attempt is not None:
                self.attempt.granted(message)
                return None
            case Granted():
                return None  # for an attempt that ended: its Release reached the Scheduler after the grant
            case QueuePosition() if self.attempt is not None:
                self.attempt.queue_moved(message)
                return None
            case QueuePosition():
                return None
        raise TypeError(f"{self.name}: unknown message {message!r}")

    # ---- the journal (the record's hooks) ---------------------------------------------------------------------

    def _journal_record(self, record: JobRecord) -> None:
        try:
            self.journal.cast_nowait(Save(row_of(record, with_package=False)))
        except (ActorDied, trio.WouldBlock) as error:
            log.error("%s: could not journal the job: %s", self.name, error)

    def _journal_event(self, event: HistoryEvent) -> None:
        try:
            self.journal.cast_nowait(AddEvent(event))
        except (ActorDied, trio.WouldBlock) as error:
            log.error("%s: could not journal an event: %s", self.name, error)

    # ---- the job's life ---------------------------------------------------------------------------------------

    async def _live(self) -> None:
        record = self.record
        outcome: Outcome | None = None
        released: list[str] = []
        leaked: list[str] = []
        adopt = self._start is Start.ADOPT
        try:
            with self._life_scope:
                while True:
                    self._attempt_queued_at = (record.submitted_at if record.attempt == 1
                                               else None if adopt else time.time())
                    outcome = await self._attempt(released, leaked, adopt=adopt)
                    adopt = False  # a retry after this attempt starts afresh
                    if self._stop_reason is not None or not self._should_retry(outcome):
                        break
                    self._record_usage(time.time())
                    delay = min(RETRY_BACKOFF_SECONDS * 2 ** (record.attempt - 1), RETRY_BACKOFF_MAX_SECONDS)
                    record.attempt += 1
                    record.note_retry(outcome.reason, delay)
                    metrics.current().job_retries.labels(outcome.failure.value if outcome.failure else "").inc()
                    log.info("%s: attempt %d failed (%s); retrying in %g s", self.name, record.attempt - 1,
                             redact_credentials(outcome.reason), delay)  # may quote a requirement's URL
                    await trio.sleep(delay)
        finally:
            if outcome is None or self._life_scope.cancelled_caught:
                outcome = self._stop_reason or Outcome.cancelled("supervisor stopped the job")
            if outcome.result is not None:
                record.set_result(outcome.result)
            record.set_state(outcome.state, outcome.reason, failure=outcome.failure)  # once: may have ended
            self._record_usage(record.finished_at)  # the last attempt ends when the job does, as its status says
            record.set_torn_down(TeardownReport(released=tuple(released), leaked=tuple(leaked)))
            count_end(record)
            # The failure's kind, not the reason's text: that may quote the job's own exception message.
            log.info("%s: ended %s%s after %d attempt(s)%s", self.name, record.state.value,
                     f" ({record.failure.value})" if record.failure else "", record.attempt,
                     f"; {len(leaked)} leaked" if leaked else "")
            self.stop()

    async def _attempt(self, released: list[str], leaked: list[str], *, adopt: bool) -> Outcome:
        """Run the job once; tear down what this attempt acquired; return how it ended (not yet recorded if
        it might be retried). Cancellation of the whole job (cancel, shutdown) propagates after the teardown."""
        attempt = self.attempt = Attempt(self._ctx, next(self._tickets))
        outcome: Outcome | None = None
        try:
            with attempt.scope:
                try:
                    # Teardown on leaving this block, whatever the reason: newest first (container stop, service,
                    # task watch, files, partition, reservation), each shielded and bounded.
                    async with attempt.resources:
                        outcome = await (attempt.run_adopted() if adopt else attempt.run())
                except JobStopped as stopped:
                    outcome = stopped.outcome
                except CumulusError as error:  # infrastructure said no: the attempt failed
                    outcome = Outcome.failed(FailureReason.INFRASTRUCTURE, str(error))
                except Exception as error:  # a bug or an unexpected failure: the job fails, with the reason
                    log.exception("%s: unexpected failure", self.name)
                    outcome = Outcome.failed(FailureReason.INTERNAL, f"{type(error).__name__}: {error}",
                                             retry=False)
        finally:
            metrics.current().phase("teardown", attempt.resources.release_seconds)
            released.extend(attempt.resources.released)
            leaked.extend(f"{leak.what}: {leak.reason}" for leak in attempt.resources.leaks)
            service = attempt.service
            if service is not None and not service.removal_confirmed:
                # Removed from the Swarm, but its container was not seen gone: say so (the node reaps it).
                why = ("connection lost to its node" if service.node_unreachable
                       else "its task did not disappear in time")
                leaked.append(f"service {service.id}: container stop not confirmed ({why})")
        return outcome or attempt.failure or Outcome.failed(FailureReason.INFRASTRUCTURE, "attempt stopped",
                                                            retry=False)

    def _record_usage(self, ended_at: float | None) -> None:
        """The current attempt ended at ``ended_at``: journal its device usage (nothing if it never ran)."""
        record = self.record
        usage = attempt_usage(record, started_at=record.running_at, ended_at=ended_at,
                              queued_at=self._attempt_queued_at)
        record.running_at = None  # recorded once; the next attempt's RUNNING starts its own row
        if usage is None:
            return
        metrics.current().attempt_used(usage.owner, usage.is_gpu, usage.wall_seconds, usage.device_seconds)
        try:
            self.journal.cast_nowait(RecordUsage(usage))
        except (ActorDied, trio.WouldBlock) as error:
            log.error("%s: could not journal the usage of attempt %d: %s", self.name, usage.attempt, error)

    def _should_retry(self, outcome: Outcome) -> bool:
        spec = self.record.spec
        return should_retry(outcome, attempt=self.record.attempt, retries=spec.retries,
                            default_retries=self.settings.jobs.default_retries,
                            retry_exceptions=spec.retry_exceptions)


def count_end(record: JobRecord) -> None:
    """Count the job's end in ``cumulus_jobs_finished_total`` (by its state and reason)."""
    failure = record.failure
    metrics.current().jobs_finished.labels(record.state.value, failure.value if failure else "none",
                                           "true" if failure is not None and failure.infrastructure else "false").inc()


__all__ = ["Cancel", "JobActor", "RETRY_BACKOFF_MAX_SECONDS", "RETRY_BACKOFF_SECONDS", "Start"]

"""JobActor: one per job. The only writer of its :class:`~cumulus.jobs.JobRecord`; runs the job's attempts and
decides on retries; journals the record and its history.

Each attempt (``cumulus/actors/attempt.py``) owns, nested, everything it holds outside the process (reservation >
partition lease + job files > task watch > service) and releases it in reverse, so **killing a JobActor at any point
of its life - cancel request, cancelled task, crash - releases its partition and removes its service**; a release
that fails is recorded in the teardown report, never hidden.

States: QUEUED -> SCHEDULING -> CREATING_PARTITION -> RUNNING -> COMPLETED | FAILED | CANCELLED, and PAUSED (from any
state before the end, on :class:`Pause`; back to QUEUED on :class:`Resume`). The terminal state is written once. A
paused job's attempt is torn down before it is PAUSED, so a paused job holds no share, partition or service; each later
attempt (a resume or a retry) starts from the job's last checkpoint (``cumulus/actors/checkpoint_step.py``), and the
job's checkpoints are removed from the store when it ends. A job that ended by itself (returned or raised) is
COMPLETED/FAILED as soon as its exit and result are known; a job that is stopped (cancel, timeout, lost partition,
infrastructure failure) gets its terminal state only after teardown, so it is never reported ended while its container
still runs. The teardown outcome is recorded separately (``record.teardown``); then every event stream of it ends.

Messages: :class:`Cancel`, :class:`Pause`, :class:`Resume` (from the cluster), the Scheduler's ``Granted`` and
``QueuePosition`` for the attempt waiting in its queue, and a class instance's ``MethodCall`` (answered when the call
ends) and ``CancelCall`` (``cumulus/actors/instance_calls.py``; an instance is made again ``max_restarts`` times).
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

from cumulus import metrics
from cumulus.actors.adoption import AdoptedAttempt
from cumulus.actors.attempt import Attempt, JobContext
from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.call_routing import CallRouter
from cumulus.actors.checkpoint_step import load_checkpoint_info, remove_checkpoints
from cumulus.actors.instance_calls import InstanceCalls
from cumulus.actors.result_fetch import MAX_RESULT_BYTES
from cumulus.actors.outcome import JobStopped, Outcome, PauseCause, should_restart, should_retry
from cumulus.actors.scheduler import Granted, QueuePosition
from cumulus.backends import NodeConnections, SwarmBackend
from cumulus.calls import CancelCall, MethodCall
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError, WrongJobState
from cumulus.history import HistoryEvent
from cumulus.jobs import FailureReason, JobRecord, JobState, TeardownReport
from cumulus.journal import AddEvent, Save, row_of
from cumulus.logs import bind_job
from cumulus.redaction import redact_credentials
from cumulus.resources.checkpoint_store import CheckpointStore
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
    PAUSED = "paused"  # it was paused: wait for its resume


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"


@dataclass(frozen=True)
class Pause:
    """Answer: whether its container was running (it was asked, and has ``grace`` seconds, 0: ``jobs.pause_grace``,
    to return), or not (it is paused at once). WrongJobState once the job has ended."""

    grace: float = 0.0


@dataclass(frozen=True)
class Resume:  # queue a paused job again; WrongJobState if it is not PAUSED or has no duration left
    pass


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
        checkpoints: CheckpointStore | None = None,
        start: Start = Start.NEW,
        note: str = "",
        workers: Callable[[str], ActorRef | None] | None = None,
        router: CallRouter | None = None,
    ) -> None:
        super().__init__(f"job:{record.job_id}")
        self.record = record
        self.settings = settings
        self.journal = journal
        self._start, self._note = start, note
        self.calls = InstanceCalls(record, MAX_RESULT_BYTES) if record.spec.instance else None
        self._ctx = JobContext(record, settings, swarm, connections, scheduler, watcher, self.name,
                               self.start_soon, lambda: self.ref, journal, checkpoints, workers, self.calls, router)
        self._tickets = itertools.count(1)
        self._life_scope = trio.CancelScope()
        self._stop_reason: Outcome | None = None
        self.attempt: Attempt | None = None  # the current one
        self._attempt_queued_at: float | None = None  # when the current attempt began to wait (its usage row)
        self._attempt_live = False
        self._pausing = False  # a pause was asked for and the job is not PAUSED yet
        self._resumed = trio.Event()
        self._backoff = trio.CancelScope()  # the wait before a retry (a pause cuts it short)
        self._uncounted = 0  # attempts that do not count as retries: resumed ones, and timeouts that made progress

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
            case Pause(grace):
                return self._pause(grace or self.settings.jobs.pause_grace)
            case Resume():
                self._resume()
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
            case MethodCall() if self.calls is not None:
                return self.calls.take(message, self.reply_later())
            case CancelCall(_, key) if self.calls is not None:
                return self.calls.cancel(key)
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

    # ---- pause and resume ------------------------------------------------------------------------------------

    def _pause(self, grace: float) -> bool:
        record = self.record
        if record.state.terminal or self._stop_reason is not None:
            raise WrongJobState(f"job {record.job_id} has ended ({record.state.value}) or is being cancelled: "
                                "there is nothing to pause")
        if record.state is JobState.PAUSED or self._pausing:
            return False
        self._pausing = True
        log.info("%s: pause asked (grace %g s)", self.name, grace)
        if self._attempt_live and self.attempt is not None:
            return self.attempt.pause(grace)
        self._backoff.cancel()  # between attempts: it is paused instead of retried
        return False

    def _resume(self) -> None:
        record, spec = self.record, self.record.spec
        if record.state is not JobState.PAUSED:
            raise WrongJobState(f"job {record.job_id} is {record.state.value}, not PAUSED: only a paused job can be "
                                "resumed")
        if not spec.resume_on_timeout and record.ran_seconds >= spec.duration:
            raise WrongJobState(f"job {record.job_id} has used its whole duration ({spec.duration} s): cancel it, "
                                "or submit it again with a longer duration")
        record.set_state(JobState.QUEUED, "resumed")
        self._resumed.set()

    def _paused(self, outcome: Outcome) -> None:
        """The attempt is torn down: the job is PAUSED, holding nothing; the time it ran counts against its
        duration."""
        record = self.record
        now = time.time()
        record.ran_seconds += now - record.running_at if record.running_at is not None else 0.0
        self._record_usage(now)
        self._pausing = False
        record.set_queue_position(0)  # paused while it waited in the queue: it waits no more
        cause = outcome.paused_by or PauseCause.STOPPED  # or it failed while the pause was asked: it stopped
        metrics.current().job_pauses.labels(cause.value).inc()
        record.set_state(JobState.PAUSED, outcome.reason if outcome.state is JobState.PAUSED else "paused")
        log.info("%s: paused after attempt %d (ran %.1f s of %d s)", self.name, record.attempt, record.ran_seconds,
                 record.spec.duration)

    async def _wait_for_resume(self, *, renumber: bool) -> None:
        await self._resumed.wait()
        self._resumed, self._uncounted = trio.Event(), self._uncounted + 1  # a resumed attempt is no retry
        self.record.attempt += 1 if renumber else 0
        self.record.add_message(f"resumed: attempt {self.record.attempt}")

    # ---- the job's life ---------------------------------------------------------------------------------------

    async def _live(self) -> None:
        record = self.record
        outcome: Outcome | None = None
        released: list[str] = []
        leaked: list[str] = []
        adopt = self._start is Start.ADOPT
        paused, renumber = self._start is Start.PAUSED, True
        try:
            with self._life_scope:
                if self._start is not Start.NEW:
                    await load_checkpoint_info(self._ctx.checkpoints, record)
                while True:
                    if paused:
                        await self._wait_for_resume(renumber=renumber)
                        paused, renumber = False, True
                    self._attempt_queued_at = (record.submitted_at if record.attempt == 1
                                               else None if adopt else time.time())
                    step_before, outcome = record.checkpoint_step, None  # stopped from outside: no outcome
                    outcome = await self._attempt(released, leaked, adopt=adopt)
                    if self.calls is not None:  # its calls in flight may have run: they end, never sent again
                        self.calls.lost(f"attempt {record.attempt}: {outcome.reason or outcome.state.value}")
                    adopt = False  # a retry after this attempt starts afresh
                    if self._stop_reason is not None:
                        break
                    if outcome.failure is FailureReason.TIMEOUT and record.checkpoint_step != step_before:
                        self._uncounted += 1  # it made progress: resuming it is no retry (resume_on_timeout)
                    retry = self._should_retry(outcome)
                    if outcome.state is JobState.PAUSED or (self._pausing and retry):
                        self._paused(outcome)
                        paused = True
                        continue
                    if not retry:
                        break
                    self._record_usage(time.time())
                    counted = record.attempt - self._uncounted
                    delay = min(RETRY_BACKOFF_SECONDS * 2 ** (counted - 1), RETRY_BACKOFF_MAX_SECONDS)
                    record.attempt += 1
                    record.note_retry(outcome.reason, delay)
                    metrics.current().job_retries.labels(outcome.failure.value if outcome.failure else "").inc()
                    log.info("%s: attempt %d failed (%s); retrying in %g s", self.name, record.attempt - 1,
                             redact_credentials(outcome.reason), delay)  # may quote a requirement's URL
                    self._backoff = trio.CancelScope()  # fresh: a pause asked before it must not cut it short
                    with self._backoff:
                        await trio.sleep(delay)
                    if self._pausing:  # asked to pause while waiting: its next attempt waits for the resume
                        self._paused(Outcome.paused("paused before its next attempt", PauseCause.NOT_RUNNING))
                        paused, renumber = True, False
        finally:
            if (record.state is JobState.PAUSED and self._stop_reason is None
                    and not self._life_scope.cancelled_caught):
                # Stopped from outside while paused (the supervisor stops, or its actor was killed): it holds
                # nothing, and stays PAUSED with its checkpoints, for a resume through its next actor.
                log.info("%s: left PAUSED (its actor stopped)", self.name)
            else:
                await self._end(outcome, released, leaked)
            self.stop()

    async def _end(self, outcome: Outcome | None, released: list[str], leaked: list[str]) -> None:
        """Record the job's end: its terminal state (once), usage, checkpoints removed, the teardown report."""
        record = self.record
        if outcome is None or self._life_scope.cancelled_caught or outcome.state is JobState.PAUSED:
            # A cancel that came as its attempt returned paused: the job ends cancelled, not paused for good.
            outcome = self._stop_reason or Outcome.cancelled("supervisor stopped the job")
        if outcome.result is not None:
            record.set_result(outcome.result)
        record.set_state(outcome.state, outcome.reason, failure=outcome.failure)  # once: may have ended
        self._record_usage(record.finished_at)  # the last attempt ends when the job does, as its status says
        await remove_checkpoints(self._ctx.checkpoints, record, self.settings.jobs.release_timeout, released, leaked)
        if self.calls is not None:  # every call left, and each later one, ends INSTANCE_DIED
            self.calls.close(f"instance {record.job_id} ended ({record.state.value}{': ' if record.reason else ''}"
                             f"{record.reason})")
        record.set_torn_down(TeardownReport(released=tuple(released), leaked=tuple(leaked)))
        count_end(record)
        # The failure's kind, not the reason's text: that may quote the job's own exception message.
        log.info("%s: ended %s%s after %d attempt(s)%s", self.name, record.state.value,
                 f" ({record.failure.value})" if record.failure else "", record.attempt,
                 f"; {len(leaked)} leaked" if leaked else "")

    async def _attempt(self, released: list[str], leaked: list[str], *, adopt: bool) -> Outcome:
        """Run the job once; tear down what this attempt acquired; return how it ended (not yet recorded if
        it might be retried). Cancellation of the whole job (cancel, shutdown) propagates after the teardown."""
        attempt = self.attempt = (AdoptedAttempt if adopt else Attempt)(self._ctx, next(self._tickets))
        outcome: Outcome | None = None
        self._attempt_live = True
        if self._pausing:  # asked while it was being set up
            attempt.pause(0.0)
        try:
            with attempt.scope:
                try:
                    # Teardown on leaving this block, whatever the reason: newest first (container stop, service,
                    # task watch, checkpoint copy, files, partition, reservation), each shielded and bounded.
                    async with attempt.resources:
                        outcome = await attempt.run()
                except JobStopped as stopped:
                    outcome = stopped.outcome
                except CumulusError as error:  # infrastructure said no: the attempt failed
                    outcome = Outcome.failed(FailureReason.INFRASTRUCTURE, str(error))
                except Exception as error:  # a bug or an unexpected failure: the job fails, with the reason
                    log.exception("%s: unexpected failure", self.name)
                    outcome = Outcome.failed(FailureReason.INTERNAL, f"{type(error).__name__}: {error}",
                                             retry=False)
        finally:
            self._attempt_live = False
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
        spec, counted = self.record.spec, self.record.attempt - self._uncounted
        if spec.instance:
            return should_restart(outcome, attempt=counted, max_restarts=spec.max_restarts)
        return should_retry(outcome, attempt=counted, retries=spec.retries,
                            default_retries=self.settings.jobs.default_retries,
                            retry_exceptions=spec.retry_exceptions, resume_on_timeout=spec.resume_on_timeout)


def count_end(record: JobRecord) -> None:
    """Count the job's end in ``cumulus_jobs_finished_total`` (by its state and reason)."""
    failure = record.failure
    metrics.current().jobs_finished.labels(record.state.value, failure.value if failure else "none",
                                           "true" if failure is not None and failure.infrastructure else "false").inc()


__all__ = ["Cancel", "JobActor", "Pause", "Resume", "RETRY_BACKOFF_MAX_SECONDS", "RETRY_BACKOFF_SECONDS", "Start"]

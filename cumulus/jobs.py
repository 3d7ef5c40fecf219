"""What a job is, inside the supervisor: its spec, its states, how it ended, its events and its record.

Plain Python types (no wire types): the RPC layer converts these to and from protobuf. A :class:`JobRecord` is
written only by the job's own actor (``cumulus/actors/job*.py``, checked by ``tests/test_import_rules.py``) and
read by anyone; readers get immutable :class:`JobEvent` s from :meth:`JobRecord.events`. It outlives the actor,
so a finished job's status, result and teardown report stay available (for ``jobs.result_retention`` seconds).
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

import trio

from cumulus.calls import CallStats
from cumulus.identity import Limits
from cumulus.history import MAX_QUEUE_EVENTS, HistoryEvent, scrub, secrets_of

LOG_HISTORY_LINES = 10_000
EVENTS_PER_CHECKPOINT = 256  # a subscriber draining a burst yields to the scheduler this often


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    SCHEDULING = "SCHEDULING"
    CREATING_PARTITION = "CREATING_PARTITION"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"  # stopped on request, holding nothing, until it is resumed (or cancelled)

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


class FailureReason(enum.Enum):
    """Why a job (or one attempt of it) did not complete. The retry policy decides on this; ``detail`` is for
    humans.

    On the wire and in the journal a FAILED job's ``reason`` is ``"<value>"`` or ``"<value>: <detail>"``; a
    CANCELLED job's is what stopped it (``"cancelled"``, ``"supervisor stopped the job"``).
    """

    USER_EXCEPTION = "user_exception"  # the job's own code raised (its exception is in the result)
    TIMEOUT = "timeout"  # the job ran past its duration
    QUEUE_TIMEOUT = "queue_timeout"  # no capacity came within max_queue_seconds
    NODE_LOST = "node_lost"  # the connection to the job's node was lost
    PARTITION_LOST = "partition_lost"  # the partition holder died or its lease expired
    CONTAINER_FAILED = "container_failed"  # the container exited without a result, or was rejected
    INFRASTRUCTURE = "infrastructure"  # the cluster refused a step (no worker connection, Swarm error, ...)
    LOST = "lost"  # the supervisor restarted and the job could not be re-adopted
    INTERNAL = "internal"  # a bug in the supervisor
    CANCELLED = "cancelled"  # stopped on request (CancelJob) or by the supervisor's shutdown: state CANCELLED
    INVALID_RESULT = "invalid_result"  # the job left no readable result: not a regular file, or too large to send
    IMAGE_UNAVAILABLE = "image_unavailable"  # its user image could not be pulled, or has no python3 of its version

    @property
    def infrastructure(self) -> bool:
        """A failure of the cluster, not of the job: retried by default (``jobs.default_retries``)."""
        return self in (FailureReason.NODE_LOST, FailureReason.PARTITION_LOST, FailureReason.CONTAINER_FAILED,
                        FailureReason.INFRASTRUCTURE, FailureReason.LOST)

    def text(self, detail: str = "") -> str:
        return f"{self.value}: {detail}" if detail else self.value


@dataclass(frozen=True)
class JobSpec:
    """A validated request to run one job. ``package`` is the zip built by the SDK; it is never unpickled here."""

    package: bytes
    gpu: float = 0.5
    duration: int = 3600
    requirements: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""
    idempotency_key: str = ""
    retries: int = 0
    retry_exceptions: bool = False
    priority: int = 0
    max_queue_seconds: int = 0
    memory_bytes: int = 0  # container memory limit; 0 = ``containers.memory_mb``
    cpus: float = 0.0  # container CPU limit in cores; 0 = ``containers.cpus``
    network: str = ""  # ``internet`` (filtered egress) or ``none``; empty = ``containers.network``
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Like ``env`` for the job, but never stored in clear (the journal keeps it encrypted) nor logged."""
    owner: str = ""
    """The name of the token that submitted the job (empty when the supervisor runs without tokens)."""
    limits: Limits = Limits()
    """The owner's limits when the job was submitted: the Scheduler holds the job back while its owner is at
    ``max_running`` or ``max_gpu``."""
    trace_id: str = ""
    """W3C trace id (32 lower-case hex digits) of the submission: from the client's ``traceparent``, else made by
    the server. The job sees it as ``CUMULUS_TRACE_ID``; every supervisor log line about the job carries it."""
    image: str = ""
    """A user image (``registry/name:tag`` or a digest reference) the job runs in instead of the worker image; the
    worker's runner is mounted into it read-only. Empty: the worker image of ``python``."""
    index_url: str = ""
    """The package index ``requirements`` are installed from (one of ``jobs.package_indexes``); empty: the
    default index."""
    resume_on_timeout: bool = False
    """At ``duration`` the attempt is stopped and the job runs again from its last checkpoint, instead of failing
    with TIMEOUT (counted as a retry only when the attempt saved no checkpoint: no progress)."""
    python: str = ""
    """The client's Python minor version (``3.13``, from the package's manifest): the job runs on the worker image
    for it (``cluster.images``); empty for a job journaled before versions were kept (the default image)."""
    instance: bool = False  # a class instance: it serves method calls (cumulus/calls.py) until it is stopped
    max_restarts: int = 0  # an instance: how often it is made again after it died (instead of ``retries``)

    @property
    def whole_devices(self) -> int:
        """Number of whole devices asked for, or 0 for a fractional share of one device."""
        return int(self.gpu) if self.gpu > 1 else 0


@dataclass(frozen=True)
class Placement:
    worker: str  # Swarm node hostname
    node_id: str
    device_index: int  # first device; whole-GPU jobs use device_indexes
    share: float  # share of each device used
    device_indexes: tuple[int, ...] = ()
    gpu_uuids: tuple[str | None, ...] = ()
    device_model: str = ""  # the (first) device's name, as `cumulus workers` shows it: what usage.prices prices
    is_gpu: bool = False  # whether that device is a GPU (its device time counts as GPU time)


@dataclass(frozen=True)
class TeardownReport:
    released: tuple[str, ...] = ()
    leaked: tuple[str, ...] = ()  # "what: reason"

    @property
    def clean(self) -> bool:
        return not self.leaked


@dataclass(frozen=True)
class CheckpointNote:
    """A checkpoint reached the supervisor's store (``restored=False``), or an attempt starts from it."""

    step: int
    size_bytes: int
    restored: bool = False


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened to a job. Exactly one of state / log / result / message / checkpoint is set."""

    job_id: str
    time: float
    state: JobState | None = None
    log: tuple[str, str] | None = None  # (stream, line)
    result: bytes | None = None  # the runner's msgpack envelope
    message: str | None = None
    checkpoint: CheckpointNote | None = None
    reason: str = ""
    queue_position: int = 0
    attempt: int = 1


class JobRecord:
    """The state of one job, written by its actor only. Readers use the attributes and :meth:`events`."""

    def __init__(self, job_id: str, spec: JobSpec) -> None:
        self.job_id = job_id
        self.spec = spec
        self.state = JobState.QUEUED
        self.reason = ""
        self.failure: FailureReason | None = None  # set with a FAILED or CANCELLED end (None once restored)
        self.placement: Placement | None = None
        self.partition_id = ""
        self.service_id = ""
        self.result: bytes | None = None
        self.teardown: TeardownReport | None = None
        self.attempt = 1
        self.queue_position = 0
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.running_at: float | None = None  # when the current attempt reached RUNNING (its usage starts)
        self.finished_at: float | None = None
        self.checkpoint_step: int | None = None  # the step of its newest checkpoint in the supervisor's store
        self.checkpoints = 0  # how many of its checkpoints the store keeps
        self.ran_seconds = 0.0  # how long its paused attempts ran (a resumed attempt gets the rest of its duration)
        self.calls = CallStats()  # an instance's method calls (counted by its actor)
        self.finished = trio.Event()  # the terminal state is set
        self.torn_down = trio.Event()  # teardown finished and reported; nothing of the job remains
        self.halted = trio.Event()  # its container stopped and its partition released (the rest of the teardown follows)
        # Replay history: every non-log event, and the last LOG_HISTORY_LINES log lines, each with a sequence
        # number so that a late subscriber sees them in their original order.
        self._seq = itertools.count()
        self._events: list[tuple[int, JobEvent]] = []
        self._logs: deque[tuple[int, JobEvent]] = deque(maxlen=LOG_HISTORY_LINES)
        self._subscribers: set[trio.MemorySendChannel[JobEvent]] = set()
        # The job actor's hooks to its journal: ``on_change`` gets the record after each state, result or
        # teardown change, ``on_history`` each HistoryEvent. Set by the job's actor only (journal_to).
        self.on_change: Callable[[JobRecord], None] | None = None
        self.on_history: Callable[[HistoryEvent], None] | None = None
        self._queue_notes = 0
        self._secrets: tuple[str, ...] | None = None  # the env values scrubbed from history, computed once
        self._log_masks: tuple[str, ...] | None = None  # the secret env values masked in log lines

    def journal_to(self, on_change: Callable[[JobRecord], None] | None,
                   on_history: Callable[[HistoryEvent], None] | None) -> None:
        """Send the record's changes and history events to the journal from now on (the job's actor does this)."""
        self.on_change, self.on_history = on_change, on_history

    # ---- written by the job actor -----------------------------------------------------------------------------

    def announce(self) -> None:
        """Publish the current state (and result) as events: QUEUED for a new job, the recorded end for a job
        restored from the journal, so that every watcher starts from where the job stands."""
        # The result first, as when the job ended in this process: a watcher that sees the terminal state has
        # already seen the result (the SDK resolves a job's outcome on its terminal state).
        if self.result is not None:
            self._publish(JobEvent(self.job_id, time.time(), result=self.result, attempt=self.attempt))
        self._publish(JobEvent(self.job_id, time.time(), state=self.state, reason=self.reason,
                               attempt=self.attempt))
        self._note("state", self.state.value + (f": {self.reason}" if self.reason else ""), state=self.state.value,
                   reason=self.reason)

    def set_state(self, state: JobState, reason: str = "", *, failure: FailureReason | None = None) -> None:
        """Move to ``state``. The terminal state is written once: later calls after it are ignored.

        A FAILED or CANCELLED end gives its ``failure`` (see :class:`FailureReason` for the ``reason`` text). With
        the terminal state the spec's ``package`` becomes ``b""``: no attempt runs any more, and the record stays
        in memory for ``jobs.result_retention`` (the journal keeps the package)."""
        if self.state.terminal or (state is self.state and not reason):
            return
        self.state = state
        self.reason = reason
        if state in (JobState.FAILED, JobState.CANCELLED):
            self.failure = failure
        if state is JobState.RUNNING and self.running_at is None:  # the job's actor clears it between attempts
            self.running_at = time.time()
            self.started_at = self.running_at if self.started_at is None else self.started_at  # the same number
        if state.terminal:
            self.finished_at = time.time()
            self.spec = replace(self.spec, package=b"")
        self._publish(JobEvent(self.job_id, time.time(), state=state, reason=reason,
                               queue_position=self.queue_position, attempt=self.attempt))
        self._note("state", state.value + (f": {reason}" if reason else ""), state=state.value, reason=reason)
        if state.terminal:
            self.finished.set()

    def add_log(self, stream: str, line: str) -> None:
        """Relay one line of the job's output; values of its ``secret_env`` (4 characters or more) are masked,
        as CI systems do, should the job print one."""
        masks = self._log_masks
        if masks is None:
            masks = self._log_masks = tuple(sorted((v for v in self.spec.secret_env.values() if len(v) >= 4),
                                                   key=len, reverse=True))
        for value in masks:
            if value in line:
                line = line.replace(value, "***")
        self._publish(JobEvent(self.job_id, time.time(), log=(stream, line), attempt=self.attempt))

    def add_message(self, text: str) -> None:
        self._publish(JobEvent(self.job_id, time.time(), message=text, attempt=self.attempt))
        self._note("message", text)

    def set_placement(self, placement: Placement) -> None:
        """Record where the job's share is reserved (a progress message, and a ``placement`` history event)."""
        self.placement = placement
        devices = placement.device_indexes or (placement.device_index,)
        text = f"placed on {placement.worker} device {devices[0]}"
        self._publish(JobEvent(self.job_id, time.time(), message=text, attempt=self.attempt))
        self._note("placement", text + (f" (devices {', '.join(map(str, devices))})" if len(devices) > 1 else "")
                   + f", share {placement.share:g}",
                   data={"worker": placement.worker, "node_id": placement.node_id,
                         "device_indexes": list(devices), "share": placement.share})

    def note_retry(self, reason: str, backoff: float) -> None:
        """Attempt ``attempt - 1`` failed with ``reason``; attempt ``attempt`` starts after ``backoff`` s."""
        failed = self.attempt - 1
        text = f"attempt {failed} failed ({reason}); retrying in {backoff:g} s"
        self._publish(JobEvent(self.job_id, time.time(), message=text, attempt=self.attempt))
        self._note("retry", text, reason=reason, data={"failed_attempt": failed, "backoff_seconds": backoff})

    def note_checkpoint(self, note: CheckpointNote, kept: int) -> None:
        """A checkpoint reached the store (``kept`` of the job's are there now), or an attempt starts from one: an
        event for the streams and a ``checkpoint`` history event, each with the attempt."""
        self.checkpoint_step, self.checkpoints = note.step, kept
        self._publish(JobEvent(self.job_id, time.time(), checkpoint=note, attempt=self.attempt))
        text = (f"attempt {self.attempt} starts from the checkpoint of step {note.step}" if note.restored
                else f"checkpoint of step {note.step} saved ({note.size_bytes} bytes)")
        self._note("checkpoint", text, data={"step": note.step, "size_bytes": note.size_bytes,
                                             "restored": note.restored})

    def set_queue_position(self, position: int) -> None:
        """The job's place in the cluster's queue (written by the cluster, which owns the queue). A change of an
        existing position is a ``queue`` history event (at most MAX_QUEUE_EVENTS of them); the first position
        is in the QUEUED state event's reason. 0: not in the queue."""
        previous, self.queue_position = self.queue_position, position
        if previous and position and position != previous and self._queue_notes < MAX_QUEUE_EVENTS:
            self._queue_notes += 1
            self._note("queue", f"queue position {position} (was {previous})",
                       data={"position": position, "previous": previous})

    def set_service(self, service_id: str, warm_name: str = "") -> None:
        """The attempt's Swarm service exists (``warm_name``: a warm service it took): a ``service`` history event
        (its time is the timeline's), and the record is journaled at once, so a restarted supervisor finds (and
        re-adopts) it even before RUNNING."""
        self.service_id = service_id
        text = f"took the warm service {warm_name} ({service_id})" if warm_name else f"service {service_id} created"
        self._note("service", text, data={"service_id": service_id, "warm": bool(warm_name)})
        self.persist()

    def persist(self) -> None:
        """Journal the record as it is now (e.g. its new partition and service ids, before any state change)."""
        if self.on_change is not None:
            self.on_change(self)

    def set_result(self, envelope: bytes) -> None:
        self.result = envelope
        self._publish(JobEvent(self.job_id, time.time(), result=envelope, attempt=self.attempt))

    def set_torn_down(self, report: TeardownReport) -> None:
        """Record the teardown outcome (separately from the terminal state) and end every event stream."""
        self.teardown = report
        self.halted.set()
        self.torn_down.set()
        self._note("teardown", "teardown: released " + (", ".join(report.released) or "nothing")
                   + ("; leaked " + "; ".join(report.leaked) if report.leaked else ", nothing leaked"),
                   data={"released": list(report.released), "leaked": list(report.leaked)})
        if self.on_change is not None:
            self.on_change(self)
        for channel in self._subscribers:
            channel.close()
        self._subscribers.clear()

    # ---- read by anyone ---------------------------------------------------------------------------------------

    async def events(self, *, replay_logs: bool = True) -> AsyncIterator[JobEvent]:
        """Every event so far (log lines only if ``replay_logs``), then live ones until the job is torn down.

        Cancellation simply ends the subscription. Never blocks the job: each subscriber has its own buffer.
        """
        send, receive = trio.open_memory_channel[JobEvent](math.inf)
        history = heapq.merge(self._events, self._logs) if replay_logs else iter(self._events)
        for _, event in history:
            send.send_nowait(event)
        if self.torn_down.is_set():
            send.close()
        else:
            self._subscribers.add(send)
        try:
            # What is buffered goes out without a checkpoint per event (a burst of log lines would otherwise cost
            # the subscriber one trip through the scheduler per line), with one every EVENTS_PER_CHECKPOINT.
            burst = 0
            while True:
                try:
                    event = receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        event = await receive.receive()
                    except trio.EndOfChannel:
                        return
                    burst = 0
                except trio.EndOfChannel:
                    return
                else:
                    burst += 1
                    if burst % EVENTS_PER_CHECKPOINT == 0:
                        await trio.lowlevel.checkpoint()
                yield event
        finally:
            self._subscribers.discard(send)
            receive.close()

    def _note(self, kind: str, text: str, *, state: str = "", reason: str = "",
              data: dict[str, Any] | None = None) -> None:
        """Hand a history event to ``on_history`` (the journal), scrubbed of the job's env and secret env values."""
        if self.on_history is None:
            return
        secrets = self._secrets
        if secrets is None:
            secrets = self._secrets = secrets_of(self.spec.env, self.spec.secret_env)
        self.on_history(HistoryEvent(self.job_id, time.time(), kind, scrub(text, secrets), self.attempt, state,
                                     scrub(reason, secrets), scrub(data or {}, secrets)))

    def _publish(self, event: JobEvent) -> None:
        (self._logs if event.log is not None else self._events).append((next(self._seq), event))
        if event.log is None and event.message is None and event.checkpoint is None and self.on_change is not None:
            self.on_change(self)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)  # that subscriber went away

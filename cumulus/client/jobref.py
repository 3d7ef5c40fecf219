"""A submitted job on the client: :class:`JobRef`, its outcome and the background thread that follows it.

A :class:`JobRef` is made by :class:`~cumulus.client.client.CumulusClient` (``submit_call``, ``job``). One daemon
thread per JobRef consumes the job's event stream (output lines, states, the result) and re-attaches with
WatchJob when the stream breaks. :meth:`JobRef.result` blocks the calling thread, ``await ref.result_async()``
(or ``await ref``) waits without blocking a running Trio or asyncio loop. Dropping a JobRef never cancels its job.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generator, Generic, Iterator, TypeVar, cast

import grpc

from cumulus.client.aio import Completion, wait_done_async
from cumulus.client.results import Outcome, decode_result
from cumulus.client.types import (TERMINAL_STATES, CancelResult, JobCancelled, JobFailed, JobInfo, JobUpdate,
                                  PauseResult)
from cumulus.errors import CumulusError, SupervisorUnavailable
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.status import error_from_rpc

if TYPE_CHECKING:
    from cumulus.client.client import CumulusClient

RECONNECT_SECONDS = 60.0  # how long a JobRef keeps trying to re-attach after its stream broke
T_co = TypeVar("T_co", covariant=True)  # a job's value: a JobRef[int] is a JobRef[object]


class JobRef(Completion, Generic[T_co]):
    """A submitted job: its id, its outcome when it ends, and ways to look at it. ``JobRef[T]``: the job runs a
    function that returns ``T`` (``f.remote(...)`` of a ``@remote`` function ``f(...) -> T``).

    A background thread follows the job's events: output lines (printed with a ``(job <id>) `` prefix when
    ``log_to_driver``), state changes and the result. If the stream breaks (supervisor restart, network), the
    thread re-attaches with WatchJob for up to a minute. Dropping the JobRef does not cancel the job.
    """

    def __init__(self, client: CumulusClient, job_id: str, *, log_to_driver: bool = True,
                 on_event: Callable[[JobUpdate], None] | None = None, default_timeout: float | None = None,
                 trace_id: str = "") -> None:
        self.client = client
        self.job_id = job_id
        self.trace_id = trace_id
        """The job's W3C trace id (32 hex digits): grep the supervisor's logs for it; the job has it as
        ``$CUMULUS_TRACE_ID``. Empty only from a supervisor that records none."""
        self.log_to_driver = log_to_driver
        self._on_event = on_event
        self._default_timeout = default_timeout
        super().__init__()
        self._state = "QUEUED"
        self._reason = ""
        self._messages: list[str] = []
        self._envelope: bytes | None = None
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._last_time: dict[bool, int] = {True: -1, False: -1}  # is-log -> latest event time (ns) seen
        self._skip_until: dict[bool, int] = {True: -1, False: -1}  # after a re-attach: replayed, already seen
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"JobRef({self.job_id!r}, state={self._state})"

    def __reduce__(self) -> Any:
        raise TypeError(f"a JobRef cannot be pickled; pass its job_id ({self.job_id!r}) and re-attach with "
                        f"CumulusClient.job(job_id)")

    # ---- state -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The last state seen on the event stream (QUEUED ... COMPLETED/FAILED/CANCELLED)."""
        return self._state

    def done(self) -> bool:
        """True once the job reached a terminal state (or following it failed for good)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> T_co:
        """Block until the job ends; return its value or raise its exception (the original type, with the remote
        traceback as ``__cause__``). :class:`JobCancelled` / :class:`JobFailed` when the job ended without an
        outcome (cancelled, timed out, infrastructure). ``TimeoutError`` after ``timeout`` seconds (the job goes on).

        This blocks the calling thread: inside a running event loop, use ``await ref.result_async()``.
        """
        timeout = self._default_timeout if timeout is None else timeout
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} has not finished after {timeout:g} s (state {self._state}); "
                               f"it keeps running")
        return self._outcome_value()

    async def result_async(self, timeout: float | None = None) -> T_co:
        """:meth:`result` without blocking the event loop: works under asyncio (Jupyter) and under Trio."""
        timeout = self._default_timeout if timeout is None else timeout
        if not await wait_done_async(self, timeout):
            raise TimeoutError(f"job {self.job_id} has not finished after {timeout:g} s (state {self._state}); "
                               f"it keeps running")
        return self._outcome_value()

    def __await__(self) -> Generator[Any, None, T_co]:
        return self.result_async().__await__()

    def status(self) -> JobInfo:
        """Ask the supervisor for the job's current status (state, worker, device, times, teardown)."""
        return self.client.status(self.job_id)

    def cancel(self, *, until_stopped: bool = False) -> CancelResult:
        """Cancel the job; returns once its resources are released (what was released and what leaked), or with
        ``until_stopped`` as soon as its container is stopped and its partition released."""
        result = self.client.cancel(self.job_id, until_stopped=until_stopped)
        if result.state in TERMINAL_STATES and not self._done.is_set():
            self._finish(result.state, result.status.reason if result.status else "")
        return result

    def pause(self, grace: float = 0) -> PauseResult:
        """Ask the job to pause: ``cumulus.should_pause()`` turns true inside it; it ends PAUSED when it returns
        (or is stopped ``grace`` seconds later, 0: the supervisor's ``jobs.pause_grace``, at its last checkpoint).
        Returns once it is PAUSED, holding no share, or has ended (it finished first). :meth:`result` keeps
        waiting through a pause."""
        return self.client.pause(self.job_id, grace=grace)

    def resume(self) -> JobInfo:
        """Queue the PAUSED job again; it may run on any worker, and ``cumulus.checkpoint.load()`` returns its last
        checkpoint."""
        return self.client.resume(self.job_id)

    def logs(self, follow: bool = False) -> Iterator[str]:
        """The job's output lines: what is buffered now, or (``follow=True``) everything until the job ends."""
        finished = self.client.status(self.job_id).finished
        idle = None if (follow or finished) else 0.5
        for update in self.client.watch(self.job_id, include_logs=True, idle_timeout=idle):
            if update.kind == "log":
                yield update.text

    # ---- internals -------------------------------------------------------------------------------------------

    def _outcome_value(self) -> T_co:
        if self._error is not None:
            raise self._error
        if self._envelope is not None:
            with self._lock:
                if self._outcome is None:
                    self._outcome = decode_result(self._envelope)
            return cast(T_co, self._outcome.result())  # unpickled: what the function returned
        if self._state == "CANCELLED":
            raise JobCancelled(self.job_id, self._state, self._reason)
        detail = self._messages[-1] if self._messages else ""
        if self._state == "COMPLETED":
            raise JobFailed(self.job_id, self._state, self._reason or "no result", "the job left no result")
        raise JobFailed(self.job_id, self._state, self._reason, detail)

    def _finish(self, state: str | None = None, reason: str = "", error: BaseException | None = None) -> None:
        def record() -> None:
            if state:
                self._state, self._reason = state, reason or self._reason
            if error is not None:
                self._error = error

        self._complete(record)

    def _handle_logs(self, ev: pb.JobEvent) -> None:
        """A ``logs`` batch: each line as if it had come alone (skipped if already seen before a re-attach)."""
        printed = []
        for update, stamp in zip(JobUpdate.all_from_pb(ev), ev.logs.time_unix_nanos):
            if stamp and stamp <= self._skip_until[True]:
                continue
            if stamp:
                self._last_time[True] = max(stamp, self._last_time[True])
            if self.log_to_driver:
                printed.append(f"(job {self.job_id}) {update.text}\n")
            if self._on_event is not None:
                with contextlib.suppress(Exception):
                    self._on_event(update)
        if printed:
            sys.stdout.write("".join(printed))
            sys.stdout.flush()

    def _handle(self, ev: pb.JobEvent) -> None:
        kind = ev.WhichOneof("kind")
        if kind == "logs":
            self._handle_logs(ev)
            return
        is_log = kind == "log"
        stamp = ev.time.seconds * 1_000_000_000 + ev.time.nanos
        if stamp and stamp <= self._skip_until[is_log]:
            return  # replayed after a re-attach: already seen
        if stamp:
            self._last_time[is_log] = max(stamp, self._last_time[is_log])
        if kind == "log":
            if self.log_to_driver:
                print(f"(job {self.job_id}) {ev.log.text}", file=sys.stdout, flush=True)
        elif kind == "result":
            self._envelope = ev.result.envelope
        elif kind == "message":
            self._messages.append(ev.message)
        if self._on_event is not None:
            with contextlib.suppress(Exception):
                self._on_event(JobUpdate.from_pb(ev))
        if kind == "state":
            state = pb.JobState.Name(ev.state)
            if state in TERMINAL_STATES:
                self._finish(state, ev.reason)
            else:
                self._state = state

    def _start(self, stream: Any, *, replay_logs: bool = False) -> None:
        self._thread = threading.Thread(target=self._follow, args=(stream, replay_logs),
                                        name=f"cumulus-job-{self.job_id}", daemon=True)
        self._thread.start()

    def _follow(self, stream: Any, replay_logs: bool) -> None:
        give_up_at: float | None = None
        include_logs = replay_logs
        while True:
            try:
                if stream is None:
                    stream = self.client._stub.WatchJob(
                        pb.WatchJobRequest(job_id=self.job_id, include_logs=include_logs))
                for ev in stream:
                    give_up_at = None
                    self._handle(ev)
                if self._done.is_set():
                    return  # the stream ended after the job's teardown
                problem: BaseException = CumulusError(f"the event stream of job {self.job_id} ended early")
            except grpc.RpcError as error:
                if self.client._closed:
                    self._finish(error=CumulusError(f"the client was closed while following job {self.job_id}"))
                    return
                problem = error_from_rpc(error, self.client.address)
                if not isinstance(problem, SupervisorUnavailable):
                    self._finish(error=problem)
                    return
            except Exception as error:  # noqa: BLE001 - never die silently: the caller of result() learns it
                self._finish(error=error)
                return
            if self._done.is_set():
                return
            now = time.monotonic()
            give_up_at = give_up_at or now + RECONNECT_SECONDS
            if now >= give_up_at:
                self._finish(error=problem)
                return
            time.sleep(1.0)
            stream = None
            include_logs = True  # replay and skip what was already seen (by time)
            self._skip_until = dict(self._last_time)


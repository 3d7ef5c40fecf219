"""The blocking client: :class:`CumulusClient` and :class:`JobRef`.

Design: plain blocking gRPC (grpc's sync API) plus one background thread per :class:`JobRef` that consumes the
job's event stream (logs, states, result). Nothing here needs an event loop, so it works the same from a script,
from Trio code and from asyncio code (Jupyter): :meth:`JobRef.result` blocks the calling thread, while
``await ref.result_async()`` (or ``await ref``) waits without blocking the running Trio or asyncio loop.

Submitting blocks only until the supervisor has accepted the job (validation included: a bad request raises
here, at once). Disconnecting never cancels a job; :meth:`JobRef.cancel` does.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
import uuid
from typing import (Any, Callable, Generator, Generic, Iterable, Iterator, Mapping, Sequence, TypedDict, TypeVar,
                    Unpack, cast)

import grpc

from cumulus.client import packaging
from cumulus.client.types import (TERMINAL_STATES, CancelResult, JobCancelled, JobFailed, JobInfo, JobUpdate,
                                  WorkerStatus)
from cumulus.client.types import JobDescription
from cumulus.config import default_address
from cumulus.errors import CumulusError, InvalidRequest, SupervisorUnavailable
from cumulus.jobformat import check_gpu_share
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.status import error_from_rpc

DEFAULT_GPU = 0.5  # the supervisor's JobSpec default
RPC_TIMEOUT = 30.0  # unary calls; CancelJob gets longer (it waits for the teardown)
CANCEL_TIMEOUT = 300.0
RECONNECT_SECONDS = 60.0  # how long a JobRef keeps trying to re-attach after its stream broke
OPTION_NAMES = frozenset({
    "gpu", "gpu_memory", "duration", "requirements", "env", "retries", "retry_exceptions", "timeout", "name",
    "priority", "max_queue_seconds", "idempotency_key", "log_to_driver", "address", "project_root",
})

R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)  # a job's value: a JobRef[int] is a JobRef[object]


class RemoteOptions(TypedDict, total=False):
    """The options of ``@remote(...)``, ``.options(...)`` and :meth:`CumulusClient.submit_call` (None: the default).

    See :class:`cumulus.client.remote.RemoteFunction` for what each one means.
    """

    gpu: float | None
    gpu_memory: float | None
    duration: int | None
    requirements: str | Iterable[str] | None
    env: dict[str, str] | None
    retries: int | None
    retry_exceptions: bool | None
    timeout: float | None
    name: str | None
    priority: int | None
    max_queue_seconds: int | None
    idempotency_key: str | None
    log_to_driver: bool | None
    address: str | None
    project_root: str | os.PathLike[str] | None


def quiet_logs_default() -> bool:
    return os.environ.get("CUMULUS_QUIET_LOGS", "").strip().lower() in ("1", "true", "yes", "on")


def _max_package_bytes() -> int:
    try:
        return int(os.environ.get("CUMULUS_JOBS_MAX_PACKAGE_MB", "50")) * 1024 * 1024
    except ValueError:
        return packaging.DEFAULT_MAX_BYTES


class CumulusClient:
    """A connection to one supervisor. Thread-safe; cheap to keep around (one gRPC channel).

    ``address`` defaults to :func:`cumulus.config.default_address` (``CUMULUS_ADDRESS``, then the local cluster's
    supervisor, then ``127.0.0.1:50051``). ``log_to_driver`` (default: on unless ``CUMULUS_QUIET_LOGS=1``) prints
    each job's output lines to this process's stdout as they arrive, prefixed ``(job <id>) ``.
    """

    def __init__(self, address: str | None = None, *, log_to_driver: bool | None = None) -> None:
        self.address = address or default_address()
        self.log_to_driver = (not quiet_logs_default()) if log_to_driver is None else log_to_driver
        self._channel = grpc.insecure_channel(self.address, options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ])
        self._stub = cumulus_pb2_grpc.OrchestratorServiceStub(self._channel)
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Jobs keep running; JobRefs of this client stop following them."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> CumulusClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CumulusClient({self.address!r})"

    def _call(self, method: str, request: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """A unary call; its reply (a message of the generated module: typed by the caller)."""
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.address) from None

    # ---- jobs -----------------------------------------------------------------------------------------------

    def submit(self, func: Callable[..., R], *args: Any, gpu: float | None = None,
               gpu_memory: float | None = None, duration: int | None = None, requirements: Iterable[str] = (),
               env: dict[str, str] | None = None, retries: int = 0, log_to_driver: bool | None = None,
               **kwargs: Any) -> JobRef[R]:
        """Submit ``func(*args, **kwargs)`` as a job and return its :class:`JobRef` once the supervisor accepted it.

        Keyword arguments named like an option (``gpu``, ``gpu_memory``, ``duration``, ``requirements``, ``env``,
        ``retries``, ``log_to_driver``) are options, every other one goes to ``func``; to pass a keyword
        argument that has an option's name, use :meth:`submit_call`. ``func`` may be a ``@remote`` function: its
        options are the defaults.
        """
        options: dict[str, Any] = {"gpu": gpu, "gpu_memory": gpu_memory, "duration": duration,
                                   "requirements": requirements, "env": env, "retries": retries,
                                   "log_to_driver": log_to_driver}
        return self.submit_call(func, args, kwargs, **{k: v for k, v in options.items() if v not in (None, ())})

    def run(self, func: Callable[..., R], *args: Any, gpu: float | None = None, gpu_memory: float | None = None,
            duration: int | None = None, requirements: Iterable[str] = (), env: dict[str, str] | None = None,
            retries: int = 0, log_to_driver: bool | None = None, **kwargs: Any) -> R:
        """Submit ``func(*args, **kwargs)``, wait for it (blocking) and return its value or raise its exception."""
        return self.submit(func, *args, gpu=gpu, gpu_memory=gpu_memory, duration=duration,
                           requirements=requirements, env=env, retries=retries, log_to_driver=log_to_driver,
                           **kwargs).result()

    def submit_call(self, func: Callable[..., R], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    *, on_event: Callable[[JobUpdate], None] | None = None, **options: Unpack[RemoteOptions]
                    ) -> JobRef[R]:
        """Submit ``func(*args, **kwargs)`` with ``options`` (see :func:`cumulus.remote`) given apart from the call.

        ``on_event`` is called (from the JobRef's thread) with each :class:`JobUpdate`.
        """
        given: Mapping[str, Any] = options
        base = getattr(func, "_cumulus_options", None)
        if base is not None:  # a @remote function: its options are the defaults
            given = {**base, **options}
            func = func._cumulus_function  # type: ignore[attr-defined]
        opts = normalize_options(given)
        opts.pop("address", None)
        log_to_driver = opts.pop("log_to_driver", None)
        log_to_driver = self.log_to_driver if log_to_driver is None else bool(log_to_driver)
        timeout = opts.pop("timeout", None)
        requirements = list(opts.get("requirements", ()))
        env = dict(opts.get("env") or {})
        package = packaging.build_package(func, tuple(args), dict(kwargs or {}), requirements=requirements,
                                          env=env, project_root=opts.get("project_root"),
                                          max_bytes=_max_package_bytes())
        request = pb.JobSubmission(
            code_package=package,
            requirements=requirements,
            gpu=float(opts.get("gpu", DEFAULT_GPU)),
            duration_seconds=int(opts.get("duration", 0)),
            env=env,
            idempotency_key=opts.get("idempotency_key") or f"sdk-{uuid.uuid4().hex}",
            name=opts.get("name") or packaging._func_name(func).removeprefix("__main__."),
            retries=int(opts.get("retries", 0)),
            retry_exceptions=bool(opts.get("retry_exceptions", False)),
            priority=int(opts.get("priority", 0)),
            max_queue_seconds=int(opts.get("max_queue_seconds", 0)),
        )
        stream = self._stub.SubmitJob(request)
        try:
            first = next(stream)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.address) from None
        except StopIteration:
            raise CumulusError(f"the supervisor at {self.address} ended the submission without a job id") from None
        ref: JobRef[R] = JobRef(self, first.job_id, log_to_driver=log_to_driver, on_event=on_event,
                                default_timeout=timeout)
        ref._handle(first)
        ref._start(stream)
        return ref

    def job(self, job_id: str, *, log_to_driver: bool | None = None, replay_logs: bool = False,
            on_event: Callable[[JobUpdate], None] | None = None) -> JobRef[Any]:
        """A :class:`JobRef` for an existing job (submitted by anyone), following it with WatchJob.

        Raises :class:`~cumulus.errors.NotFound` if the supervisor does not know it. ``replay_logs`` also prints
        (or passes to ``on_event``) the output the job produced before now.
        """
        info = self.status(job_id)  # NotFound, unreachable: raised here
        log_to_driver = self.log_to_driver if log_to_driver is None else log_to_driver
        ref: JobRef[Any] = JobRef(self, info.job_id, log_to_driver=log_to_driver, on_event=on_event)
        ref._start(None, replay_logs=replay_logs)
        return ref

    def status(self, job_id: str) -> JobInfo:
        return JobInfo.from_pb(self._call("GetJobStatus", pb.GetJobStatusRequest(job_id=job_id)))

    def describe(self, job_id: str) -> JobDescription:
        """The job's status and its history kept in the journal (state changes with times, placement, queue
        position changes, retries, teardown report, progress messages; never its output). NotFound if unknown."""
        return JobDescription.from_pb(self._call("DescribeJob", pb.DescribeJobRequest(job_id=job_id)))

    def cancel(self, job_id: str, *, timeout: float = CANCEL_TIMEOUT) -> CancelResult:
        """Cancel a job; returns once its resources are released, saying what was (and what leaked)."""
        return CancelResult.from_pb(self._call("CancelJob", pb.CancelJobRequest(job_id=job_id), timeout=timeout))

    def list_jobs(self, include_finished: bool = True, limit: int = 0) -> list[JobInfo]:
        reply = self._call("ListJobs", pb.ListJobsRequest(include_finished=include_finished, limit=limit))
        return [JobInfo.from_pb(j) for j in reply.jobs]

    def list_workers(self) -> list[WorkerStatus]:
        return [WorkerStatus.from_pb(w) for w in self._call("ListWorkers", pb.ListWorkersRequest()).workers]

    def health(self) -> pb.HealthCheckResponse:
        reply: pb.HealthCheckResponse = self._call("HealthCheck", pb.HealthCheckRequest(), timeout=5.0)
        return reply

    def watch(self, job_id: str, *, include_logs: bool = True, idle_timeout: float | None = None
              ) -> Iterator[JobUpdate]:
        """The job's events (history, then live ones until it is torn down).

        With ``idle_timeout``, stop once no event came for that many seconds (used to read what is buffered now).
        """
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, include_logs=include_logs))
        try:
            if idle_timeout is None:
                for ev in call:
                    yield from JobUpdate.all_from_pb(ev)
                return
            items: queue.Queue[Any] = queue.Queue()

            def pump() -> None:
                try:
                    for ev in call:
                        items.put(ev)
                except grpc.RpcError as error:
                    items.put(error)
                items.put(None)

            threading.Thread(target=pump, name=f"cumulus-watch-{job_id}", daemon=True).start()
            while True:
                try:
                    item = items.get(timeout=idle_timeout)
                except queue.Empty:
                    return
                if item is None:
                    return
                if isinstance(item, grpc.RpcError):
                    raise item
                yield from JobUpdate.all_from_pb(item)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and call.done():
                return
            raise error_from_rpc(error, self.address) from None
        finally:
            call.cancel()


class JobRef(Generic[T_co]):
    """A submitted job: its id, its outcome when it ends, and ways to look at it. ``JobRef[T]``: the job runs a
    function that returns ``T`` (``f.remote(...)`` of a ``@remote`` function ``f(...) -> T``).

    A background thread follows the job's events: output lines (printed with a ``(job <id>) `` prefix when
    ``log_to_driver``), state changes and the result. If the stream breaks (supervisor restart, network), the
    thread re-attaches with WatchJob for up to a minute. Dropping the JobRef does not cancel the job.
    """

    def __init__(self, client: CumulusClient, job_id: str, *, log_to_driver: bool = True,
                 on_event: Callable[[JobUpdate], None] | None = None, default_timeout: float | None = None) -> None:
        self.client = client
        self.job_id = job_id
        self.log_to_driver = log_to_driver
        self._on_event = on_event
        self._default_timeout = default_timeout
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._state = "QUEUED"
        self._reason = ""
        self._messages: list[str] = []
        self._envelope: bytes | None = None
        self._outcome: packaging.Outcome | None = None
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
        if _async_library() == "trio":
            import trio

            token = trio.lowlevel.current_trio_token()
            event = trio.Event()

            def wake() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(event.set)

            self._add_done_callback(wake)
            try:
                with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
                    await event.wait()
            except trio.TooSlowError:
                raise TimeoutError(f"job {self.job_id} has not finished after {timeout:g} s "
                                   f"(state {self._state}); it keeps running") from None
            finally:
                self._remove_done_callback(wake)
        else:
            import asyncio

            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(resolve)

            self._add_done_callback(wake)
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"job {self.job_id} has not finished after {timeout:g} s "
                                   f"(state {self._state}); it keeps running") from None
            finally:
                self._remove_done_callback(wake)
        return self._outcome_value()

    def __await__(self) -> Generator[Any, None, T_co]:
        return self.result_async().__await__()

    def status(self) -> JobInfo:
        """Ask the supervisor for the job's current status (state, worker, device, times, teardown)."""
        return self.client.status(self.job_id)

    def cancel(self) -> CancelResult:
        """Cancel the job; returns once its resources are released (what was released and what leaked)."""
        result = self.client.cancel(self.job_id)
        if result.state in TERMINAL_STATES and not self._done.is_set():
            self._finish(result.state, result.status.reason if result.status else "")
        return result

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
                    self._outcome = packaging.decode_result(self._envelope)
            return cast(T_co, self._outcome.result())  # unpickled: what the function returned
        if self._state == "CANCELLED":
            raise JobCancelled(self.job_id, self._state, self._reason)
        detail = self._messages[-1] if self._messages else ""
        if self._state == "COMPLETED":
            raise JobFailed(self.job_id, self._state, self._reason or "no result", "the job left no result")
        raise JobFailed(self.job_id, self._state, self._reason, detail)

    def _add_done_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _remove_done_callback(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def _finish(self, state: str | None = None, reason: str = "", error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            if state:
                self._state, self._reason = state, reason or self._reason
            if error is not None:
                self._error = error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

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


def _async_library() -> str:
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:  # noqa: BLE001 - no sniffio, or not in a known loop: asyncio is the only other choice
        return "asyncio"


# ---- options ---------------------------------------------------------------------------------------------------


def normalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``@remote`` / submit options early (a typo or a bad gpu share fails at the call site)."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(OPTION_NAMES))}")
    opts = dict(options)
    if "gpu_memory" in opts:
        alias = opts.pop("gpu_memory")
        if alias is not None:
            if opts.get("gpu") is not None and opts["gpu"] != alias:
                raise TypeError(f"gpu={opts['gpu']!r} and gpu_memory={alias!r} disagree; gpu_memory is an alias "
                                f"of gpu, give one of them")
            opts["gpu"] = alias
    opts = {k: v for k, v in opts.items() if v is not None}
    if "gpu" in opts:
        opts["gpu"] = check_gpu_share(opts["gpu"])
    if "duration" in opts:
        d = opts["duration"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0 or (isinstance(d, float) and not
                                                                               d.is_integer()):
            raise InvalidRequest(f"duration={d!r}: give whole seconds >= 1 (0 or None for the default)")
        opts["duration"] = int(d)
    if "requirements" in opts:
        reqs = opts["requirements"]
        if isinstance(reqs, str):
            reqs = [reqs]
        opts["requirements"] = tuple(reqs)
    if "env" in opts and not isinstance(opts["env"], dict):
        raise InvalidRequest(f"env must be a dict of str to str, got {type(opts['env']).__name__}")
    for key in ("retries", "priority", "max_queue_seconds"):
        if key in opts and (isinstance(opts[key], bool) or not isinstance(opts[key], int) or
                            (opts[key] < 0 and key != "priority")):
            raise InvalidRequest(f"{key}={opts[key]!r} must be a{' non-negative' if key != 'priority' else 'n'}"
                                 f" integer")
    if "timeout" in opts and (not isinstance(opts["timeout"], (int, float)) or opts["timeout"] < 0):
        raise InvalidRequest(f"timeout={opts['timeout']!r} must be seconds >= 0 (or None to wait forever)")
    return opts


# ---- default clients, one per address ---------------------------------------------------------------------------

_clients: dict[str, CumulusClient] = {}
_clients_lock = threading.Lock()


def client_for(address: str | None = None) -> CumulusClient:
    """The shared client for ``address`` (default: :func:`cumulus.config.default_address`)."""
    address = address or default_address()
    with _clients_lock:
        client = _clients.get(address)
        if client is None or client._closed:
            client = _clients[address] = CumulusClient(address)
        return client

"""The blocking client: :class:`CumulusClient`, a connection to one supervisor and its RPCs, and
:func:`client_for`, the shared client per address.

Design: plain blocking gRPC (grpc's sync API); nothing here needs an event loop, so it works the same from a
script, from Trio code and from asyncio code (Jupyter). Submitting blocks only until the supervisor has accepted
the job (validation included: a bad request raises here, at once) and returns a :class:`JobRef`
(:mod:`cumulus.client.jobref`); the options are checked by :mod:`cumulus.client.options` and the request built by
:mod:`cumulus.client.job_request`. Disconnecting never cancels a job; :meth:`JobRef.cancel` does. Method calls on
class instances go over one stream per client (:mod:`cumulus.client.call_stream`), not through this class.

``JobRef``, ``RemoteOptions`` and ``normalize_options`` are re-exported here (their home before the split).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import types
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar, Unpack

import grpc

from cumulus.client import job_request
from cumulus.client.connection import ClientConfig, load_client_config, open_channel
from cumulus.client.tokens import TokenStatus
from cumulus.client.jobref import RECONNECT_SECONDS, JobRef
from cumulus.client.options import DEFAULT_GPU, OPTION_NAMES, RemoteOptions, normalize_options
from cumulus.client.types import CancelResult, JobDescription, JobInfo, JobUpdate, PauseResult, WorkerStatus
from cumulus.client.usage import GROUPS as USAGE_GROUPS
from cumulus.client.usage import UsageReport, parse_since
from cumulus.errors import CumulusError, InvalidRequest, Unsatisfiable, WrongJobState
from cumulus.jobformat import MAX_PACKAGE_BYTES, MAX_PACKAGE_MB, MiB
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.status import error_from_rpc
from cumulus.tracing import (TRACE_ID_REPLY_KEY, TRACEPARENT_ENV, TRACEPARENT_KEY, child_traceparent,
                             TraceParent, new_traceparent, parse_traceparent)

__all__ = ["CANCEL_TIMEOUT", "DEFAULT_GPU", "OPTION_NAMES", "RECONNECT_SECONDS", "RPC_TIMEOUT", "CumulusClient",
           "JobRef", "RemoteOptions", "client_for", "normalize_options", "quiet_logs_default"]

RPC_TIMEOUT = 30.0  # unary calls; CancelJob gets longer (it waits for the teardown)
CANCEL_TIMEOUT = 300.0
PAUSE_GRACE_ALLOWANCE = 3600.0  # a pause with the supervisor's grace (unknown here) waits at most this much more

R = TypeVar("R")


def quiet_logs_default() -> bool:
    return os.environ.get("CUMULUS_QUIET_LOGS", "").strip().lower() in ("1", "true", "yes", "on")


def max_package_bytes() -> int:
    """The package limit the SDK builds to: ``CUMULUS_JOBS_MAX_PACKAGE_MB`` (the supervisor's setting, when this
    process shares its environment), else the job format's default."""
    try:
        return int(os.environ.get("CUMULUS_JOBS_MAX_PACKAGE_MB", str(MAX_PACKAGE_MB))) * MiB
    except ValueError:
        return MAX_PACKAGE_BYTES


class CumulusClient:
    """A connection to one supervisor. Thread-safe; cheap to keep around (one gRPC channel).

    How to connect comes from the client config (:mod:`cumulus.client.connection`: ``~/.config/cumulus/config.yaml``
    or ``$CUMULUS_CONFIG``, which ``cumulus local up`` writes; ``CUMULUS_ADDRESS``/``CUMULUS_TOKEN`` override it):
    TLS trusting its CA, and its bearer token on every call. ``address`` and ``token`` override the config;
    ``config`` replaces it. ``log_to_driver`` (default: on unless ``CUMULUS_QUIET_LOGS=1``) prints
    each job's output lines to this process's stdout as they arrive, prefixed ``(job <id>) ``.
    """

    def __init__(self, address: str | None = None, *, log_to_driver: bool | None = None, token: str | None = None,
                 config: ClientConfig | None = None) -> None:
        config = config or load_client_config(address)
        if address:
            config = replace(config, address=address)
        if token is not None:
            config = replace(config, token=token)
        self.config = config
        self.address = config.address
        self.log_to_driver = (not quiet_logs_default()) if log_to_driver is None else log_to_driver
        self._channel = open_channel(config, options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ])
        self._stub = cumulus_pb2_grpc.OrchestratorServiceStub(self._channel)
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Jobs keep running; JobRefs of this client stop following them; method calls of
        its instance handles that have not returned fail (their stream closes with the channel)."""
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
               memory: int | str | None = None, cpus: float | None = None, network: str | None = None,
               secret_env: dict[str, str] | None = None,
               py_modules: Sequence[types.ModuleType | str | os.PathLike[str]] = (),
               working_dir: str | os.PathLike[str] | None = None, files: Sequence[str | os.PathLike[str]] = (),
               image: str | None = None, index_url: str | None = None, traceparent: str | None = None,
               **kwargs: Any) -> JobRef[R]:
        """Submit ``func(*args, **kwargs)`` as a job and return its :class:`JobRef` once the supervisor accepted it.

        Keyword arguments named like an option (``gpu``, ``gpu_memory``, ``duration``, ``requirements``, ``env``,
        ``retries``, ``log_to_driver``, ``memory``, ``cpus``, ``network``, ``secret_env``, ``py_modules``,
        ``working_dir``, ``files``, ``image``, ``index_url``, ``traceparent``) are options, every other one goes to ``func``; to pass a
        keyword argument that has an option's name, use :meth:`submit_call`.
        ``func`` may be a ``@remote`` function: its options are the defaults. ``secret_env`` values travel in the
        request only (never in the package), and the supervisor never stores them in clear nor logs them.
        """
        options: dict[str, Any] = {"gpu": gpu, "gpu_memory": gpu_memory, "duration": duration,
                                   "requirements": requirements, "env": env, "retries": retries,
                                   "log_to_driver": log_to_driver, "memory": memory, "cpus": cpus,
                                   "network": network, "secret_env": secret_env, "py_modules": py_modules,
                                   "working_dir": working_dir, "files": files, "image": image,
                                   "index_url": index_url}
        return self.submit_call(func, args, kwargs, traceparent=traceparent,
                                **{k: v for k, v in options.items() if v not in (None, ())})

    def run(self, func: Callable[..., R], *args: Any, gpu: float | None = None, gpu_memory: float | None = None,
            duration: int | None = None, requirements: Iterable[str] = (), env: dict[str, str] | None = None,
            retries: int = 0, log_to_driver: bool | None = None, memory: int | str | None = None,
            cpus: float | None = None, network: str | None = None, secret_env: dict[str, str] | None = None,
            py_modules: Sequence[types.ModuleType | str | os.PathLike[str]] = (),
            working_dir: str | os.PathLike[str] | None = None, files: Sequence[str | os.PathLike[str]] = (),
            image: str | None = None, index_url: str | None = None, traceparent: str | None = None,
            **kwargs: Any) -> R:
        """Submit ``func(*args, **kwargs)``, wait for it (blocking) and return its value or raise its exception."""
        return self.submit(func, *args, gpu=gpu, gpu_memory=gpu_memory, duration=duration,
                           requirements=requirements, env=env, retries=retries, log_to_driver=log_to_driver,
                           memory=memory, cpus=cpus, network=network, secret_env=secret_env, py_modules=py_modules,
                           working_dir=working_dir, files=files, image=image, index_url=index_url,
                           traceparent=traceparent, **kwargs).result()

    def submit_call(self, func: Callable[..., R], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    *, on_event: Callable[[JobUpdate], None] | None = None, traceparent: str | None = None,
                    instance: bool = False, **options: Unpack[RemoteOptions]) -> JobRef[R]:
        """Submit ``func(*args, **kwargs)`` with ``options`` (see :func:`cumulus.remote`) given apart from the call.

        ``on_event`` is called (from the JobRef's thread) with each :class:`JobUpdate`. Relative paths of
        ``files`` and ``working_dir`` start at the current directory at this call. From async code, use
        ``await f.remote_async(...)`` (:meth:`cumulus.client.remote.RemoteFunction.remote_async`): this call blocks.

        Each submission belongs to a trace (W3C Trace Context), sent as ``traceparent`` metadata: the trace of
        ``traceparent`` if given (an invalid one raises :class:`~cumulus.errors.InvalidRequest`), else that of
        ``$CUMULUS_TRACEPARENT`` if it holds a valid one, else a new trace per submission. The job keeps its trace
        id (``JobRef.trace_id``, ``cumulus describe``, ``$CUMULUS_TRACE_ID`` in the job), and every supervisor log
        line about the job carries it. ``instance``: ``func`` is a class to make and serve (``@remote`` on a class).
        """
        given: Mapping[str, Any] = options
        base = getattr(func, "_cumulus_options", None)
        if base is not None:  # a @remote function: its options are the defaults
            given = {**base, **options}
            func = func._cumulus_function  # type: ignore[attr-defined]
        opts = normalize_options(given, for_class=instance)
        opts.pop("address", None)
        log_to_driver = opts.pop("log_to_driver", None)
        log_to_driver = self.log_to_driver if log_to_driver is None else bool(log_to_driver)
        timeout = opts.pop("timeout", None)
        request = job_request.submission(func, args, kwargs, opts, max_bytes=max_package_bytes(),
                                         instance=instance)  # the package and the request: job_request.py
        sent = _submission_traceparent(traceparent)
        stream = self._stub.SubmitJob(request, metadata=((TRACEPARENT_KEY, sent.header()),))
        try:
            first = next(stream)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.address) from None
        except StopIteration:
            raise CumulusError(f"the supervisor at {self.address} ended the submission without a job id") from None
        # The supervisor says which trace id the job has (another one when the idempotency key named an older job).
        replied = dict(stream.initial_metadata() or ()).get(TRACE_ID_REPLY_KEY)
        ref: JobRef[R] = JobRef(self, first.job_id, log_to_driver=log_to_driver, on_event=on_event,
                                default_timeout=timeout, trace_id=replied or sent.trace_id)
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
        ref: JobRef[Any] = JobRef(self, info.job_id, log_to_driver=log_to_driver, on_event=on_event,
                                  trace_id=info.trace_id)
        ref._start(None, replay_logs=replay_logs)
        return ref

    def status(self, job_id: str) -> JobInfo:
        return JobInfo.from_pb(self._call("GetJobStatus", pb.GetJobStatusRequest(job_id=job_id)))

    def describe(self, job_id: str) -> JobDescription:
        """The job's status and its history kept in the journal (state changes with times, placement, queue
        position changes, retries, teardown report, progress messages; never its output). NotFound if unknown."""
        return JobDescription.from_pb(self._call("DescribeJob", pb.DescribeJobRequest(job_id=job_id)))

    def cancel(self, job_id: str, *, until_stopped: bool = False, timeout: float = CANCEL_TIMEOUT) -> CancelResult:
        """Cancel a job; returns once its resources are released, saying what was (and what leaked).
        ``until_stopped``: return as soon as its container is stopped and its partition released (the removal of
        its service follows; the result then has no teardown report)."""
        request = pb.CancelJobRequest(job_id=job_id, until_stopped=until_stopped)
        return CancelResult.from_pb(self._call("CancelJob", request, timeout=timeout))

    def pause(self, job_id: str, *, grace: float = 0, timeout: float | None = None) -> PauseResult:
        """Ask a job to pause; returns once it is PAUSED (its share released) or has ended. ``grace``: seconds it
        has to return after ``cumulus.should_pause()`` turns true (0: the supervisor's ``jobs.pause_grace``)."""
        request = pb.PauseJobRequest(job_id=job_id, grace_seconds=max(0, math.ceil(grace)))
        wait = timeout if timeout is not None else CANCEL_TIMEOUT + (grace or PAUSE_GRACE_ALLOWANCE)
        with _wrong_state():
            return PauseResult.from_pb(self._call("PauseJob", request, timeout=wait))

    def resume(self, job_id: str) -> JobInfo:
        """Queue a PAUSED job again (it may run on any worker, from its last checkpoint); its status."""
        with _wrong_state():
            return JobInfo.from_pb(self._call("ResumeJob", pb.ResumeJobRequest(job_id=job_id)).status)

    def list_jobs(self, include_finished: bool = True, limit: int = 0) -> list[JobInfo]:
        reply = self._call("ListJobs", pb.ListJobsRequest(include_finished=include_finished, limit=limit))
        return [JobInfo.from_pb(j) for j in reply.jobs]

    def list_workers(self) -> list[WorkerStatus]:
        return [WorkerStatus.from_pb(w) for w in self._call("ListWorkers", pb.ListWorkersRequest()).workers]

    def usage(self, since: float | str | None = None, by: str = "user") -> UsageReport:
        """Device time (and cost) used by the attempts that ended at or after ``since`` (Unix seconds, or as
        ``cumulus usage --since`` takes it: ``"7d"``, ``"2024-05-01"``; None: all the supervisor keeps), grouped
        ``by`` ``"user"``, ``"job"`` or ``"worker"``, with totals. An admin token sees every user's, any other
        token its own. InvalidRequest for a bad ``since`` or ``by``."""
        if by not in USAGE_GROUPS:
            raise InvalidRequest(f"by={by!r}: use one of {', '.join(USAGE_GROUPS)}")
        if isinstance(since, str):
            try:
                since = parse_since(since)
            except ValueError as error:
                raise InvalidRequest(f"since: {error}") from None
        request = pb.GetUsageRequest(by=pb.UsageGroup.Value(f"BY_{by.upper()}"))
        if since is not None:
            request.since.FromNanoseconds(int(since * 1e9))
        return UsageReport.from_pb(self._call("GetUsage", request), by)

    # ---- tokens (admin tokens only) ----------------------------------------------------------------------------

    def create_token(self, name: str, *, admin: bool = False, max_running: int = 0, max_queued: int = 0,
                     max_gpu: float = 0.0, rate: float = 0.0) -> tuple[TokenStatus, str]:
        """Make a token; returns it as listed and its secret (shown only here). 0 means no limit."""
        token = pb.Token(name=name, admin=admin, max_running=max_running, max_queued=max_queued, max_gpu=max_gpu,
                         rate=rate)
        reply = self._call("CreateToken", pb.CreateTokenRequest(token=token))
        return TokenStatus.from_pb(reply.token), reply.secret

    def list_tokens(self) -> list[TokenStatus]:
        return [TokenStatus.from_pb(t) for t in self._call("ListTokens", pb.ListTokensRequest()).tokens]

    def revoke_token(self, name: str) -> TokenStatus:
        """Revoke a token: every call with it fails from now on (idempotent)."""
        return TokenStatus.from_pb(self._call("RevokeToken", pb.RevokeTokenRequest(name=name)).token)

    def rotate_token(self, name: str) -> tuple[TokenStatus, str]:
        """Give a token a new secret, keeping its name (so its jobs), admin flag and limits; returns it as listed
        and the new secret (shown only here). The old secret fails from the next call on. NotFound for an unknown
        name; a revoked token, or ``admin`` taken from the supervisor's ``security.admin_token_file``, is refused
        (FAILED_PRECONDITION, raised as a RequestRejected subclass) with what to do instead."""
        reply = self._call("RotateToken", pb.RotateTokenRequest(name=name))
        return TokenStatus.from_pb(reply.token), reply.secret

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


@contextlib.contextmanager
def _wrong_state() -> Iterator[None]:
    """For PauseJob and ResumeJob, FAILED_PRECONDITION means the job is not in a state for it."""
    try:
        yield
    except Unsatisfiable as error:
        raise WrongJobState(str(error)) from None


def _submission_traceparent(given: str | None) -> TraceParent:
    """The traceparent a submission sends: a child of ``given`` (the caller's span), else of a valid
    ``$CUMULUS_TRACEPARENT``, else a new trace. An invalid ``given`` is the caller's mistake: InvalidRequest."""
    if given is not None:
        parent = parse_traceparent(given)
        if parent is None:
            raise InvalidRequest(f"traceparent {given[:80]!r} is not a W3C traceparent; expected "
                                 f"00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not all zero")
        return child_traceparent(parent)
    parent = parse_traceparent(os.environ.get(TRACEPARENT_ENV))
    return child_traceparent(parent) if parent is not None else new_traceparent()


# ---- default clients, one per address ---------------------------------------------------------------------------

_clients: dict[ClientConfig, CumulusClient] = {}
_clients_lock = threading.Lock()


def client_for(address: str | None = None) -> CumulusClient:
    """The shared client for ``address`` (default: the client config's, see :mod:`cumulus.client.connection`),
    one per distinct config (address, token, CA...)."""
    config = load_client_config(address)
    with _clients_lock:
        client = _clients.get(config)
        if client is None or client._closed:
            client = _clients[config] = CumulusClient(config=config)
        return client

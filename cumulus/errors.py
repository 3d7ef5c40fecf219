"""The one error tree of Cumulus.

Everything Cumulus raises on purpose derives from :class:`CumulusError`. The split that matters to callers:

* :class:`RequestRejected` - the request itself is wrong or cannot be satisfied (bad input, nothing could ever fit).
  Fixing the request fixes it; an actor that raises one of these replies with it and keeps running.
* :class:`ActorDied` - the actor you were talking to is gone; your request may or may not have been handled.
* :class:`SupervisorGaveUp` - a supervisor exceeded its restart intensity and stopped its children.
* :class:`ConfigError` - a settings file or environment variable is invalid; the message names the key.
* :class:`RemoteError` - a job's own code raised an exception whose type cannot be imported locally.

Some errors live next to the code that raises them and still derive from :class:`CumulusError`, e.g.
``cumulus.local.util.LocalClusterError`` (``cumulus local`` could not set up or tear down the local cluster).
"""

from __future__ import annotations


class CumulusError(Exception):
    """Base class of every error Cumulus raises on purpose."""


class RequestRejected(CumulusError):
    """The request cannot be served as asked; the message says what to change.

    Actors treat this as an answer, not a crash: the caller gets it and the actor keeps running.
    """


class InvalidRequest(RequestRejected):
    """A field of the request is malformed (gRPC ``INVALID_ARGUMENT``)."""


class PackageTooLarge(InvalidRequest):
    """A job package exceeds the size limit; the message names the biggest files in it."""


class NotFound(RequestRejected):
    """The named job, worker or actor does not exist (gRPC ``NOT_FOUND``)."""


class Unsatisfiable(RequestRejected):
    """No worker of the cluster could ever run this request (gRPC ``FAILED_PRECONDITION``)."""


class WrongJobState(RequestRejected):
    """The job is not in a state that allows this: pausing a job that has ended, resuming one that is not
    PAUSED (gRPC ``FAILED_PRECONDITION``); the message says its state."""


class CapacityExhausted(RequestRejected):
    """Nothing is free right now and the request may not wait (gRPC ``RESOURCE_EXHAUSTED``)."""


class AlreadyExists(RequestRejected):
    """An idempotency key was reused for a different request (gRPC ``ALREADY_EXISTS``)."""


class QuotaExceeded(CapacityExhausted):
    """The caller is over one of its limits (running, queued, GPU share, submission rate); the message names the
    limit and when to retry (gRPC ``RESOURCE_EXHAUSTED``). ``retry_after`` is in seconds, when known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Unauthenticated(RequestRejected):
    """No valid token came with the call (missing, unknown or revoked; gRPC ``UNAUTHENTICATED``)."""


class PermissionDenied(RequestRejected):
    """The caller's token may not do this (e.g. token administration without an admin token;
    gRPC ``PERMISSION_DENIED``)."""


class ActorDied(CumulusError):
    """The actor stopped (crashed, was cancelled, or exited) before it answered.

    ``reason`` is the exception that ended the actor, or ``None`` if it stopped normally or was cancelled.
    ``message``, when given, is the whole text instead of the default one. The SDK raises it as
    ``cumulus.ActorDied`` for a method call whose class instance (``actor``: its job id) ended before the call
    returned (cancelled, timed out, its node lost): the call may or may not have run.
    """

    def __init__(self, actor: str, reason: BaseException | None = None, *, message: str | None = None) -> None:
        self.actor = actor
        self.reason = reason
        why = f": {type(reason).__name__}: {reason}" if reason is not None else ""
        super().__init__(message if message is not None else f"actor {actor!r} is not running{why}")


class SupervisorGaveUp(CumulusError):
    """A supervisor saw more than ``max_restarts`` restarts within ``max_seconds`` and stopped all its children.

    ``__cause__`` is the exception of the crash that exceeded the intensity.
    """

    def __init__(self, supervisor: str, restarts: int, seconds: float) -> None:
        self.supervisor = supervisor
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {restarts} restarts within {seconds:g} s"
        )


class ConfigError(CumulusError):
    """A setting is invalid. ``key`` is its dotted name (``grpc.listen``), the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class SupervisorUnavailable(CumulusError):
    """The client could not reach the supervisor (not running, wrong address, or shutting down)."""


class JobFailed(CumulusError):
    """A job ended without a value and without an exception of its own (infrastructure failure, timeout, lost
    node, killed). ``state`` and ``reason`` say what the supervisor reported."""

    def __init__(self, job_id: str, state: str, reason: str = "", detail: str = "") -> None:
        self.job_id = job_id
        self.state = state
        self.reason = reason
        text = f"job {job_id} ended {state}"
        if reason:
            text += f" ({reason})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class JobCancelled(JobFailed):
    """The job was cancelled before it produced a result."""


class CallCancelled(JobCancelled):
    """A method call on a class instance was withdrawn (``CallRef.cancel()``) before it ran. ``job_id`` is the
    instance's job (which goes on serving), ``method`` and ``call_id`` name the call."""

    def __init__(self, job_id: str, method: str, call_id: int, detail: str = "") -> None:
        self.method = method
        self.call_id = call_id
        super().__init__(job_id, "CANCELLED", "call cancelled", detail)
        self.args = (f"call {method}() (#{call_id}) on instance {job_id} was cancelled"
                     + (f": {detail}" if detail else ""),)


class RemoteError(CumulusError):
    """A job raised an exception whose type is not importable here; carries its type name and traceback."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        self.type_name = type_name
        self.remote_traceback = traceback
        super().__init__(f"{type_name}: {message}")

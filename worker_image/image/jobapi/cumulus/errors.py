"""The errors a job sees from the in-job API (``cumulus.ActorDied``, ``cumulus.errors.NotFound``, ...).

They mirror the NAMES and the class tree of the SDK's ``cumulus/errors.py``, so that ``except cumulus.ActorDied``
or ``except cumulus.errors.NotFound`` reads the same in a job and on a laptop; they do NOT mirror the SDK's
constructors. Here every one is made from its message (``NotFound("no instance job-x")``); a few take keyword-only
details the SDK's version carries as attributes (``ActorDied(msg, actor=...)``, ``JobFailed(msg, job_id=...,
state=..., reason=...)``, ``CallCancelled(msg, job_id=..., method=..., call_id=...)``), and :class:`RemoteError`
is, as in the SDK, ``RemoteError(type_name, message, traceback="")``.

An error that leaves the job (a job function that lets ``cumulus.ActorDied`` escape, or one passed to another job)
pickles by reference as ``cumulus.errors.<Name>`` and is rebuilt WITHOUT calling a constructor (its class's
``__new__`` with its args, then its attributes): on the client it becomes the SDK's class of the same name, with
the same text and the attributes the SDK's class has, whatever the two constructors take.

The standard library only; relative imports only (nothing under worker_image/ imports ``cumulus`` absolutely).
"""

from __future__ import annotations

import copyreg
from typing import Any

__all__ = ["ActorDied", "CallCancelled", "CumulusError", "InvalidRequest", "JobCancelled", "JobFailed",
           "NotFound", "PackageTooLarge", "PermissionDenied", "RemoteError", "RemoteTraceback", "RequestRejected",
           "SupervisorUnavailable"]


class CumulusError(Exception):
    """Base class of every error the in-job API raises on purpose."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        # cls.__new__(cls, *args) and the instance's attributes: no constructor runs, so the SDK's class of the same
        # name (other constructor) is rebuilt as well as this one. BaseException.__setstate__ sets each attribute.
        return (copyreg.__newobj__, (type(self), *self.args), dict(self.__dict__))  # type: ignore[attr-defined]


class RequestRejected(CumulusError):
    """The request cannot be served as asked; the message says what to change."""


class InvalidRequest(RequestRejected):
    """A field of the request is malformed (e.g. the arguments of a call cannot be pickled)."""


class PackageTooLarge(InvalidRequest):
    """What was sent exceeds a size limit."""


class NotFound(RequestRejected):
    """The named job or instance does not exist."""


class PermissionDenied(RequestRejected):
    """The job's owner may not do this (e.g. call another user's instance)."""


class ActorDied(CumulusError):
    """The class instance called ended (cancelled, killed, its duration reached, its node lost) before the call
    returned: the call may or may not have run. ``actor`` is the instance's job id; ``reason`` is None (the SDK's
    attribute: the exception that ended an actor of the supervisor's)."""

    def __init__(self, message: str = "", *, actor: str = "") -> None:
        super().__init__(message)
        self.actor = actor
        self.reason: BaseException | None = None


class JobFailed(CumulusError):
    """A job ended without a value and without an exception of its own. ``job_id``, ``state``, ``reason``."""

    def __init__(self, message: str = "", *, job_id: str = "", state: str = "FAILED", reason: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.reason = reason


class JobCancelled(JobFailed):
    """The job was cancelled before it produced a result."""

    def __init__(self, message: str = "", *, job_id: str = "", reason: str = "") -> None:
        super().__init__(message, job_id=job_id, state="CANCELLED", reason=reason)


class CallCancelled(JobCancelled):
    """A method call on a class instance was withdrawn (``CallRef.cancel()``) before it ran. ``job_id`` is the
    instance's job (which goes on serving), ``method`` and ``call_id`` name the call."""

    def __init__(self, message: str = "", *, job_id: str = "", method: str = "", call_id: int = 0) -> None:
        super().__init__(message, job_id=job_id, reason="call cancelled")
        self.method = method
        self.call_id = call_id


class SupervisorUnavailable(CumulusError):
    """The job's link to the supervisor broke (or never came up) before the call's reply: the call may or may not
    have run."""


class RemoteError(CumulusError):
    """A method raised an exception that cannot be unpickled here; carries its type name, message and traceback
    (``type_name``, ``remote_traceback``). Its text is ``"<type_name>: <message>"``."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = traceback


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception a method raised: its text is the instance's traceback."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb

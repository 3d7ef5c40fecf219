"""A method call on a class instance, made inside a job: :class:`CallRef` (what ``h.method.remote(...)`` returns),
how each way a call can end becomes its value or an exception, and ``cumulus.get``.

The in-job twin of the SDK's ``cumulus/client/callref.py``; the calls travel over the job's calls socket
(``cumulus._calls``, whose docstring is the contract with the supervisor). Standalone: the stdlib, and cloudpickle
and msgpack (the runner's) imported on the first reply; relative imports only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, overload

from .. import _calls
from ..errors import (ActorDied, CallCancelled, CumulusError, InvalidRequest, NotFound, PackageTooLarge,
                      PermissionDenied, RemoteError, RemoteTraceback, RequestRejected, SupervisorUnavailable)

T = TypeVar("T")

__all__ = ["CallRef", "get"]

# The ``error`` names a "refused" reply may carry; another name is a CumulusError.
REFUSALS: dict[str, type[CumulusError]] = {cls.__name__: cls for cls in (
    CumulusError, RequestRejected, InvalidRequest, PackageTooLarge, NotFound, PermissionDenied, ActorDied,
    SupervisorUnavailable)}


class CallRef(Generic[T]):
    """One method call on a class instance (``ref = h.method.remote(...)``): its outcome once it ended.

    ``ref.result(timeout)`` (or ``cumulus.get(ref)``) returns what the method returned, or raises: the method's own
    exception (its original type when it can be unpickled here, else :class:`~cumulus.errors.RemoteError`), the
    instance's traceback as ``__cause__``; ``cumulus.ActorDied`` (the instance ended first: the call may or may not
    have run); ``cumulus.CallCancelled`` (withdrawn by :meth:`cancel` before it ran); what the supervisor refused
    it with (``NotFound``, ``PermissionDenied``, ``InvalidRequest``, ...); ``SupervisorUnavailable`` (the link to
    the supervisor broke before the reply: it may or may not have run); ``TimeoutError`` after ``timeout`` seconds
    (default: the handle's timeout; the call goes on).
    """

    def __init__(self, job_id: str, method: str, default_timeout: float | None = None) -> None:
        self.job_id = job_id
        self.method = method
        self.call_id = 0  # set when it is queued: unique in the process
        self._default_timeout = default_timeout
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reply: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._decoded: tuple[bool, Any] | None = None  # (ok, value or exception), once a reply was read
        self._frame: bytes | None = None  # the transport's: the call frame until sent
        self._link: Any = None  # the transport's: the link it was sent on

    def __repr__(self) -> str:
        state = "done" if self._event.is_set() else "pending"
        return f"CallRef({self.job_id!r}, {self.method!r}, #{self.call_id}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError("a CallRef cannot be pickled: pass the instance's handle (it pickles) and call it there")

    def done(self) -> bool:
        """True once the call ended (returned, raised, was cancelled, refused, or its instance or link died)."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> T:
        """Block until the call ends; its value, or the exception it ended with (see the class)."""
        timeout = self._default_timeout if timeout is None else timeout
        if not self._event.wait(timeout):
            raise TimeoutError(f"call {self.method}() (#{self.call_id}) on instance {self.job_id} has not returned "
                               f"after {timeout or 0:g} s; it goes on")
        if self._error is not None:
            raise self._error
        with self._lock:
            if self._decoded is None:
                assert self._reply is not None  # done without an error: ended by a reply
                self._decoded = _decode(self._reply, self)
            ok, value = self._decoded
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def cancel(self) -> bool:
        """Withdraw the call: one not sent yet ends :class:`~cumulus.errors.CallCancelled` at once; for one sent,
        a cancel goes to the supervisor (it ends ``CallCancelled`` unless it already ran, then as it does). False
        if the call had ended already. Never stops the instance."""
        return _calls.cancel(self, CallCancelled(
            f"call {self.method}() (#{self.call_id}) on instance {self.job_id} was cancelled before it was sent",
            job_id=self.job_id, method=self.method, call_id=self.call_id))

    def _end(self, reply: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._reply, self._error = reply, error
            self._event.set()


def _decode(reply: dict[str, Any], ref: CallRef[Any]) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)`` for a reply frame."""
    end, message = reply["end"], str(reply.get("message") or "")
    name = f"{ref.method}() (#{ref.call_id}) on instance {ref.job_id}"
    if end == "returned":
        return _decode_envelope(reply.get("envelope"), name)
    if end == "instance_died":
        return False, ActorDied(message or f"instance {ref.job_id} ended before {ref.method}() returned",
                                actor=ref.job_id)
    if end == "cancelled":
        return False, CallCancelled(f"call {name} was cancelled" + (f": {message}" if message else ""),
                                    job_id=ref.job_id, method=ref.method, call_id=ref.call_id)
    if end == "refused":
        cls = REFUSALS.get(str(reply.get("error")), CumulusError)
        return False, cls(message or f"the supervisor refused {name}")
    return False, CumulusError(f"call {name} ended in a way this job does not know ({end!r}): {message}")


def _decode_envelope(envelope: Any, name: str) -> tuple[bool, Any]:
    import cloudpickle
    import msgpack

    try:
        env = msgpack.unpackb(envelope, raw=False)
        if not isinstance(env, dict) or env.get("format") != 1 or not isinstance(env.get("ok"), bool):
            raise ValueError("not a result envelope of format 1")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the call's result is unreadable
        return False, RemoteError("cumulus.InvalidResult", f"the result of {name} cannot be read: "
                                                           f"{type(exc).__name__}: {exc}")
    if env["ok"]:
        return True, cloudpickle.loads(env.get("value"))
    exc_type, exc_message = str(env.get("exc_type") or "Exception"), str(env.get("exc_message") or "")
    tb = str(env.get("traceback") or "")
    error: BaseException | None = None
    if env.get("exc_pickle"):
        try:
            loaded = cloudpickle.loads(env["exc_pickle"])
            error = loaded if isinstance(loaded, BaseException) else None
        except Exception:  # noqa: BLE001 - its type is not importable here, or it does not unpickle: fall back
            error = None
    if error is None:
        error = RemoteError(exc_type, exc_message, tb)
    error.__cause__ = RemoteTraceback(tb or f"{exc_type}: {exc_message}")
    return False, error


@overload
def get(refs: CallRef[T], timeout: float | None = None) -> T: ...
@overload
def get(refs: Sequence[CallRef[T]], timeout: float | None = None) -> list[T]: ...


def get(refs: CallRef[T] | Sequence[CallRef[T]], timeout: float | None = None) -> T | list[T]:
    """The value of one CallRef, or the list of values of a list of them (blocking; ``timeout`` in total). Raises
    the first failed call's exception (in list order) or ``TimeoutError``."""
    if isinstance(refs, CallRef):
        return refs.result(timeout)
    if not isinstance(refs, Sequence) or not all(isinstance(r, CallRef) for r in refs):
        raise TypeError(f"cumulus.get takes a CallRef or a list of them (inside a job), got {type(refs).__name__}")
    deadline = None if timeout is None else time.monotonic() + timeout
    values: list[T] = []
    for ref in refs:
        values.append(ref.result(None if deadline is None else max(0.0, deadline - time.monotonic())))
    return values

"""A method call on a class instance, on the client: :class:`CallRef`, the future ``h.method.remote(...)`` returns,
and how each way a call can end (the supervisor's ``InstanceReply``) becomes its value or an exception.

A CallRef is made and resolved by the client's call stream (:mod:`cumulus.client.call_stream`); it has no thread
of its own. It behaves like a :class:`~cumulus.client.jobref.JobRef` where both make sense (``result``,
``await ref``, ``done``, ``cancel``; ``cumulus.get`` and ``cumulus.wait`` take either).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Generic, TypeVar, cast

import grpc

from cumulus.client.aio import Completion, wait_done_async
from cumulus.client.results import Outcome, decode_result
from cumulus.errors import ActorDied, CallCancelled, CumulusError
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.status import error_for

if TYPE_CHECKING:
    from cumulus.client.call_stream import CallStream

T_co = TypeVar("T_co", covariant=True)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class CallRef(Completion, Generic[T_co]):
    """One method call on a class instance (``ref = h.method.remote(...)``): its outcome once it ended.

    ``ref.result(timeout)`` (or ``cumulus.get(ref)``) returns what the method returned, or raises:

    * the method's own exception, its original type, with the instance's traceback as ``__cause__``; the instance
      goes on serving;
    * ``AttributeError`` when the instance has no such public method;
    * :class:`cumulus.ActorDied` when the instance ended (cancelled, ``cumulus.kill``, its duration reached, its
      node lost) before the call returned: the call may or may not have run;
    * :class:`~cumulus.errors.CallCancelled` (a :class:`~cumulus.errors.JobCancelled`) after :meth:`cancel` withdrew
      it before it ran;
    * what the supervisor refused it with (``NotFound``: no such instance; ``PermissionDenied``: another user's;
      ``InvalidRequest``: not an instance, or arguments too large), or ``SupervisorUnavailable`` when the call
      stream broke (supervisor restart, network) before the call ended: it may or may not have run;
    * ``TimeoutError`` after ``timeout`` seconds (the call goes on).
    """

    def __init__(self, stream: CallStream, job_id: str, method: str, call_id: int,
                 default_timeout: float | None = None) -> None:
        self.job_id = job_id
        """The instance's job id."""
        self.method = method
        self.call_id = call_id
        """Unique on its client's call stream (not across clients)."""
        self._stream = stream
        self._default_timeout = default_timeout
        super().__init__()
        self._reply: pb.InstanceReply | None = None
        self._error: BaseException | None = None
        self._outcome: Outcome | None = None

    def __repr__(self) -> str:
        state = "done" if self._done.is_set() else "pending"
        return f"CallRef({self.job_id!r}, {self.method!r}, #{self.call_id}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError("a CallRef cannot be pickled: pass the instance's handle (it pickles) and call it there")

    def done(self) -> bool:
        """True once the call ended (returned, raised, was cancelled, refused, or its instance or stream died)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> T_co:
        """Block until the call ends; its value, or the exception it ended with (see the class). This blocks the
        calling thread: inside a running event loop, use ``await ref.result_async()``."""
        timeout = self._default_timeout if timeout is None else timeout
        if not self._done.wait(timeout):
            raise self._timed_out(timeout)
        return self._outcome_value()

    async def result_async(self, timeout: float | None = None) -> T_co:
        """:meth:`result` without blocking the event loop (asyncio or Trio)."""
        timeout = self._default_timeout if timeout is None else timeout
        if not await wait_done_async(self, timeout):
            raise self._timed_out(timeout)
        return self._outcome_value()

    def __await__(self) -> Generator[Any, None, T_co]:
        return self.result_async().__await__()

    def cancel(self) -> bool:
        """Withdraw the call: if it has not started on the instance yet, it ends with
        :class:`~cumulus.errors.CallCancelled`; one that already runs or returned ends as it does. Returns False if
        the call had ended already (nothing was sent). Never stops the instance (``cumulus.kill`` does)."""
        if self._done.is_set():
            return False
        return self._stream.cancel(self)

    # ---- internals (the call stream's) ---------------------------------------------------------------------

    def _timed_out(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"call {self.method}() (#{self.call_id}) on instance {self.job_id} has not returned "
                            f"after {timeout or 0:g} s; it goes on")

    def _outcome_value(self) -> T_co:
        if self._error is not None:
            raise self._error
        reply = self._reply
        assert reply is not None  # done, without an error: resolved with a reply
        if reply.end == pb.CALL_RETURNED:
            with self._lock:
                if self._outcome is None:
                    self._outcome = decode_result(reply.envelope)
            return cast(T_co, self._outcome.result())  # the method's value, or its exception re-raised
        raise reply_error(reply, self.job_id, self.method)

    def _resolve(self, reply: pb.InstanceReply) -> None:
        self._end(reply=reply)

    def _fail(self, error: BaseException) -> None:
        self._end(error=error)

    def _end(self, reply: pb.InstanceReply | None = None, error: BaseException | None = None) -> None:
        def record() -> None:
            self._reply, self._error = reply, error

        self._complete(record)


def reply_error(reply: pb.InstanceReply, job_id: str, method: str) -> CumulusError:
    """The exception of a call that did not return (``reply.end`` other than CALL_RETURNED)."""
    if reply.end == pb.CALL_INSTANCE_DIED:
        return ActorDied(job_id, message=reply.message or f"instance {job_id} ended before {method}() returned")
    if reply.end == pb.CALL_CANCELLED:
        return CallCancelled(job_id, method, reply.call_id, reply.message)
    if reply.end == pb.CALL_REFUSED:
        code = _STATUS_CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
        message = reply.message or f"the supervisor refused {method}() on instance {job_id}"
        if code == grpc.StatusCode.UNAVAILABLE:  # the supervisor answered: its instance is what is unavailable
            return ActorDied(job_id, message=message)
        return error_for(code, message)
    return CumulusError(f"call {method}() on instance {job_id} ended in a way this client does not know "
                        f"({reply.end}): {reply.message}")


__all__ = ["CallRef", "reply_error"]

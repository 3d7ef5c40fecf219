"""Class-instance handles inside a job: the in-job :class:`InstanceHandle`, :func:`instance` and :func:`_restore`.

    @cumulus.remote
    def use(counter):                                  # counter: a handle made on the laptop by Counter.remote()
        return cumulus.get(counter.incr.remote(5))     # the call goes through the supervisor to the instance

The SDK's handle (``cumulus/client/remote_class.py``) pickles as
``cumulus.client.remote_class._restore(job_id, address, {"timeout": t}, class_name, methods_or_None)``; in a job that
name resolves HERE, so an unpickled handle is this module's. It has no network: its calls go over the job's calls
socket (``cumulus._calls``, made when the first handle is), the address is only kept so that the handle pickles
again to the same form (and can be passed on to another job, or back to the client). Calls from one thread on one
handle are sent in the order made; each returns a :class:`~cumulus.client.callref.CallRef`.
"""

from __future__ import annotations

from typing import Any

from .. import _calls
from ..errors import InvalidRequest
from .callref import CallRef

__all__ = ["InstanceHandle", "RemoteMethod", "instance"]


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


class RemoteMethod:
    """``handle.method``: call it with ``.remote(*args, **kwargs)``."""

    def __init__(self, handle: InstanceHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> CallRef[Any]:
        """Queue the call on the instance; its :class:`~cumulus.client.callref.CallRef` at once."""
        return self._handle._call(self._name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"a method of a remote instance is called with .remote(...): "
                        f"{self._handle._class_name or 'instance'}.{self._name}.remote(...)")

    def __repr__(self) -> str:
        return f"<remote method {self._handle._class_name or '?'}.{self._name} of instance {self._handle.job_id}>"


class InstanceHandle:
    """A class instance running as a job, seen from inside another job: ``h.method.remote(*args, **kwargs)``
    returns a :class:`~cumulus.client.callref.CallRef`.

    ``h.job_id``, ``h.options(timeout=...)`` (a handle whose calls' ``result()`` waits that long by default). A
    name starting with ``_`` is never a remote method; a handle that knows its class raises ``AttributeError`` at
    once for a name that is not one of its public methods. As in the SDK, the handle's own names (``job_id``,
    ``address``, ``options``, ``status``, ``cancel``) hide methods of the same name; ``status()`` and ``cancel()``
    (stopping the instance) are not available inside a job and raise :class:`~cumulus.errors.InvalidRequest`.
    """

    def __init__(self, job_id: str, *, address: str | None = None, class_name: str = "",
                 methods: frozenset[str] | None = None, timeout: float | None = None) -> None:
        self.job_id = job_id
        self.address = address  # not used here (no network): kept for pickling
        self._class_name = class_name
        self._methods = methods
        self._timeout = timeout
        _calls.ensure_listening()

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._methods is not None and name not in self._methods:
            raise AttributeError(f"{self._class_name} has no public method {name!r} (it has: "
                                 f"{', '.join(sorted(self._methods)) or 'none'})")
        return RemoteMethod(self, name)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallRef[Any]:
        import cloudpickle  # the runner's (lib/)

        try:
            data = cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=5)
        except Exception as error:  # noqa: BLE001 - the message is what the user needs
            raise InvalidRequest(f"cannot pickle the arguments of {self._class_name or 'instance'}.{method}(...): "
                                 f"{type(error).__name__}: {error}") from error
        ref: CallRef[Any] = CallRef(self.job_id, method, self._timeout)
        _calls.submit(ref, {"job_id": self.job_id, "method": method, "args": data})
        return ref

    def options(self, *, timeout: float | None = None) -> InstanceHandle:
        """The same instance, with ``timeout`` the default seconds its calls' ``result()`` waits (None: forever)."""
        return InstanceHandle(self.job_id, address=self.address, class_name=self._class_name,
                              methods=self._methods, timeout=_check_timeout(timeout))

    def status(self) -> Any:
        raise InvalidRequest("an instance's status cannot be asked from inside a job (only its methods called)")

    def cancel(self) -> Any:
        raise InvalidRequest("an instance cannot be stopped from inside a job (only its methods called); a call is "
                             "withdrawn with CallRef.cancel()")

    def __reduce__(self) -> Any:
        return (_restore, (self.job_id, self.address, {"timeout": self._timeout}, self._class_name,
                           None if self._methods is None else sorted(self._methods)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceHandle) and (other.job_id, other.address) == (self.job_id, self.address)

    def __hash__(self) -> int:
        return hash((self.job_id, self.address))

    def __repr__(self) -> str:
        return f"<{self._class_name or 'remote'} instance {self.job_id} (called from this job)>"


def _restore(job_id: str, address: str | None, options: dict[str, Any], class_name: str,
             methods: list[str] | None) -> InstanceHandle:
    """What a pickled handle (the SDK's or this one) is rebuilt with in a job."""
    return InstanceHandle(job_id, address=address, class_name=class_name,
                          methods=None if methods is None else frozenset(methods),
                          timeout=(options or {}).get("timeout"))


def instance(job_id: str, address: str | None = None, *, timeout: float | None = None) -> InstanceHandle:
    """A handle of the running instance ``job_id``, from inside a job (``address``, the SDK's argument, is ignored:
    a job reaches the supervisor only through its calls socket). Nothing is asked here: a job that is not an
    instance, or not its owner's, refuses the calls (``NotFound``, ``PermissionDenied``, ``InvalidRequest``)."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequest(f"instance() takes a job id, got {job_id!r}")
    return InstanceHandle(job_id, address=address, timeout=_check_timeout(timeout))

"""``@remote`` on a class: :class:`RemoteClass` (made by :func:`cumulus.remote`), the :class:`InstanceHandle` of
a class instance running as a job, and :func:`instance` / :func:`kill`.

    @cumulus.remote(gpu=0.5, max_restarts=1)
    class Counter:
        def __init__(self, start=0):
            self.n = start

        def incr(self, by=1):
            self.n += by
            return self.n

    counter = Counter.remote(10)              # one job: it makes Counter(10), then serves its methods
    ref = counter.incr.remote(5)              # a CallRef: the call is queued at the supervisor
    assert cumulus.get(ref) == 15
    cumulus.kill(counter)                     # stops the job; later calls raise cumulus.ActorDied

The calls of one handle run on the instance one at a time, in the order ``.remote()`` was called; they travel over
one stream per client (:mod:`cumulus.client.call_stream`). A handle pickles as its job id, address and class name
only, so it can be passed to another process (or made from an id with :func:`instance`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

import cloudpickle

from cumulus.client.aio import run_blocking
from cumulus.client.call_stream import send_call
from cumulus.client.callref import CallRef
from cumulus.client.client import client_for
from cumulus.client.jobref import JobRef
from cumulus.client.options import RemoteOptions, normalize_options
from cumulus.client.types import CancelResult, JobInfo
from cumulus.errors import InvalidRequest

if TYPE_CHECKING:
    from cumulus.client.client import CumulusClient

T = TypeVar("T")

__all__ = ["InstanceHandle", "RemoteClass", "RemoteMethod", "instance", "kill", "public_methods"]


def public_methods(cls: type) -> frozenset[str]:
    """The names a handle of ``cls`` may call: its public callables (methods, class and static methods)."""
    names = set()
    for name in dir(cls):
        if name.startswith("_"):
            continue
        try:
            if callable(getattr(cls, name)):
                names.add(name)
        except Exception:  # noqa: BLE001, S112 - a class attribute that raises when read is no method
            continue
    return frozenset(names)


class RemoteClass(Generic[T]):
    """A class whose instances run as Cumulus jobs. Made by ``@cumulus.remote`` on a class.

    * ``C.remote(*args, **kwargs)`` submits ONE job that makes ``C(*args, **kwargs)`` and then serves its public
      methods; it returns an :class:`InstanceHandle` as soon as the supervisor accepted the job (the instance may
      still be starting: calls wait at the supervisor until it is ready). ``await C.remote_async(...)`` from
      asyncio or Trio code.
    * ``C.options(**opts)`` returns a NEW RemoteClass with those options changed.
    * ``C(*args, **kwargs)`` makes an instance locally, right here.

    Options: those of a function (see :class:`~cumulus.client.remote.RemoteFunction`: ``gpu``, ``duration`` - how
    long the instance may live -, ``requirements``, ``env``, ``secret_env``, ``image``, ``files``, ...; ``timeout``
    is the default of its calls' ``result()``), and ``max_restarts`` (how often the instance is made again after
    it died, e.g. its node lost; default 0). ``retries``, ``retry_exceptions`` and ``resume_on_timeout`` are
    refused (:class:`~cumulus.errors.InvalidRequest`): an instance is restarted, not re-run.
    """

    def __init__(self, cls: type[T], options: Mapping[str, Any] | None = None) -> None:
        if isinstance(cls, RemoteClass):
            options = {**cls._cumulus_options, **(options or {})}
            cls = cls._cumulus_class
        if not inspect.isclass(cls):
            raise TypeError(f"RemoteClass needs a class, got {type(cls).__name__}")
        normalize_options(dict(options or {}), for_class=True)  # fail at the decoration, not at .remote()
        self._cumulus_class: type[T] = cls
        self._cumulus_options: dict[str, Any] = dict(options or {})
        functools.update_wrapper(self, cls, updated=())  # not the class's __dict__: its methods are not ours

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        """Make an instance locally (not as a job). Use ``.remote(...)`` to run it on the cluster."""
        return self._cumulus_class(*args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> InstanceHandle:
        """Submit the instance ``C(*args, **kwargs)`` as a job; its handle once the supervisor accepted it."""
        client = client_for(self._cumulus_options.get("address"))
        ref: JobRef[Any] = client.submit_call(self._cumulus_class, args, kwargs, instance=True,
                                              **self._cumulus_options)
        timeout = self._cumulus_options.get("timeout")
        return InstanceHandle(ref.job_id, client=client, class_name=self._cumulus_class.__qualname__,
                              methods=public_methods(self._cumulus_class), timeout=timeout, job=ref)

    async def remote_async(self, *args: Any, **kwargs: Any) -> InstanceHandle:
        """:meth:`remote` for async code (the submission runs in a worker thread; see ``RemoteFunction``)."""
        return await run_blocking(functools.partial(self.remote, *args, **kwargs))

    def options(self, **options: Unpack[RemoteOptions]) -> RemoteClass[T]:
        """A copy with ``options`` changed (this one is unchanged)."""
        return RemoteClass(self._cumulus_class, {**self._cumulus_options, **options})

    @property
    def remote_options(self) -> dict[str, Any]:
        return dict(self._cumulus_options)

    def __repr__(self) -> str:
        from cumulus.client.remote import _shown

        opts = ", ".join(f"{k}={_shown(k, v)}" for k, v in self._cumulus_options.items())
        return f"<remote class {self._cumulus_class.__qualname__}{' (' + opts + ')' if opts else ''}>"

    def __reduce__(self) -> Any:
        # As a RemoteFunction: (class, options), never secret_env (it would be stored in clear in a package).
        options = {k: v for k, v in self._cumulus_options.items() if k != "secret_env"}
        return (RemoteClass, (self._cumulus_class, options))


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
    """A class instance running as a job: ``h.method.remote(*args, **kwargs)`` returns a
    :class:`~cumulus.client.callref.CallRef`; calls from one handle run in the order they were made.

    ``h.job_id``, ``h.status()`` (its job's :class:`~cumulus.client.types.JobInfo`), ``h.cancel()`` /
    ``cumulus.kill(h)`` (stops the instance; calls not returned yet raise :class:`cumulus.ActorDied`),
    ``h.options(timeout=...)`` (a handle whose calls' ``result()`` waits that long by default). A name starting with
    ``_`` is never a remote method; a handle that knows its class raises ``AttributeError`` at once for a name that
    is not one of its public methods (one made from a bare id leaves that to the instance). The handle's own names
    (``job_id``, ``address``, ``status``, ``cancel``, ``options``) hide methods of the same name.

    It pickles as (job id, address, default timeout, class name and method names): no client, no thread. Unpickled
    in another process it talks through that process's shared client for the address.
    """

    def __init__(self, job_id: str, *, address: str | None = None, client: CumulusClient | None = None,
                 class_name: str = "", methods: frozenset[str] | None = None, timeout: float | None = None,
                 job: JobRef[Any] | None = None) -> None:
        self.job_id = job_id
        self.address = client.address if client is not None else address
        self._client_obj = client
        self._class_name = class_name
        self._methods = methods
        self._timeout = timeout
        self._job = job  # the submission's JobRef: follows the job, printing its output (log_to_driver)

    def _client(self) -> CumulusClient:
        # A handle made from an id or unpickled talks through the shared client for its address; one given a client
        # keeps it (closed, its calls fail: a shared client could hold another token).
        if self._client_obj is None:
            self._client_obj = client_for(self.address)
        return self._client_obj

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._methods is not None and name not in self._methods:
            raise AttributeError(f"{self._class_name} has no public method {name!r} (it has: "
                                 f"{', '.join(sorted(self._methods)) or 'none'})")
        return RemoteMethod(self, name)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallRef[Any]:
        try:
            data = cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=5)
        except Exception as error:  # noqa: BLE001 - the message is what the user needs
            raise InvalidRequest(f"cannot pickle the arguments of {self._class_name or 'instance'}.{method}(...): "
                                 f"{type(error).__name__}: {error}") from error
        return send_call(self._client(), self.job_id, method, data, self._timeout)

    def status(self) -> JobInfo:
        """The instance's job status (state, worker, calls so far)."""
        return self._client().status(self.job_id)

    def cancel(self) -> CancelResult:
        """Stop the instance: its job is cancelled (returns once its container is stopped and its partition
        released); calls not returned yet, and later ones, raise :class:`cumulus.ActorDied`."""
        return self._client().cancel(self.job_id, until_stopped=True)

    def options(self, *, timeout: float | None = None) -> InstanceHandle:
        """The same instance, with ``timeout`` the default seconds its calls' ``result()`` waits (None: forever)."""
        normalize_options({"timeout": timeout})
        return InstanceHandle(self.job_id, address=self.address, client=self._client_obj,
                              class_name=self._class_name, methods=self._methods, timeout=timeout, job=self._job)

    def __reduce__(self) -> Any:
        return (_restore, (self.job_id, self.address, {"timeout": self._timeout}, self._class_name,
                           None if self._methods is None else sorted(self._methods)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceHandle) and (other.job_id, other.address) == (self.job_id, self.address)

    def __hash__(self) -> int:
        return hash((self.job_id, self.address))

    def __repr__(self) -> str:
        return f"<{self._class_name or 'remote'} instance {self.job_id} at {self.address or 'the default address'}>"


def _restore(job_id: str, address: str | None, options: dict[str, Any], class_name: str,
             methods: list[str] | None) -> InstanceHandle:
    return InstanceHandle(job_id, address=address, class_name=class_name,
                          methods=None if methods is None else frozenset(methods), timeout=options.get("timeout"))


def instance(job_id: str, address: str | None = None, *, client: CumulusClient | None = None,
             timeout: float | None = None) -> InstanceHandle:
    """A handle of the running instance ``job_id`` (made by ``C.remote(...)``, by anyone with the same token), on
    ``client`` or the shared client for ``address``. Nothing is asked here: a job that is not an instance, or
    not yours, refuses the calls (``NotFound``, ``PermissionDenied``, ``InvalidRequest``); not knowing the class,
    the handle takes any public name and the instance answers ``AttributeError`` for one it does not have."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequest(f"instance() takes a job id, got {job_id!r}")
    normalize_options({"timeout": timeout})
    return InstanceHandle(job_id, address=address, client=client, timeout=timeout)


def kill(handle: InstanceHandle) -> CancelResult:
    """Stop the instance of ``handle`` (``handle.cancel()``): its job is cancelled; its calls that have not
    returned, and any later ones, raise :class:`cumulus.ActorDied`."""
    if not isinstance(handle, InstanceHandle):
        raise TypeError(f"cumulus.kill takes an instance handle (from C.remote(...) or cumulus.instance(job_id)), "
                        f"got {type(handle).__name__}")
    return handle.cancel()

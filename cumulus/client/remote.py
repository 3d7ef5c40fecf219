"""``@remote``, ``get`` and ``wait``: the Ray-like face of the SDK.

    import cumulus

    @cumulus.remote(gpu=0.25, duration=600, requirements=["numpy"])
    def train(x):
        ...

    ref = train.remote(3)             # submitted; returns a JobRef once the supervisor accepted it
    value = cumulus.get(ref)          # blocks; re-raises the job's exception with its remote traceback
    train(3)                          # a plain call runs locally, in this process

    ref = await train.remote_async(3)           # from asyncio or Trio code: the loop keeps running
    value = await ref.result_async(timeout=60)

On a class, ``@remote`` makes a :class:`~cumulus.client.remote_class.RemoteClass`: ``Model.remote(...)`` starts one
job holding the instance and returns its handle; ``handle.method.remote(...)`` returns a ``CallRef``, which
``get`` and ``wait`` take like a JobRef.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, Unpack, cast, overload

from cumulus.client.aio import run_blocking
from cumulus.client.callref import CallRef
from cumulus.client.client import client_for
from cumulus.client.jobref import JobRef
from cumulus.client.options import RemoteOptions, normalize_options
from cumulus.client.remote_class import RemoteClass

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
C = TypeVar("C")
Ref = JobRef[R] | CallRef[R]  # what get() and wait() take: a job's or a method call's future
_REFS = (JobRef, CallRef)


class RemoteFunction(Generic[P, R_co]):
    """A function that can run as a Cumulus job. Made by :func:`remote`.

    ``RemoteFunction[P, R]`` wraps a function ``(P) -> R``: ``f(...)`` returns ``R``, ``f.remote(...)`` a
    ``JobRef[R]``; both take the function's own arguments.

    * ``f.remote(*args, **kwargs)`` submits a job and returns a :class:`JobRef`; ``await f.remote_async(...)``
      does the same from asyncio or Trio code without blocking the event loop.
    * ``f.options(**opts)`` returns a NEW RemoteFunction with those options changed; ``f`` is unchanged.
    * ``f(*args, **kwargs)`` runs the function locally, right here (handy in tests and for debugging). Use
      ``.remote()`` to run it on the cluster.

    Options: ``gpu`` (share of one device 0 < g <= 1, or whole devices 1..8; ``gpu_memory`` is an alias), ``duration``
    (seconds the job may run; 0/None: the supervisor's default), ``requirements`` (PEP 508 strings installed in the
    job's container), ``env`` (extra environment variables), ``retries`` (infrastructure retries), ``retry_exceptions``,
    ``resume_on_timeout`` (at ``duration`` the job is stopped and runs again from its last checkpoint,
    :mod:`cumulus.checkpoint`, instead of failing), ``timeout`` (default seconds :meth:`JobRef.result` waits; None:
    forever), ``address`` (the supervisor; default :func:`cumulus.config.default_address`), ``name``, ``priority``,
    ``max_queue_seconds``, ``secret_env`` (like ``env``, for values that are never stored in clear nor logged: not in
    the package, not in the Swarm service, not in the history; not pickled with this function either), ``log_to_driver``
    (print the job's output here; default on unless ``CUMULUS_QUIET_LOGS=1``). A bad option (an unknown name, a value of
    the wrong type or out of range) raises :class:`~cumulus.errors.InvalidRequest` at once: at the decoration or at
    ``.options(...)``.

    Code and data (Ray's runtime_env names; :mod:`cumulus.client.runtime_env`): every module the function reaches
    that is not installed code is shipped wherever its file is; ``py_modules`` (a list of modules, module names or
    paths of ``.py`` files and package directories) ships more, importable under the same names; ``working_dir``
    (a directory) becomes the job's working directory, its modules importable; ``files`` (paths from the current
    directory, or absolute; directories recursive) land in that working directory with their relative paths. Paths
    are read when the job is submitted (a missing one raises :class:`~cumulus.errors.InvalidRequest` then), within
    the package's size limits (:class:`~cumulus.errors.PackageTooLarge`).

    Software: ``image`` (``"registry.example.com/team/torch:2.4"``) runs the job in your own image instead of the
    worker image: any image with a ``python3`` of this client's minor version, from a registry the cluster allows
    (Cumulus mounts its runner into it). ``index_url`` installs ``requirements`` from a private package index the
    cluster allows; its credentials are stored per user with ``cumulus index login URL``, never sent with a job.
    """

    def __init__(self, func: Callable[P, R_co], options: Mapping[str, Any] | None = None) -> None:
        if not callable(func):
            raise TypeError(f"@remote needs a function, got {type(func).__name__}")
        if isinstance(func, RemoteFunction):
            options = {**func._cumulus_options, **(options or {})}
            func = func._cumulus_function
        normalize_options(dict(options or {}))  # fail at the decoration, not at the first .remote()
        self._cumulus_function: Callable[P, R_co] = func
        self._cumulus_options: dict[str, Any] = dict(options or {})
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the function locally (not as a job). Use ``.remote(...)`` to run it on the cluster."""
        return self._cumulus_function(*args, **kwargs)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> JobRef[R_co]:
        """Submit ``f(*args, **kwargs)`` as a job; returns its JobRef as soon as the supervisor accepted it."""
        client = client_for(self._cumulus_options.get("address"))
        return client.submit_call(self._cumulus_function, args, kwargs, **self._cumulus_options)

    async def remote_async(self, *args: P.args, **kwargs: P.kwargs) -> JobRef[R_co]:
        """:meth:`remote` for async code: ``ref = await f.remote_async(...)`` under asyncio (notebooks, async
        services) or Trio; the event loop keeps running while the call is packed and the supervisor accepts it.

        The submission (blocking gRPC) runs in a worker thread started with the running library's own primitive:
        ``trio.to_thread.run_sync`` under Trio, ``asyncio.to_thread`` under asyncio (told apart with sniffio when
        it is installed, else asyncio). It raises what :meth:`remote` raises. The arguments are pickled in that
        thread: do not change them before the ``await`` returns. Cancelling the awaiting task does not withdraw a
        submission already under way: the job may still be accepted (``cumulus jobs`` lists it). Wait for the
        result with ``await ref.result_async(timeout=...)`` (or ``await ref``).
        """
        return await run_blocking(functools.partial(self.remote, *args, **kwargs))

    def options(self, **options: Unpack[RemoteOptions]) -> RemoteFunction[P, R_co]:
        """A copy with ``options`` changed (this function is unchanged)."""
        return RemoteFunction(self._cumulus_function, {**self._cumulus_options, **options})

    @property
    def remote_options(self) -> dict[str, Any]:
        return dict(self._cumulus_options)

    def __repr__(self) -> str:
        name = getattr(self._cumulus_function, "__qualname__", repr(self._cumulus_function))
        opts = ", ".join(f"{k}={_shown(k, v)}" for k, v in self._cumulus_options.items())
        return f"<remote function {name}{' (' + opts + ')' if opts else ''}>"

    def __reduce__(self) -> Any:
        # Shipped inside jobs as (function, options): no client, no threads, and no secret_env: its values would
        # be stored in clear in the job's package (a job that submits this function gives its own secret_env).
        options = {k: v for k, v in self._cumulus_options.items() if k != "secret_env"}
        return (RemoteFunction, (self._cumulus_function, options))


def _shown(option: str, value: Any) -> str:
    """How an option appears in a repr: ``secret_env`` by its names only (its values are never shown)."""
    if option == "secret_env" and isinstance(value, Mapping):
        return "{" + ", ".join(f"{name!r}: '***'" for name in value) + "}"
    return repr(value)


class RemoteDecorator(Protocol):
    """What ``remote(**options)`` returns: a decorator that makes a :class:`RemoteFunction` (or, for a class, a
    :class:`~cumulus.client.remote_class.RemoteClass`)."""

    @overload
    def __call__(self, func: type[C], /) -> RemoteClass[C]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, func: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def remote(func: type[C], /) -> RemoteClass[C]: ...  # type: ignore[overload-overlap]
@overload
def remote(func: Callable[P, R], /) -> RemoteFunction[P, R]: ...
@overload
def remote(func: None = None, /, **options: Unpack[RemoteOptions]) -> RemoteDecorator: ...


def remote(func: Callable[P, R] | type[C] | None = None, /, **options: Unpack[RemoteOptions]
           ) -> RemoteFunction[P, R] | RemoteClass[C] | RemoteDecorator:
    """Make a function runnable as a Cumulus job: ``@remote`` or ``@remote(gpu=0.25, duration=600, ...)``; on a
    class, make its instances run as jobs (:class:`~cumulus.client.remote_class.RemoteClass`).

    See :class:`RemoteFunction` for the options (a class adds ``max_restarts`` and refuses ``retries``,
    ``retry_exceptions`` and ``resume_on_timeout``: checked when the decorator is applied, as the decorator does
    not know before whether it gets a function or a class). Calling the decorated function (class) directly runs
    it locally; use ``f.remote(...)`` to submit it.
    """
    if func is None:
        normalize_options({k: v for k, v in options.items() if k != "max_restarts"})  # a class's: checked later
        return cast(RemoteDecorator, _decorator(options))
    if options:
        raise TypeError("use @remote(option=...) or @remote, not remote(func, option=...)")
    if inspect.isclass(func):
        return RemoteClass(cast("type[C]", func))
    return RemoteFunction(func)


def _decorator(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    def decorate(func: Any, /) -> Any:
        if inspect.isclass(func):
            return RemoteClass(func, options)
        return RemoteFunction(func, options)

    return decorate


@overload
def get(refs: JobRef[R] | CallRef[R], timeout: float | None = None) -> R: ...
@overload
def get(refs: Sequence[JobRef[R] | CallRef[R]], timeout: float | None = None) -> list[R]: ...


def get(refs: Ref[R] | Sequence[Ref[R]], timeout: float | None = None) -> R | list[R]:
    """The value of one JobRef (or CallRef: a method call on a class instance), or the list of values of a list of
    them (blocking; ``timeout`` in total).

    Raises the first failed job's (call's) exception (original type, remote traceback as ``__cause__``) or
    ``TimeoutError``.
    """
    if isinstance(refs, _REFS):
        return refs.result(timeout)
    if not isinstance(refs, Sequence) or not all(isinstance(r, _REFS) for r in refs):
        raise TypeError(f"cumulus.get takes a JobRef or CallRef, or a list of them, got {type(refs).__name__}")
    deadline = None if timeout is None else time.monotonic() + timeout
    values: list[R] = []
    for ref in refs:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        values.append(ref.result(remaining))
    return values


RefT = TypeVar("RefT", bound=JobRef[Any] | CallRef[Any])


def wait(refs: Sequence[RefT], num_returns: int = 1, timeout: float | None = None
         ) -> tuple[list[RefT], list[RefT]]:
    """Wait until ``num_returns`` of ``refs`` (JobRefs, CallRefs, or both) are done (or ``timeout`` seconds
    passed): ``(ready, not_ready)``.

    ``ready`` holds at most ``num_returns`` refs, in the order given; a done ref may have failed (its
    ``result()`` raises). Never raises for a job's failure.
    """
    import threading

    refs = list(refs)
    if not all(isinstance(r, _REFS) for r in refs):
        raise TypeError("cumulus.wait takes a list of JobRefs or CallRefs")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns={num_returns} must be between 0 and len(refs)={len(refs)}")
    changed = threading.Event()
    for ref in refs:
        ref._add_done_callback(changed.set)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            changed.clear()
            done = [r for r in refs if r.done()]
            if len(done) >= num_returns:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            changed.wait(remaining)
    finally:
        for ref in refs:
            ref._remove_done_callback(changed.set)
    ready = [r for r in refs if r.done()][:num_returns]
    chosen = {id(r) for r in ready}
    return ready, [r for r in refs if id(r) not in chosen]

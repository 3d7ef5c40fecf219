"""How an actor owns external resources: acquire before reporting started, release for sure, record what leaked.

The idiom, used by every actor that holds something outside the process (a Swarm service, a Chronos partition,
an uploaded directory)::

    class JobActor(Actor):
        async def on_start(self):
            self.partition = await self.owner.own(open_partition_lease(...), what="partition")
            self.service = await self.owner.own(open_service(...), what="service")

Resources are released in reverse order of acquisition when the owner exits - normally, by a crash, or by
cancellation. Each resource is held by a small task of the owner's, shielded from outside cancellation, so the
release always runs, in order, under a time bound (``release_timeout``): a stuck release is abandoned after that
and a release that raises is logged. Both are appended to :attr:`ResourceOwner.leaks`; a leak never hides the
exception that stopped the actor and is never dropped.

Why a task per resource: a resource's context manager may hold Trio cancel scopes or nurseries of its own, and
Trio requires those to be exited in the task, and in the order, in which they were entered. Holding each one in its
own task keeps that true whichever task acquires or releases it. A context manager that keeps no scope or nursery
open while held may be owned with ``same_task=True`` instead: it is entered and, when the owner exits, released
in the owner's own task (the same order, shield and time bound), which saves a task per resource.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RELEASE_TIMEOUT = 30.0


class ResourceObserver(Protocol):
    """Told how long each acquisition and release took, and of each leak (the supervisor's metrics are one)."""

    def resource_acquired(self, what: str, seconds: float) -> None: ...
    def resource_released(self, what: str, seconds: float) -> None: ...
    def resource_leaked(self, what: str) -> None: ...


class _Unobserved:
    def resource_acquired(self, what: str, seconds: float) -> None:
        pass

    def resource_released(self, what: str, seconds: float) -> None:
        pass

    def resource_leaked(self, what: str) -> None:
        pass


_observer: ContextVar[ResourceObserver] = ContextVar("cumulus_resource_observer", default=_Unobserved())


@contextlib.contextmanager
def observed_by(observer: ResourceObserver) -> Iterator[None]:
    """Report to ``observer`` what every ResourceOwner used in this task, and in tasks started inside, does."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


@dataclass(frozen=True, slots=True)
class Leak:
    """One release that did not complete: which owner, which resource, and why."""

    owner: str
    what: str
    reason: str
    at: float  # wall-clock time (time.time()) when the release gave up


@dataclass(eq=False)
class _Held:
    what: str
    manager: AbstractAsyncContextManager[Any]
    timeout: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    release_requested: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    entered: bool = False
    clean: bool = False
    task: Any = None  # same_task: the task that entered it (and must release it)


class ResourceOwner:
    """An ordered set of owned resources, released newest first when the owner exits. Use as ``async with``.

    ``leaks`` is the owner's permanent record of releases that failed or timed out; ``released`` lists what was
    released cleanly, in release order (useful for "what did cancel release?"). Not reusable after exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.leaks: list[Leak] = []
        self.released: list[str] = []
        self.release_seconds = 0.0  # how long the owner's exit took to release everything
        self._held: list[_Held] = []
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None

    @property
    def holding(self) -> list[str]:
        """Names of resources currently held, in acquisition order."""
        return [held.what for held in self._held]

    async def own(
        self,
        manager: AbstractAsyncContextManager[T],
        *,
        what: str,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        same_task: bool = False,
    ) -> T:
        """Enter ``manager`` and hold it until the owner exits (or :meth:`release` names it); return its value.

        If entering raises or the caller is cancelled while entering, nothing is held and the exception
        propagates (a context manager cleans up after its own failed ``__aenter__``).

        ``same_task``: enter it in the calling task and release it there too. Only for a context manager that
        keeps no cancel scope or nursery open while held, owned by the task that also exits the owner.
        """
        if self._nursery is None:
            raise RuntimeError(f"{self.name}: own() needs the owner to be entered (async with owner)")
        held = _Held(what, manager, release_timeout)
        started = time.perf_counter()
        if same_task:
            value = await manager.__aenter__()
            held.entered, held.task = True, trio.lowlevel.current_task()
        else:
            value = await self._nursery.start(self._hold, held)
        _observer.get().resource_acquired(what, time.perf_counter() - started)
        self._held.append(held)
        return value

    async def own_together(
        self,
        managers: list[tuple[AbstractAsyncContextManager[Any], str]],
        *,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
    ) -> list[Any]:
        """Enter several context managers concurrently; hold them as if owned one after another in the given
        order (so they are released in reverse of that order). Returns their values in that order.

        All or nothing: if one fails (or the caller is cancelled), the ones already entered are released
        (shielded, bounded) before the first error propagates.
        """
        if self._nursery is None:
            raise RuntimeError(f"{self.name}: own_together() needs the owner to be entered (async with owner)")
        helds = [_Held(what, manager, release_timeout) for manager, what in managers]
        values: list[Any] = [None] * len(helds)
        entered: list[bool] = [False] * len(helds)
        nursery_of_holders = self._nursery

        async def enter(index: int) -> None:
            started = time.perf_counter()
            values[index] = await nursery_of_holders.start(self._hold, helds[index])
            entered[index] = True
            _observer.get().resource_acquired(helds[index].what, time.perf_counter() - started)

        committed = False
        try:
            try:
                async with trio.open_nursery() as acquiring:
                    for index in range(len(helds)):
                        acquiring.start_soon(enter, index)
            except ExceptionGroup as group:
                first: BaseException = group
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None  # the first failure, as itself (the others are released anyway)
            committed = True
        finally:
            if committed:
                self._held.extend(helds)
            else:
                with trio.CancelScope(shield=True):
                    for held, ok in reversed(list(zip(helds, entered))):
                        if ok:
                            await self._release_one(held)
        return values

    async def release(self, what: str) -> bool:
        """Release the most recently acquired resource named ``what`` now; return whether it released cleanly.

        Idempotent: releasing something not held returns ``True``. Shielded and bounded like the exit path.
        """
        for index in range(len(self._held) - 1, -1, -1):
            if self._held[index].what == what:
                held = self._held.pop(index)
                with trio.CancelScope(shield=True):
                    return await self._release_one(held)
        return True

    async def __aenter__(self) -> ResourceOwner:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        started = time.perf_counter()
        try:
            with trio.CancelScope(shield=True):
                while self._held:
                    await self._release_one(self._held.pop())
        finally:
            self.release_seconds = time.perf_counter() - started
            self._nursery = None
            manager, self._nursery_manager = self._nursery_manager, None
            # Every holder task has finished, so the nursery has nothing left to wait for. It is not shown the
            # block's exception, which then propagates as itself instead of wrapped in an exception group.
            await manager.__aexit__(None, None, None)
        return None

    async def _hold(self, held: _Held, *, task_status: trio.TaskStatus[Any]) -> None:
        # The try is outside the scope, so that a release that fails while its deadline cancels it (a group of
        # that Cancelled and the error) is caught as the error, once the scope has taken out its Cancelled.
        try:
            with held.scope:
                async with held.manager as value:
                    held.entered = True
                    task_status.started(value)
                    # From here only a release ends this, shielded from outside cancellation and bounded by the
                    # scope's deadline: ours when requested, or at once when the caller of own() was cancelled
                    # while we entered (Trio then left this task in start()'s cancelled nursery, and nobody
                    # will ever own the resource).
                    held.scope.shield = True
                    if trio.lowlevel.current_task().parent_nursery is self._nursery:
                        await held.release_requested.wait()
                    else:
                        held.scope.deadline = trio.current_time() + held.timeout
                held.clean = True
        except Exception as error:
            if not held.entered:
                raise  # acquisition failed: the caller of own() gets the error
            self._leak(held, describe_error(error))
        finally:
            held.done.set()
        if held.scope.cancelled_caught:  # only our release deadline cancels a held resource's scope
            self._leak(held, f"release did not finish within {held.timeout:g} s")

    async def _release_one(self, held: _Held) -> bool:
        started = time.perf_counter()
        try:
            return await self._release_held(held)
        finally:
            _observer.get().resource_released(held.what, time.perf_counter() - started)

    async def _release_held(self, held: _Held) -> bool:
        if held.task is not None:
            return await self._release_here(held)
        held.scope.deadline = trio.current_time() + held.timeout
        held.release_requested.set()
        await held.done.wait()
        await trio.lowlevel.checkpoint()  # let the holder finish recording before we look
        if held.clean:
            self.released.append(held.what)
        return held.clean

    async def _release_here(self, held: _Held) -> bool:
        """Release a ``same_task`` resource in this task: shielded, bounded, failures recorded as leaks."""
        if trio.lowlevel.current_task() is not held.task:
            raise RuntimeError(f"{self.name}: {held.what} was owned with same_task=True by another task")
        try:  # outside the scope, for the same reason as in _hold
            with trio.move_on_after(held.timeout, shield=True) as scope:
                await held.manager.__aexit__(None, None, None)
                held.clean = True
        except Exception as error:
            self._leak(held, describe_error(error))
        if scope.cancelled_caught:
            held.clean = False
            self._leak(held, f"release did not finish within {held.timeout:g} s")
        if held.clean:
            self.released.append(held.what)
        return held.clean

    def _leak(self, held: _Held, reason: str) -> None:
        log.error("%s: releasing %s failed: %s", self.name, held.what, reason)
        _observer.get().resource_leaked(held.what)
        self.leaks.append(Leak(self.name, held.what, reason, time.time()))


def describe_error(error: BaseException) -> str:
    """``Type: message`` of the error; for an exception group, of each error inside it (``; ``-separated)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe_error(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"

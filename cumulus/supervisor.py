"""OTP-style supervisors on Trio.

A :class:`Supervisor` starts its children in order (each one ready before the next starts), watches them, restarts
them according to their :class:`Restart` type and the supervisor's :class:`Strategy`, and stops them in reverse
order. A child is anything started with ``await nursery.start(fn)``: an actor (:meth:`ChildSpec.actor`), another
supervisor (:meth:`ChildSpec.supervisor`), or a plain ``async def fn(*, task_status)``.

Rules, as in OTP:

* **Restart types.** ``PERMANENT`` children are always restarted; ``TRANSIENT`` ones only after a crash;
  ``TEMPORARY`` ones never (they are forgotten when they exit).
* **Strategies.** ``ONE_FOR_ONE`` restarts only the child that exited; ``ONE_FOR_ALL`` stops the others (reverse
  order) and starts all again (in order).
* **Restart intensity.** More than ``max_restarts`` restarts within ``max_seconds`` (measured with
  ``trio.current_time()``) makes the supervisor stop all children and raise :class:`SupervisorGaveUp` to its parent.
* **Cancellation is never a crash.** Only ``Exception`` counts as a crash; ``trio.Cancelled`` never triggers a
  restart. Each child runs shielded from its parent's cancellation, so that when the supervisor is cancelled or
  gives up it can stop its children one by one, newest first, each waited for before the next is told to stop.
* **Shutdown bound** (OTP's ``shutdown`` in the child spec). Stopping a child cancels it and waits at most
  ``ChildSpec.shutdown`` seconds for it to end: :data:`DEFAULT_SHUTDOWN` for actors and plain children,
  ``math.inf`` for supervisor children (a subtree takes as long as its own children's bounds add up to, as OTP's
  ``infinity``). Trio cannot kill a task, so a child that overruns its bound (stuck in a shielded scope, say) is
  *abandoned*, not killed:

  - the supervisor stops waiting for it, logs an error naming it, and lists it in
    :meth:`Supervisor.overdue_children` until its task finally ends (then it logs how late it was and drops it);
  - it counts as stopped: it is no longer in ``which_children``/``whereis``, ``terminate_child`` returns, the
    ordered stop goes on with the next (older) child, and a restart or ``start_child`` may start a new
    incarnation beside it;
  - it still runs inside the supervisor's nursery, so ``Supervisor.run`` itself cannot return (nor its parent's
    stop of it complete) until that task ends. The bound keeps one stuck child from holding up the stop of its
    siblings and makes it visible; it does not make a stuck task go away.

  Children release what they own under bounded, shielded scopes, so a well-behaved child stops well within
  its bound.

:class:`DynamicSupervisor` starts children at run time (``start_child``/``terminate_child``); its children are
``TEMPORARY`` by default, which suits one actor per job.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import trio

from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.childspec import (DEFAULT_SHUTDOWN, ChildExit, ChildSpec, OverdueChild, Restart, StartFn,
                                      Strategy)
from cumulus.errors import NotFound, SupervisorGaveUp

log = logging.getLogger(__name__)

__all__ = ["ChildExit", "ChildSpec", "DEFAULT_SHUTDOWN", "DynamicSupervisor", "OverdueChild", "Restart", "StartFn",
           "Strategy", "Supervisor"]


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    ref: Any = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    overdue: OverdueChild | None = None  # set when it overran its shutdown bound and was abandoned


@dataclass(frozen=True)
class _Exited:
    child: _Child
    how: ChildExit
    error: Exception | None


class _StartRelay:
    """Stands in for a child's ``task_status``: forwards ``started`` and remembers that it happened.

    While starting, a child is cancelled together with whoever started it. Once it has really moved into the
    supervisor's nursery, its scope is shielded: from then on only its supervisor stops it (in reverse order).
    """

    def __init__(self, real: trio.TaskStatus[Any], child: _Child, nursery: trio.Nursery) -> None:
        self._real = real
        self._child = child
        self._nursery = nursery
        self.started_ok = False

    def started(self, value: Any = None) -> None:
        self._child.ref = value
        self.started_ok = True
        self._real.started(value)
        # Trio does not move the task if the starter is being cancelled; it must then stay cancellable.
        if trio.lowlevel.current_task().parent_nursery is self._nursery:
            self._child.scope.shield = True


class _StartFailed:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Supervisor:
    """Supervises a list of children. Run it with ``await nursery.start(sup.run)`` or as a child of another one.

    ``run`` returns only by raising: ``Cancelled`` when its parent stops it, :class:`SupervisorGaveUp` when the
    restart intensity was exceeded, or the start error of a child that could not start. Before it leaves, every
    child has been stopped, newest first, and every child task has ended (one that overran its ``shutdown``
    bound was abandoned in that order and is waited for last; see :meth:`overdue_children`).
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        name: str = "supervisor",
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        if max_restarts < 0 or not max_seconds > 0 or math.isnan(max_seconds):
            raise ValueError("max_restarts must be >= 0 and max_seconds > 0")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._specs = list(children)
        self._children: list[_Child] = []  # running children in start order
        self._restarts: deque[float] = deque()
        self._nursery: trio.Nursery | None = None
        self._closing = False  # the final stop has begun: a child that finishes starting now is stopped at once
        self._overdue: list[_Child] = []  # abandoned after their shutdown bound, still running
        self._exits_send, self._exits_receive = trio.open_memory_channel[_Exited](math.inf)

    # ---- public API -------------------------------------------------------------------------------------------

    def whereis(self, name: str) -> Any:
        """The ref of the running child ``name`` (an ActorRef for actors), or ``None`` if it is not running."""
        for child in self._children:
            if child.spec.name == name and not child.done.is_set():
                return child.ref
        return None

    def which_children(self) -> list[tuple[str, Any]]:
        """``(name, ref)`` of the running children, in start order."""
        return [(c.spec.name, c.ref) for c in self._children if not c.done.is_set()]

    def overdue_children(self) -> list[OverdueChild]:
        """Children that did not end within their ``shutdown`` bound after being told to stop, and still run, in
        the order they were abandoned. Each was logged as an error; it leaves this list when its task ends."""
        return [c.overdue for c in self._overdue if c.overdue is not None]

    @property
    def restart_count(self) -> int:
        """Restarts inside the current intensity window."""
        return len(self._restarts)

    async def start_child(self, spec: ChildSpec) -> Any:
        """Start a new child at run time, after the existing ones; return its ref once it is ready.

        Raises ``ValueError`` if a running child has the same name, and the child's own start error if it fails
        to start (a failed start is not a restart). A start in progress is shielded from the caller's
        cancellation: the child finishes starting and is then owned (and eventually stopped) by the supervisor.
        """
        if self._nursery is None:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        if self.whereis(spec.name) is not None:
            raise ValueError(f"supervisor {self.name!r} already has a running child {spec.name!r}")
        return await self._start(spec)

    async def terminate_child(self, name: str) -> None:
        """Stop the running child ``name`` and wait until it has stopped; it is not restarted.

        Raises :class:`~cumulus.errors.NotFound` if no such child runs. The stop itself is shielded: once asked,
        the child is stopped even if the caller is cancelled meanwhile. Waits at most the child's ``shutdown``
        bound: a child still running then is abandoned (see :meth:`overdue_children`) and this returns.
        """
        for child in reversed(self._children):
            if child.spec.name == name and not child.done.is_set():
                with trio.CancelScope(shield=True):
                    await self._stop(child)
                return
        raise NotFound(f"supervisor {self.name!r} has no running child {name!r}")

    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report ready, then supervise until cancelled or giving up."""
        self._closing = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for spec in self._specs:
                        await self._start(spec)
                    task_status.started(self)
                    await self._supervise()
                finally:
                    self._closing = True
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                    if self._overdue:
                        log.error("%s: all children stopped except %s, which overran their shutdown bound; waiting "
                                  "for them to end before exiting (a Trio task cannot be killed)", self.name,
                                  ", ".join(repr(c.spec.name) for c in self._overdue))
        except ExceptionGroup as group:
            # Child wrappers never raise, so the group holds only our own error (gave up, or a child's start
            # failure): raise it as itself.
            raise _unwrap(group)
        finally:
            self._nursery = None

    # ---- internals --------------------------------------------------------------------------------------------

    async def _start(self, spec: ChildSpec) -> Any:
        child = _Child(spec)
        assert self._nursery is not None
        try:
            outcome = await self._nursery.start(self._supervise_child, child)
        except BaseException:
            if child.scope.shield:  # it moved into our nursery, but start() was cancelled as it returned
                with trio.CancelScope(shield=True):
                    await self._stop(child)
            raise
        if isinstance(outcome, _StartFailed):
            if outcome.error is None:
                raise RuntimeError(f"child {spec.name!r} of {self.name!r} exited before it was ready")
            raise outcome.error
        if self._closing:  # it finished starting after our final stop began: nobody else would ever stop it
            with trio.CancelScope(shield=True):
                await self._stop(child)
            raise RuntimeError(f"supervisor {self.name!r} is shutting down")
        self._children.append(child)
        return child.ref

    async def _supervise_child(self, child: _Child, *, task_status: trio.TaskStatus[Any]) -> None:
        assert self._nursery is not None
        relay = _StartRelay(task_status, child, self._nursery)
        error: Exception | None = None
        try:
            # The scope first takes out its own Cancelled, so a crash that raced with a stop (a group of that
            # Cancelled and the child's error) is caught below as the error it is.
            with child.scope:
                await child.spec.start(task_status=relay)
        except Exception as crash:
            error = _unwrap(crash)
        finally:
            child.done.set()  # whoever waits in _stop must never wait for a task that is gone
            if child.overdue is not None:
                self._overdue.remove(child)
                log.warning("%s: overdue child %s ended at last, %.3g s after its supervisor stopped waiting",
                            self.name, child.spec.name, trio.current_time() - child.overdue.since)
        if not relay.started_ok:
            task_status.started(_StartFailed(error))
            return
        if child.stopping:
            how = ChildExit.STOPPED
        elif error is not None:
            how = ChildExit.CRASHED
            log.error("%s: child %s crashed: %r", self.name, child.spec.name, error, exc_info=error)
        else:
            how = ChildExit.NORMAL
        self._exits_send.send_nowait(_Exited(child, how, error))

    async def _supervise(self) -> None:
        async for exited in self._exits_receive:
            child = exited.child
            if exited.how is ChildExit.STOPPED or child not in self._children:
                self._forget(child)
                continue
            if not self._should_restart(child.spec.restart, exited.how):
                self._forget(child)
                continue
            self._count_restart(exited)
            if self.strategy is Strategy.ONE_FOR_ONE:
                await self._restart_one(child)
            else:
                await self._restart_all()

    def _should_restart(self, restart: Restart, how: ChildExit) -> bool:
        if restart is Restart.PERMANENT:
            return True
        if restart is Restart.TRANSIENT:
            return how is ChildExit.CRASHED
        return False

    def _count_restart(self, exited: _Exited) -> None:
        now = trio.current_time()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - self.max_seconds:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            log.error("%s: restart intensity exceeded by %s; stopping all children", self.name, exited.child.spec.name)
            raise SupervisorGaveUp(self.name, self.max_restarts, self.max_seconds) from exited.error

    async def _restart_one(self, child: _Child) -> None:
        index = self._children.index(child)
        while True:
            replacement = _Child(child.spec)
            assert self._nursery is not None
            outcome = await self._nursery.start(self._supervise_child, replacement)
            if not isinstance(outcome, _StartFailed):
                self._children[index] = replacement
                return
            log.error("%s: restarting %s failed: %r", self.name, child.spec.name, outcome.error)
            self._count_restart(_Exited(child, ChildExit.CRASHED, _as_exception(outcome.error)))

    async def _restart_all(self) -> None:
        specs = [c.spec for c in self._children]
        with trio.CancelScope(shield=True):
            await self._stop_all()
        for spec in specs:
            while True:
                try:
                    await self._start(spec)
                    break
                except Exception as error:
                    log.error("%s: restarting %s failed: %r", self.name, spec.name, error)
                    self._count_restart(_Exited(_Child(spec), ChildExit.CRASHED, error))

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children)):
            await self._stop(child)
        self._children.clear()

    async def _stop(self, child: _Child) -> None:
        """Cancel the child and wait for it to end, at most its ``shutdown`` bound; abandon it after that."""
        child.stopping = True
        child.scope.cancel()
        with trio.move_on_after(child.spec.shutdown):
            await child.done.wait()
        if not child.done.is_set() and child.overdue is None:
            self._abandon(child)
        self._forget(child)

    def _abandon(self, child: _Child) -> None:
        shutdown = child.spec.shutdown
        child.overdue = OverdueChild(child.spec.name, child.ref, shutdown, trio.current_time())
        self._overdue.append(child)
        log.error("%s: child %s did not stop within its shutdown bound of %g s after being cancelled; no longer "
                  "waiting for it: it still runs (a Trio task cannot be killed), is listed in overdue_children(), "
                  "and %s cannot exit until it ends", self.name, child.spec.name, shutdown, self.name)

    def _forget(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)


class DynamicSupervisor(Supervisor):
    """A one-for-one supervisor with no static children; children come and go with ``start_child``.

    Use :meth:`start_actor` for the common case. Intensity still applies to restarted (non-temporary) children.
    """

    def __init__(self, *, name: str = "dynamic", max_restarts: int = 3, max_seconds: float = 5.0) -> None:
        super().__init__((), name=name, strategy=Strategy.ONE_FOR_ONE, max_restarts=max_restarts,
                         max_seconds=max_seconds)

    async def start_actor(
        self, name: str, factory: Callable[[], Actor], restart: Restart = Restart.TEMPORARY, *,
        shutdown: float = DEFAULT_SHUTDOWN,
    ) -> ActorRef:
        """Start ``factory()`` as a child actor named ``name`` and return its ref once it has started."""
        return await self.start_child(ChildSpec.actor(name, factory, restart, shutdown=shutdown))


def _unwrap(exc: Exception) -> Exception:
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _as_exception(error: BaseException | None) -> Exception | None:
    return error if isinstance(error, Exception) else None

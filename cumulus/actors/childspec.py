"""Child specifications for :mod:`cumulus.supervisor`: how a child is started, when it is restarted (``Restart``),
how its siblings are affected (``Strategy``), how long it gets to stop (``shutdown``), and how it ended.

Plain data and the start functions for actor and supervisor children; the supervision itself is in
``cumulus/supervisor.py``, which re-exports every name here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

from cumulus.actors.base import Actor, ActorRef, run_actor
from cumulus.actors.ownership import DEFAULT_RELEASE_TIMEOUT

DEFAULT_SHUTDOWN = 2 * DEFAULT_RELEASE_TIMEOUT
"""Seconds a stopped actor or plain child gets to end before it is abandoned (see the module docstring). OTP's
default is 5 s because OTP then kills the child; here nothing is killed, so the bound is set well above one owned
resource's release bound (:data:`~cumulus.actors.ownership.DEFAULT_RELEASE_TIMEOUT`): a child is only abandoned
when it is really stuck. A child that owns several slow resources should say how long it may take."""

StartFn = Callable[..., Awaitable[Any]]
"""``async def start(*, task_status)``: runs the child; calls ``task_status.started(ref)`` once it is ready."""


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and what to do when it exits. ``name`` is unique among its siblings.

    ``shutdown``: seconds the child gets to end once its supervisor cancels it, after which it is abandoned
    (logged, listed in :meth:`Supervisor.overdue_children`; see the module docstring). Must be > 0; ``math.inf``
    waits for ever, which is the default for supervisor children.
    """

    name: str
    start: StartFn
    restart: Restart = Restart.PERMANENT
    shutdown: float = DEFAULT_SHUTDOWN

    def __post_init__(self) -> None:
        if not self.shutdown > 0:  # also rejects NaN
            raise ValueError(f"child {self.name!r}: shutdown must be > 0 seconds (or math.inf), got {self.shutdown}")

    @classmethod
    def actor(
        cls, name: str, factory: Callable[[], Actor], restart: Restart = Restart.PERMANENT, *,
        shutdown: float = DEFAULT_SHUTDOWN,
    ) -> ChildSpec:
        """A child that runs ``factory()`` as an actor; each (re)start gets a fresh actor. Its ref is an ActorRef."""

        async def start(*, task_status: trio.TaskStatus[ActorRef] = trio.TASK_STATUS_IGNORED) -> None:
            await run_actor(factory(), task_status=task_status)

        return cls(name, start, restart, shutdown)

    @classmethod
    def supervisor(
        cls, name: str, factory: Callable[[], Any], restart: Restart = Restart.PERMANENT, *,
        shutdown: float = math.inf,
    ) -> ChildSpec:
        """A child that is itself a supervisor (a subtree; ``factory()`` returns a
        :class:`~cumulus.supervisor.Supervisor`). Its ref is the Supervisor object.

        ``shutdown`` defaults to ``math.inf``: the subtree stops its own children under their own bounds.
        """

        async def start(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            await factory().run(task_status=task_status)

        return cls(name, start, restart, shutdown)


class ChildExit(enum.Enum):
    NORMAL = "normal"  # returned by itself
    STOPPED = "stopped"  # stopped by its supervisor
    CRASHED = "crashed"  # raised an Exception


@dataclass(frozen=True)
class OverdueChild:
    """A child that was told to stop, did not end within its ``shutdown`` bound, and still runs."""

    name: str
    ref: Any
    shutdown: float  # its bound, in seconds
    since: float  # trio.current_time() when the supervisor stopped waiting for it


__all__ = ["ChildExit", "ChildSpec", "DEFAULT_SHUTDOWN", "OverdueChild", "Restart", "StartFn", "Strategy"]

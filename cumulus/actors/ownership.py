"""How an actor owns external resources: acquire before reporting started, release for sure, record what leaked.

The idiom, used by every actor that holds something outside the process (a Swarm service, a Chronos partition,
an uploaded directory)::

    class JobActor(Actor):
        async def on_start(self):
            self.partition = await self.owner.own(open_partition_lease(...), what="partition")
            self.service = await self.owner.own(open_service(...), what="service")

Resources are released in reverse order of acquisition when the actor stops - normally, by a crash, or by
cancellation. Each release runs under ``trio.move_on_after(timeout, shield=True)``, so a cancelled actor still
releases, and a stuck release cannot hold the actor forever. A release that raises or times out is logged and
appended to :attr:`ResourceOwner.leaks`; it never hides the exception that stopped the actor and is never dropped.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RELEASE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Leak:
    """One release that did not complete: which owner, which resource, and why."""

    owner: str
    what: str
    reason: str
    at: float  # wall-clock time (time.time()) when the release gave up


@dataclass(slots=True)
class _Held:
    what: str
    manager: AbstractAsyncContextManager[Any]
    timeout: float


class ResourceOwner:
    """An ordered set of owned resources, released in reverse order on exit. Reusable after exit.

    ``leaks`` accumulates across uses: it is the owner's permanent record of releases that failed.
    ``released`` lists what was released cleanly, in release order (useful for "what did cancel release?").
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.leaks: list[Leak] = []
        self.released: list[str] = []
        self._held: list[_Held] = []

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
    ) -> T:
        """Enter ``manager`` and hold it until this owner exits (or :meth:`release` names it). Returns its value.

        If entering raises (or is cancelled), nothing is held and the exception propagates: a context manager
        cleans up after its own failed ``__aenter__``.
        """
        value = await manager.__aenter__()
        self._held.append(_Held(what, manager, release_timeout))
        return value

    async def release(self, what: str) -> bool:
        """Release the most recently acquired resource named ``what`` now. Returns whether it released cleanly.

        Idempotent: releasing something not held returns ``True``. Shielded and bounded like the exit path.
        """
        for index in range(len(self._held) - 1, -1, -1):
            if self._held[index].what == what:
                held = self._held.pop(index)
                return await self._release_one(held)
        return True

    async def release_all(self) -> None:
        """Release everything held, newest first. Each release is shielded and bounded; failures become leaks."""
        while self._held:
            await self._release_one(self._held.pop())

    async def __aenter__(self) -> ResourceOwner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release_all()

    async def _release_one(self, held: _Held) -> bool:
        reason: str | None = None
        with trio.move_on_after(held.timeout, shield=True) as scope:
            try:
                await held.manager.__aexit__(None, None, None)
            except Exception as error:  # recorded as a leak, never silently dropped
                reason = f"{type(error).__name__}: {error}"
                log.exception("%s: releasing %s failed", self.name, held.what)
        if scope.cancelled_caught:
            reason = f"release did not finish within {held.timeout:g} s"
            log.error("%s: releasing %s timed out after %g s", self.name, held.what, held.timeout)
        if reason is None:
            self.released.append(held.what)
            return True
        self.leaks.append(Leak(self.name, held.what, reason, time.time()))
        return False

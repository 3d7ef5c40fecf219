"""The SDK from async code: which async library runs the current task (:func:`async_library`);
:func:`run_blocking`, which runs one of the SDK's blocking calls (gRPC is used synchronously) in a worker thread
with that library's own primitive, so that the event loop keeps running meanwhile; :class:`Completion`, what a job's
or a call's reference has to end once and wake whoever waits; and :func:`wait_done_async`, which waits for one
without a thread.

Trio and asyncio are told apart with sniffio when it is installed (Trio depends on it); without it, asyncio is the
only library the SDK can be running under. Neither library is imported before it is needed.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def async_library() -> str:
    """``"trio"`` under Trio, else ``"asyncio"`` (sniffio's answer; asyncio when sniffio is missing or unsure)."""
    try:
        import sniffio

        return str(sniffio.current_async_library())
    except Exception:  # noqa: BLE001 - no sniffio, or not in a known loop: asyncio is the only other choice
        return "asyncio"


async def run_blocking(call: Callable[[], T]) -> T:
    """``call()`` in a worker thread: ``trio.to_thread.run_sync`` under Trio, ``asyncio.to_thread`` (which keeps
    the context variables) under asyncio. Its exception, if any, is raised here.

    Cancelling the awaiting task does not stop the thread: under Trio the task waits for ``call`` to return and
    then raises ``Cancelled``; under asyncio ``CancelledError`` is raised at once and ``call`` finishes alone.
    """
    if async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(call)
    import asyncio

    return await asyncio.to_thread(call)


class Completion:
    """Ends once, from any thread: ``_done`` is set under ``_lock`` by :meth:`_complete`, which then runs the
    callbacks added before (:meth:`_add_done_callback` runs a later one at once). A base of the SDK's references."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def _complete(self, record: Callable[[], None]) -> bool:
        """The first time: ``record()`` (it stores how it ended) and ``_done`` set, both under the lock, then the
        waiting callbacks run (an exception of theirs is dropped). Later: nothing; returns whether this was the
        first time."""
        with self._lock:
            if self._done.is_set():
                return False
            record()
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()
        return True

    def _add_done_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _remove_done_callback(self, callback: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


async def wait_done_async(ref: Completion, timeout: float | None) -> bool:
    """Wait, without blocking the running Trio or asyncio loop, until ``ref`` (a :class:`Completion`) is done; False
    if ``timeout`` seconds passed first."""
    if async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        event = trio.Event()

        def wake_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        ref._add_done_callback(wake_trio)
        try:
            with trio.move_on_after(timeout) if timeout is not None else contextlib.nullcontext() as scope:
                await event.wait()
            return not (scope is not None and scope.cancelled_caught)
        finally:
            ref._remove_done_callback(wake_trio)
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    def wake_asyncio() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(resolve)

    ref._add_done_callback(wake_asyncio)
    try:
        await asyncio.wait_for(future, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        ref._remove_done_callback(wake_asyncio)

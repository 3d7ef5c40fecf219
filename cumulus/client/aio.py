"""The SDK from async code: which async library runs the current task (:func:`async_library`) and
:func:`run_blocking`, which runs one of the SDK's blocking calls (gRPC is used synchronously) in a worker thread
with that library's own primitive, so that the event loop keeps running meanwhile.

Trio and asyncio are told apart with sniffio when it is installed (Trio depends on it); without it, asyncio is the
only library the SDK can be running under. Neither library is imported before it is needed.
"""

from __future__ import annotations

from typing import Callable, TypeVar

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

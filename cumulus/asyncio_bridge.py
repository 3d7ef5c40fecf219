"""The one place where Trio meets asyncio (for grpc.aio and asyncssh). Nothing else imports ``trio_asyncio``.

Cumulus is a Trio program. Two of its libraries speak asyncio: grpc.aio (the RPC server and client) and asyncssh
(worker connections). Both run on one asyncio loop that trio-asyncio provides on top of Trio, opened once per
process by :func:`open_asyncio_bridge` around everything that needs it.

* From Trio, call asyncio code with :func:`call_asyncio` (or wrap an async iterator with :func:`iterate_asyncio`).
  Cancelling the Trio caller cancels the asyncio task; the asyncio code sees ``asyncio.CancelledError``.
* From asyncio code (a gRPC handler), call back into Trio with :func:`call_trio`. Cancelling the asyncio task
  (a client went away) cancels the Trio call.
* From asyncio code, iterate a Trio async iterator with :func:`iterate_trio` (a streaming gRPC handler following
  a job's events). Leaving the loop early, or being cancelled, closes the Trio iterator in Trio.
"""

from __future__ import annotations

import logging
from contextlib import aclosing, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import trio
import trio_asyncio

T = TypeVar("T")
log = logging.getLogger(__name__)


@asynccontextmanager
async def open_asyncio_bridge(on_unhandled_error: Callable[[], None] | None = None) -> AsyncIterator[None]:
    """Run an asyncio loop inside the current Trio run for the duration of the block.

    Nested use is allowed and reuses the loop that is already open. On exit every asyncio task still running on
    the loop is cancelled.

    An error that no one retrieves - an asyncio task a library abandoned, e.g. asyncssh's parallel SFTP reads
    left behind by a cancelled read, that later fail - is logged (at ERROR, with asyncio's context), counted in
    :data:`unhandled_errors` and reported to ``on_unhandled_error`` (the supervisor counts it in its metrics).
    trio-asyncio's own handler would instead raise it into the loop, ending the whole process and every job's
    actor with it.
    """
    if _current_loop() is not None:
        yield
        return
    def handle(loop: Any, context: dict[str, Any]) -> None:
        _log_unhandled_error(loop, context)
        if on_unhandled_error is not None:
            on_unhandled_error()

    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(handle)
        yield


#: How many unretrieved asyncio errors this process has logged (see :func:`open_asyncio_bridge`).
unhandled_errors = 0


def _log_unhandled_error(loop: Any, context: dict[str, Any]) -> None:
    global unhandled_errors
    unhandled_errors += 1
    error = context.get("exception")
    log.error("asyncio: %s (an error no task retrieved; the supervisor goes on)%s",
              context.get("message") or "unhandled error", f": {type(error).__name__}: {error}" if error else "",
              exc_info=error)


async def call_asyncio(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)`` (an asyncio coroutine function) from Trio and return its result.

    Needs an open bridge. Cancellation of the Trio caller cancels the asyncio task.
    """
    return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)


def iterate_asyncio(iterator: Any) -> Any:
    """Wrap an asyncio async iterator so that Trio code can ``async for`` over it."""
    return trio_asyncio.aio_as_trio(iterator)


async def call_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await the Trio async function ``fn(*args)`` from asyncio code (e.g. a grpc.aio handler).

    Cancelling the asyncio caller cancels the Trio call.
    """
    return await trio_asyncio.trio_as_aio(fn)(*args)


async def iterate_trio_batches(make_iterator: Callable[[], Any]) -> AsyncIterator[list[Any]]:
    """Iterate, from asyncio code, the Trio async iterator that ``make_iterator()`` returns, in batches: each
    batch is every item that had arrived when the consumer asked (at least one), in order.

    ``make_iterator`` is called in Trio (so a Trio async generator is created, and later finalized, there). One
    Trio task pumps the items into an asyncio queue (both loops share this thread, so handing an item over is a
    plain ``put_nowait``; no Trio call per item). Cancelling the asyncio consumer, or leaving the loop early,
    cancels the pump; however the loop ends, the Trio iterator's ``aclose()`` has run in Trio (or is running,
    bounded by the pump's cancellation) when this returns. An exception raised by the iterator is re-raised here
    (after the items that came before it).
    """
    import asyncio

    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        iterator = make_iterator()
        try:
            async for item in iterator:
                queue.put_nowait(("item", item))
            queue.put_nowait(("end", None))
        except Exception as error:  # handed to the consumer, which re-raises it
            queue.put_nowait(("error", error))
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await aclose()

    pumping = asyncio.ensure_future(trio_asyncio.trio_as_aio(pump)())
    try:
        while True:
            batch: list[Any] = []
            kind, value = await queue.get()
            while kind == "item":
                batch.append(value)
                if queue.empty():
                    break
                kind, value = queue.get_nowait()
            if batch:
                yield batch
            if kind == "end":
                return
            if kind == "error":
                raise value
    finally:
        if not pumping.done():
            pumping.cancel()
            # Wait for the pump to finish (asyncio.wait never raises the pump's own cancellation or error, while a
            # cancellation of this consumer still propagates).
            await asyncio.wait({pumping})
        if not pumping.cancelled():
            pumping.exception()  # retrieved: its outcome already reached us through the queue


async def iterate_trio(make_iterator: Callable[[], Any]) -> AsyncIterator[Any]:
    """Like :func:`iterate_trio_batches`, one item at a time."""
    async with aclosing(iterate_trio_batches(make_iterator)) as batches:
        async for batch in batches:
            for item in batch:
                yield item


def _current_loop() -> Any:
    try:
        return trio_asyncio.current_loop.get()
    except LookupError:
        return None


__all__ = ["call_asyncio", "call_trio", "iterate_asyncio", "iterate_trio", "iterate_trio_batches",
           "open_asyncio_bridge", "unhandled_errors"]

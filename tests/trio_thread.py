"""Run a Trio server (the real or the fake supervisor behind real gRPC) in a thread of its own, for tests whose
clients block (the SDK, the CLI) or use another event loop."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Awaitable, Callable, Iterator

import trio


@contextlib.contextmanager
def serving_in_thread(serve: Callable[[Callable[[Any], None]], Awaitable[None]], *, name: str,
                      start_timeout: float = 30) -> Iterator[Any]:
    """Run ``await serve(ready)`` under its own ``trio.run`` in a daemon thread; ``serve`` calls ``ready(value)``
    once it serves, and this yields ``value``. On exit ``serve`` is cancelled and the thread joined. An error
    before ``ready`` is raised here."""
    ready: queue.Queue[Any] = queue.Queue()
    control: dict[str, Any] = {}

    async def main() -> None:
        with trio.CancelScope() as scope:
            control["token"], control["scope"] = trio.lowlevel.current_trio_token(), scope
            await serve(ready.put)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as error:  # noqa: BLE001 - hand it to the test
            ready.put(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    got = ready.get(timeout=start_timeout)
    if isinstance(got, BaseException):
        raise got
    try:
        yield got
    finally:
        control["token"].run_sync_soon(control["scope"].cancel)
        thread.join(timeout=30)

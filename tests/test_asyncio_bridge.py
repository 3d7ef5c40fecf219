"""The Trio/asyncio bridge: an asyncio error that no task retrieves is logged, not fatal to the process."""

from __future__ import annotations

import asyncio
import gc
import logging

import trio

from cumulus import asyncio_bridge
from cumulus.asyncio_bridge import call_asyncio, open_asyncio_bridge


async def test_an_abandoned_failing_asyncio_task_is_logged_and_the_run_goes_on(caplog):
    """Like asyncssh's parallel SFTP reads left behind by a cancelled read: tasks that fail later, with no one to
    retrieve their errors. trio-asyncio's own handler would raise them into the loop and end the process."""
    async def fail_later() -> None:
        await asyncio.sleep(0.01)
        raise EOFError("End of file")

    async def abandon_tasks() -> None:
        for _ in range(3):
            asyncio.ensure_future(fail_later())

    before = asyncio_bridge.unhandled_errors
    reported: list[None] = []
    with caplog.at_level(logging.ERROR, logger="cumulus.asyncio_bridge"):
        async with open_asyncio_bridge(on_unhandled_error=lambda: reported.append(None)):
            await call_asyncio(abandon_tasks)
            await trio.sleep(0.1)  # the tasks fail, and are collected with their errors unretrieved
            gc.collect()
            await trio.sleep(0.05)
            assert await call_asyncio(asyncio.sleep, 0, "still serving") == "still serving"
    assert asyncio_bridge.unhandled_errors - before == 3
    assert len(reported) == 3  # the supervisor counts them in cumulus_asyncio_unhandled_errors_total
    logged = [r for r in caplog.records if "no task retrieved" in r.getMessage()]
    assert len(logged) == 3 and "EOFError: End of file" in logged[0].getMessage()

"""A helper for tests of races between a failure and a cancellation."""

from __future__ import annotations

import trio


async def fail_as_cancelled(message: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled; then raise a group of that ``Cancelled`` and ``OSError(message)``, the way a nursery
    does when one of its tasks fails while the nursery is cancelled (e.g. an SSH release losing its connection).
    Reports ``started("racer")`` once running."""

    async def raises_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise OSError(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(raises_when_cancelled)
        task_status.started("racer")
        await trio.sleep_forever()

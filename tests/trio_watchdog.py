"""A real-time watchdog for tests that run on Trio's autojump clock.

Virtual time cannot end a hang that sits in shielded scopes (``trio.fail_after`` does not reach them, and with no
deadline left the loop sleeps for ever). Such a hang would stall CI until its own time limit, with no clue. The
watchdog, a thread on the wall clock, instead prints what was being run and every Trio task's innermost frames,
then ends the test process with exit status 3: CI fails at once, with the schedule and the stuck tasks in its log.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

EXIT_STATUS = 3


def task_tree() -> str:
    """Every Trio task of the current run, indented by nesting, each with its innermost project frames."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = []
        coro = task.coro
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None and "/trio/" not in frame.f_code.co_filename:
                frames.append(f"{os.path.relpath(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        lines.append("  " * depth + f"{task.name}: " + " > ".join(frames[-3:]))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    return "\n".join(lines)


@asynccontextmanager
async def hang_watchdog(seconds: float, what: str) -> AsyncIterator[None]:
    """Within the block, a wall-clock stall longer than ``seconds`` prints ``what`` and the task tree to stderr
    and ends the process (status 3). Leaving the block, also by an exception or cancellation, disarms it."""
    token = trio.lowlevel.current_trio_token()
    disarmed = threading.Event()

    def watch() -> None:
        if disarmed.wait(seconds):
            return
        try:
            tree = trio.from_thread.run_sync(task_tree, trio_token=token)
        except Exception as error:  # the loop itself is stuck: say so instead of the tree
            tree = f"(no task tree: {error!r})"
        sys.stderr.write(f"\nHUNG for {seconds:g} s (wall clock): {what}\n{tree}\n")
        sys.stderr.flush()
        os._exit(EXIT_STATUS)

    threading.Thread(target=watch, name="hang-watchdog", daemon=True).start()
    try:
        yield
    finally:
        disarmed.set()

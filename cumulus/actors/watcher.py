"""TaskWatcher: one poller of the Swarm manager's task list, dispatching task changes to the jobs that watch them.

One call per poll (tasks filtered by this supervisor's label) serves every running job, so the load on the
manager does not grow with the number of jobs. A job subscribes with :class:`Watch` and gets a receive channel of
:class:`~cumulus.resources.swarm.TaskState`; it is sent every change of its task (state, exit code) and, when the
task vanishes (service removed), nothing more. Polling pauses while nobody watches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import trio

from cumulus.actors.base import Actor
from cumulus.backends import SwarmBackend
from cumulus.resources.swarm import LABEL_SUPERVISOR, TaskState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watch:
    job_id: str


@dataclass(frozen=True)
class Unwatch:
    job_id: str


@dataclass(frozen=True)
class PollNow:
    """A job expects its task to change now (its output ended): poll without waiting for the interval."""


class TaskWatcher(Actor):
    name = "task-watcher"
    mailbox_size = 1024

    def __init__(self, swarm: SwarmBackend, supervisor_id: str, interval: float) -> None:
        super().__init__()
        self.swarm = swarm
        self.labels = {LABEL_SUPERVISOR: supervisor_id}
        self.interval = interval
        self._watchers: dict[str, trio.MemorySendChannel[TaskState]] = {}
        self._last: dict[str, tuple[str, str, int | None]] = {}  # job id -> (task id, state, exit code)
        self._wanted = trio.Event()
        self._poll_now = trio.Event()
        self.polls = 0

    async def on_start(self) -> None:
        self.start_soon(self._poll_forever)

    async def handle(self, message: Any) -> Any:
        match message:
            case Watch(job_id):
                send, receive = trio.open_memory_channel[TaskState](math.inf)
                old = self._watchers.pop(job_id, None)
                if old is not None:
                    old.close()
                self._watchers[job_id] = send
                self._last.pop(job_id, None)
                self._wanted.set()
                return receive
            case PollNow():
                self._poll_now.set()
                return None
            case Unwatch(job_id):
                channel = self._watchers.pop(job_id, None)
                if channel is not None:
                    channel.close()
                self._last.pop(job_id, None)
                return None
        raise TypeError(f"task watcher: unknown message {message!r}")

    async def _poll_forever(self) -> None:
        while True:
            if not self._watchers:
                self._wanted = trio.Event()
                await self._wanted.wait()
            try:
                tasks = await self.swarm.task_states(self.labels)
            except Exception as error:  # the manager is unreachable for a moment: keep polling, jobs wait
                log.warning("task watcher: polling the Swarm failed: %s", error)
                await trio.sleep(self.interval * 5)
                continue
            self.polls += 1
            self._dispatch(tasks)
            with trio.move_on_after(self.interval):
                await self._poll_now.wait()
            self._poll_now = trio.Event()

    def _dispatch(self, tasks: list[TaskState]) -> None:
        # A service has one task at a time (restart condition none); prefer the newest non-terminal one.
        latest: dict[str, TaskState] = {}
        for task in tasks:
            if task.job_id in self._watchers:
                current = latest.get(task.job_id)
                if current is None or (current.terminal and not task.terminal):
                    latest[task.job_id] = task
        for job_id, task in latest.items():
            key = (task.task_id, task.state, task.exit_code)
            if self._last.get(job_id) != key:
                self._last[job_id] = key
                self._watchers[job_id].send_nowait(task)

"""LogRelay: one attempt's container output, from the Swarm manager's followed service log into the job's record.

Docker keeps each stream (stdout, stderr) in order, but not the two relative to each other. So the runner ends
each stream with a marker ("[cumulus] end of stdout"; "[cumulus] job finished|failed in ..." on stderr), and only
both markers prove that every line has been relayed.

The engine may say, inside the stream, that it cannot read the log (a ``"system"`` line such as "Error grabbing
logs: ... node ... is not available", as after a network cut: moby/moby#35011): the lines of that node then never
come on this stream. The relay follows the log again from its start, after a backoff, and skips the
lines of each stream it has already relayed, so each line reaches the caller once and in order.
"""

from __future__ import annotations

import time
import re
from typing import Callable

import trio

from cumulus import metrics
from cumulus.actors.job_calls import CALLS_READY_LINE
from cumulus.backends import SwarmBackend
from cumulus.checkpoint import CHECKPOINT_LINE
from cumulus.errors import CumulusError
from cumulus.jobs import JobRecord, JobState

#: The runner's last line ("[cumulus] job finished in 0.03 s", "... job failed in ...", "... job failed
#: (infrastructure) in ..."): every line before it has been relayed once it is seen.
END_OF_JOB_MARKER = re.compile(r"^\[cumulus\] job (finished|failed|paused)( \(infrastructure\))? in ")
#: The runner's last stdout line (after the job's own output; not relayed): with the stderr marker, all is in.
STDOUT_END_MARKER = "[cumulus] end of stdout"
LOG_IDLE_SECONDS = 1.0  # after the task ended, output without end markers is complete after this much quiet
LOG_DRAIN_MAX_SECONDS = 60.0  # ... and relaying stops at the latest this long after the task ended
#: Following the log again after the engine said it could not read it: this many times, the first after
#: LOG_REFOLLOW_BACKOFF_SECONDS, each wait twice the one before.
LOG_REFOLLOW_ATTEMPTS = 5
LOG_REFOLLOW_BACKOFF_SECONDS = 0.5


class LogRelay:
    """Relays one service's log into ``record``. ``on_end_of_job`` is called when the runner's last stderr line
    arrives (the container's exit follows it); ``on_checkpoint`` with the file name when the job's checkpoint line
    (``cumulus.checkpoint.CHECKPOINT_LINE``) arrives, and ``on_calls_ready`` when the job's calls socket serves
    (``cumulus.actors.job_calls.CALLS_READY_LINE``); both lines are relayed too."""

    def __init__(self, swarm: SwarmBackend, record: JobRecord, *, on_end_of_job: Callable[[], None],
                 on_checkpoint: Callable[[str], None] | None = None,
                 on_calls_ready: Callable[[], None] | None = None) -> None:
        self.swarm = swarm
        self.record = record
        self.on_end_of_job = on_end_of_job
        self.on_checkpoint = on_checkpoint
        self.on_calls_ready = on_calls_ready
        self.done = trio.Event()  #: every line has been relayed (both end markers came), or relaying ended
        self.finished = trio.Event()  #: the runner said the job finished (its result is written)
        self.lines_relayed = 0
        self._created = time.perf_counter()  # just after the service was: the first line's wait starts here
        self._seen = {"stdout": 0, "stderr": 0}  # lines of each stream taken from the log, markers included
        self._refollowing = False  # waiting to follow the log again, or skipping lines already relayed
        self._stdout_ended = self._stderr_ended = self._job_finished = False
        self._held_back: str | None = None

    async def run(self, service_id: str) -> None:
        """Relay until both end markers have come or the log stream ends (``done`` is set either way, also on
        cancellation). A log that cannot be followed is a message of the job, never its failure: logs are for
        humans. The runner's "[cumulus] job finished|failed" line is relayed last, after every line of the job's
        stdout (it is held back until the stdout end marker has come, or relaying ends)."""
        try:
            for attempt in range(LOG_REFOLLOW_ATTEMPTS + 1):
                problem = await self._follow(service_id)
                if problem is None or self.done.is_set():
                    return
                if attempt == LOG_REFOLLOW_ATTEMPTS:
                    self.record.add_message(f"log stream: {problem} (lines of the job may be missing)")
                    return
                self.record.add_message(f"log stream: {problem}; following the log again")
                self._refollowing = True
                await trio.sleep(LOG_REFOLLOW_BACKOFF_SECONDS * 2 ** attempt)
        except CumulusError as error:
            self.record.add_message(f"log stream ended: {error}")
        finally:
            self._refollowing = False
            if self._held_back is not None:  # the stdout end marker never came: it still belongs to the output
                self.record.add_log("stderr", self._held_back)
                self._held_back = None
            self.done.set()

    async def _follow(self, service_id: str) -> str | None:
        """Follow the log from its start, skipping the lines already taken; return the engine's message if it
        said that it cannot read the log, ``None`` if the stream ended or every line has been relayed."""
        skip = {stream: count for stream, count in self._seen.items() if count}  # empty on the first follow
        async with self.swarm.follow_logs(service_id) as lines:
            async for stream, line in lines:
                if stream == "system":
                    return line
                if skip and skip.get(stream):
                    skip[stream] -= 1
                    continue
                self._refollowing = False
                self._seen[stream] = self._seen.get(stream, 0) + 1
                self._take(stream, line)
                if self.done.is_set():
                    return None
        return None

    def _take(self, stream: str, line: str) -> None:
        self.record.set_state(JobState.RUNNING)  # output proves it runs, even before the next poll
        self.lines_relayed += 1
        if self.lines_relayed == 1:
            metrics.current().phase("first_log", time.perf_counter() - self._created)
        if stream == "stdout" and line == STDOUT_END_MARKER:
            self._stdout_ended = True  # the runner's, not the job's: not relayed
            if self._held_back is not None:
                self.record.add_log("stderr", self._held_back)
                self._held_back = None
        elif stream == "stderr" and (marker := END_OF_JOB_MARKER.match(line)):
            self._stderr_ended = True
            self._job_finished = marker.group(1) == "finished" and not marker.group(2)
            if self._stdout_ended:
                self.record.add_log(stream, line)
            else:
                self._held_back = line
            self.on_end_of_job()
        else:
            self.record.add_log(stream, line)
            if stream == "stderr" and self.on_checkpoint is not None and (saved := CHECKPOINT_LINE.match(line)):
                self.on_checkpoint(saved.group(1))
            elif stream == "stderr" and self.on_calls_ready is not None and CALLS_READY_LINE.match(line):
                self.on_calls_ready()
        if self._stdout_ended and self._stderr_ended:
            if self._job_finished:
                self.finished.set()
            self.done.set()

    async def drain(self) -> None:
        """After the task ended: wait until every line was relayed - the runner's end markers came - or, for
        output without them (a runner that was killed), until no line came for ``LOG_IDLE_SECONDS`` (while the
        log is not being followed again); at most ``LOG_DRAIN_MAX_SECONDS``, after which the job's messages
        say that lines may be missing."""
        deadline = trio.current_time() + LOG_DRAIN_MAX_SECONDS
        while not self.done.is_set():
            relayed = self.lines_relayed
            with trio.move_on_after(LOG_IDLE_SECONDS):
                await self.done.wait()
            if self.done.is_set() or (self.lines_relayed == relayed and not self._refollowing):
                return
            if trio.current_time() >= deadline:
                self.record.add_message(f"log relay stopped {LOG_DRAIN_MAX_SECONDS:g} s after the job ended, "
                                        f"after {self.lines_relayed} lines: later lines may be missing")
                return


__all__ = ["END_OF_JOB_MARKER", "LOG_DRAIN_MAX_SECONDS", "LOG_IDLE_SECONDS", "LOG_REFOLLOW_ATTEMPTS",
           "LOG_REFOLLOW_BACKOFF_SECONDS", "LogRelay", "STDOUT_END_MARKER"]

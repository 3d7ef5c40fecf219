"""A job's result as its attempt fetches it from the worker, and how a job that ended by itself ended
(:func:`conclude`): the size limit (what one gRPC message can deliver
to the caller), and what the job left in the result's place that is no result, as a typed outcome
(``FailureReason.INVALID_RESULT``, never retried: the job itself made it so).

The read itself is :meth:`cumulus.resources.files.JobFiles.fetch_result` (a regular file only, never through a
symbolic link, size checked before anything is read, bounded, in an SSH session of its own).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from cumulus.actors.checkpoint_step import RUNNER_EXIT_PAUSED
from cumulus.actors.outcome import COMPLETED, JobStopped, Outcome, PauseCause
from cumulus.config import Settings
from cumulus.jobs import FailureReason, JobRecord, JobState
from cumulus.resources.files import RESULT_NAME
from cumulus.resources.ssh import NotARegularFile, RemoteFileRefused, RemoteFileTooLarge
from cumulus.resources.swarm import TaskState

MAX_RESULT_BYTES = 256 * 1024 * 1024
RESULT_MESSAGE_ROOM = 64 * 1024  # what the gRPC message that carries a result needs around it


def result_limit(settings: Settings) -> int:
    """The largest result a job may leave: what one gRPC message can carry to its caller (``grpc.max_message_mb``,
    less room for the message around it), and at most ``MAX_RESULT_BYTES``."""
    return min(MAX_RESULT_BYTES, (settings.grpc.max_message_mb << 20) - RESULT_MESSAGE_ROOM)


async def fetch_result(files: Any, settings: Settings) -> bytes | None:
    """The result envelope the job left in its ``files`` (a :class:`~cumulus.resources.files.JobFiles`), or
    ``None`` if it left none.

    Raises :class:`JobStopped` with an INVALID_RESULT outcome (not retried) if the job left something that is not
    read: no regular file (a symbolic link, FIFO, directory, device), a file the worker cannot read, or more than
    :func:`result_limit` bytes; the reason says what and what to do. :class:`~cumulus.errors.CumulusError` (an
    SSH error) if the worker cannot be asked. Cancellation closes the read's session.
    """
    limit = result_limit(settings)
    try:
        envelope: bytes | None = await files.fetch_result(limit)
        return envelope
    except RemoteFileTooLarge as refused:
        detail = (f"the result is {refused.size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.1f} MiB that "
                  f"can be delivered (grpc.max_message_mb = {settings.grpc.max_message_mb}); return less, e.g. "
                  f"write large outputs to storage and return where they are")
    except NotARegularFile as refused:
        detail = (f"output/{RESULT_NAME} {refused.problem} (not read): the job must leave its result as the plain "
                  f"file the runner writes")
    except RemoteFileRefused as refused:
        detail = f"output/{RESULT_NAME} {refused.problem}"
    raise JobStopped(Outcome.failed(FailureReason.INVALID_RESULT, detail, retry=False))



async def conclude(record: JobRecord, task: TaskState | None, files: Any, settings: Settings,
                   pause_requested: Callable[[], Awaitable[bool]]) -> Outcome:
    """How a job that ended by itself ended, from its task's end and what it left. A completed job is recorded at
    once (its result reaches the caller before teardown); a failure is left to the retry policy. It paused if the
    runner said so (exit status 3, no result) and ``pause_requested()`` (a job's own ``os._exit(3)`` is a crash)."""
    if record.state is JobState.COMPLETED:  # concluded on the runner's last line already
        return COMPLETED
    envelope = await fetch_result(files, settings)
    assert task is not None  # only a COMPLETED job may be concluded without its task's end
    if task.exit_code == RUNNER_EXIT_PAUSED and envelope is None and await pause_requested():
        return Outcome.paused("returned after the pause request", PauseCause.RETURNED)
    if task.state == "complete" and task.exit_code == 0 and envelope is not None:
        record.set_result(envelope)
        record.set_state(JobState.COMPLETED)
        return COMPLETED
    if envelope is not None and task.exit_code == 1:
        return Outcome.failed(FailureReason.USER_EXCEPTION, result=envelope)
    detail = task.error or task.message or ""
    return Outcome.failed(FailureReason.CONTAINER_FAILED,
                          f"{task.state} (exit code {task.exit_code})" + (f": {detail}" if detail else ""),
                          result=envelope, retry=envelope is None)

__all__ = ["conclude", "MAX_RESULT_BYTES", "RESULT_MESSAGE_ROOM", "fetch_result", "result_limit"]

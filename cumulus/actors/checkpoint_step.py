"""A job's checkpoints and pause requests, as its attempts handle them.

* **Copy as written.** The in-job API (:mod:`cumulus.checkpoint`) saves into ``output/checkpoints`` on the worker
  and prints one line per checkpoint; the log relay hands its name to the attempt's :class:`CheckpointCopier`,
  which copies the newest one not yet copied into the supervisor's store (a
  :class:`~cumulus.resources.checkpoint_store.CheckpointStore`) and notes it in the job's events. Leaving
  :func:`open_checkpoint_copy` copies once more (after the container has stopped, before the job's files go),
  so a paused or stopped attempt's last checkpoint is never lost; a node that is gone loses only what it had
  not yet reported.
* **Restore.** Each attempt after the first starts from the newest stored checkpoint (:func:`restore_point`):
  it is uploaded next to the package and its step is in the attempt's events.
* **Pause.** :func:`request_pause` creates the file the job's ``cumulus.should_pause()`` looks for: in its lease
  dir when leases are on, else in its output dir (:func:`checkpoint_env` tells the job which).
"""

from __future__ import annotations

import logging
import posixpath
import shlex
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

import trio

from cumulus import metrics
from cumulus.checkpoint import CHECKPOINT_NAME
from cumulus.errors import CumulusError
from cumulus.jobs import CheckpointNote
from cumulus.resources.files import RESTORE_NAME
from cumulus.resources.ssh import RemotePathNotFound
from cumulus.resources.swarm_spec import CODE_MOUNT, LEASE_MOUNT, OUTPUT_MOUNT

if TYPE_CHECKING:
    from cumulus.actors.attempt import JobContext
    from cumulus.config import Settings
    from cumulus.resources.checkpoint_store import CheckpointStore, StoredCheckpoint

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"  # under the job's output dir
RUNNER_EXIT_PAUSED = 3  # the runner's exit status for a job that returned after it was asked to pause
PAUSE_IN_LEASE_DIR = "pause"
PAUSE_IN_OUTPUT_DIR = ".pause"


def checkpoint_env(settings: Settings, restored: StoredCheckpoint | None, *, leases: bool) -> dict[str, str]:
    """The environment that tells the in-job API where checkpoints go, where the restored one is, its size limit
    and where a pause request appears."""
    env = {"CUMULUS_CHECKPOINT_DIR": posixpath.join(OUTPUT_MOUNT, CHECKPOINTS_DIR),
           "CUMULUS_CHECKPOINT_MAX_BYTES": str(settings.jobs.max_checkpoint_mb << 20),
           "CUMULUS_PAUSE_FILE": (posixpath.join(LEASE_MOUNT, PAUSE_IN_LEASE_DIR) if leases
                                  else posixpath.join(OUTPUT_MOUNT, PAUSE_IN_OUTPUT_DIR))}
    if restored is not None:
        env["CUMULUS_CHECKPOINT_RESTORE"] = posixpath.join(CODE_MOUNT, RESTORE_NAME)
        env["CUMULUS_CHECKPOINT_RESTORE_STEP"] = str(restored.step)
    return env


async def restore_point(ctx: JobContext) -> tuple[StoredCheckpoint, bytes] | None:
    """The job's newest stored checkpoint and its bytes, or ``None`` (none stored, or no store). A store that
    cannot be read is an infrastructure failure of the attempt (:class:`CumulusError`), never a silent restart
    from step 0."""
    store = ctx.checkpoints
    if store is None:
        return None
    try:
        latest = await store.latest(ctx.record.job_id)
        return None if latest is None else (latest, await store.read(latest))
    except OSError as error:
        raise CumulusError(f"the job's checkpoint store cannot be read: {error}") from error


def pause_file(node: Any, files: Any, job_id: str) -> str:
    """Where the job's pause file is on its worker: in its lease dir, or (no leases) in its output dir."""
    lease_dir = node.lease_dir(job_id)
    return (posixpath.join(lease_dir, PAUSE_IN_LEASE_DIR) if lease_dir
            else posixpath.join(files.output_dir, PAUSE_IN_OUTPUT_DIR))


async def request_pause(node: Any, files: Any, job_id: str) -> None:
    """Create the job's pause file on its worker (idempotent). Raises :class:`CumulusError` (SSH)."""
    await files.conn.run(f"echo pause > {shlex.quote(pause_file(node, files, job_id))}", timeout=15)


async def pause_was_requested(node: Any, files: Any, job_id: str) -> bool:
    """Whether the job's pause file is on its worker, i.e. a supervisor asked it to pause (this one, or one before
    a restart). The runner's exit status :data:`RUNNER_EXIT_PAUSED` means a pause only then: a job's own process
    may exit with 3 too. Raises :class:`CumulusError` (SSH)."""
    res = await files.conn.run(f"test -e {shlex.quote(pause_file(node, files, job_id))}", timeout=15, check=False)
    return res.exit_status == 0


class CheckpointCopier:
    """Copies one attempt's checkpoints from its worker to the store. :meth:`saw` is called (by the log relay)
    for each checkpoint line; :meth:`run` copies while the attempt follows its job."""

    def __init__(self, ctx: JobContext, files: Any) -> None:
        self.ctx = ctx
        self.files = files
        self.copied: set[str] = set()  # names copied, or superseded by a newer one that was
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one copy at a time: run() and the final copy on release

    def saw(self, name: str) -> None:
        if CHECKPOINT_NAME.fullmatch(name) and name not in self.copied:
            self._wake.set()

    async def run(self) -> None:
        """Copy each time a checkpoint line came, until cancelled. A copy that fails is logged and retried at the
        next line or on release: the job goes on."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.copy_newest()
            except (CumulusError, OSError) as error:
                log.warning("%s: checkpoint not copied yet: %s", self.ctx.name, error)

    async def copy_newest(self) -> bool:
        """Copy the newest checkpoint on the worker that is not copied yet; whether one was. Raises
        :class:`CumulusError` (SSH) or :class:`OSError` (the store)."""
        store = self.ctx.checkpoints
        if store is None:
            return False
        async with self._lock:
            folder = posixpath.join(self.files.output_dir, CHECKPOINTS_DIR)
            listing = await self.files.conn.run(f"ls -1A -- {shlex.quote(folder)} 2>/dev/null", check=False)
            names = sorted(n for n in listing.stdout.split() if CHECKPOINT_NAME.fullmatch(n))
            fresh = [n for n in names if n not in self.copied]
            if not fresh:
                return False
            newest = fresh[-1]
            limit = self.ctx.settings.jobs.max_checkpoint_mb << 20
            try:
                data = await self.files.conn.get_bytes(posixpath.join(folder, newest), limit)
            except RemotePathNotFound:  # replaced by a newer one meanwhile: its own line follows
                return False
            match = CHECKPOINT_NAME.fullmatch(newest)
            assert match is not None
            stored = await store.put(self.ctx.record.job_id, int(match.group(2)), data)
            kept = len(await store.list(self.ctx.record.job_id))
            self.copied.update(names[:names.index(newest) + 1])
            self.ctx.record.note_checkpoint(CheckpointNote(stored.step, stored.size), kept)
            metrics.current().checkpoints.inc()
            metrics.current().checkpoint_bytes.inc(stored.size)
            return True


@asynccontextmanager
async def open_checkpoint_copy(ctx: JobContext, files: Any) -> AsyncIterator[CheckpointCopier]:
    """A copier for the attempt's checkpoints; on exit (shielded, bounded by ``jobs.release_timeout``) the newest
    checkpoint not yet copied is copied. A final copy that fails is logged and said in the job's events: the job
    then goes on from the checkpoint before it."""
    copier = CheckpointCopier(ctx, files)
    try:
        yield copier
    finally:
        if ctx.checkpoints is not None:
            with trio.move_on_after(ctx.settings.jobs.release_timeout, shield=True) as bounded:
                try:
                    await copier.copy_newest()
                except (CumulusError, OSError) as error:
                    log.warning("%s: the last checkpoint could not be copied: %s", ctx.name, error)
                    ctx.record.add_message(f"its last checkpoint could not be copied from its worker: {error}")
            if bounded.cancelled_caught:
                ctx.record.add_message("its last checkpoint could not be copied from its worker in time")


async def load_checkpoint_info(store: CheckpointStore | None, record: Any) -> None:
    """After a supervisor restart: what the store keeps of the job's checkpoints (its status shows them)."""
    if store is None:
        return
    try:
        stored = await store.list(record.job_id)
    except OSError as error:
        log.warning("job %s: its checkpoints cannot be listed: %s", record.job_id, error)
        return
    if stored:
        record.checkpoint_step, record.checkpoints = stored[-1].step, len(stored)


async def remove_checkpoints(store: CheckpointStore | None, record: Any, timeout: float, released: list[str],
                             leaked: list[str]) -> None:
    """The job ended: its checkpoints leave the store (shielded, within ``timeout``), said in its teardown."""
    if store is None:
        return
    with trio.move_on_after(timeout, shield=True) as bounded:
        try:
            if await store.remove_job(record.job_id):
                released.append("checkpoints")
        except OSError as error:
            leaked.append(f"checkpoints: {error}")
    if bounded.cancelled_caught:
        leaked.append("checkpoints: not removed in time")


__all__ = ["CHECKPOINTS_DIR", "RUNNER_EXIT_PAUSED", "CheckpointCopier", "checkpoint_env", "load_checkpoint_info",
           "open_checkpoint_copy", "pause_file", "pause_was_requested", "remove_checkpoints", "request_pause",
           "restore_point"]

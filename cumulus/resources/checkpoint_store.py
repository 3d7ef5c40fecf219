"""The supervisor's checkpoint store: where a job's checkpoints live between its attempts.

The job saves checkpoints into its output directory on the worker (:mod:`cumulus.checkpoint`); the supervisor's
log relay copies each one here as it is written, and a retried or resumed attempt gets the latest one back as its
restore file. :class:`CheckpointStore` is what the supervisor needs of a store (so an S3-compatible one can follow);
:class:`LocalCheckpointStore`, the embedded default, keeps them in a directory next to the journal
(:func:`store_root_for`)::

    <root>/<job_id>/<seq:010d>-<step>.ckpt     one checkpoint (mode 0600; the directories 0700)
    <root>/<job_id>/.tmp-*                     one being written (never listed, never read)

``seq`` numbers a job's checkpoints from 1 (the newest existing + 1, so it goes on after a restart of the
supervisor); only the newest ``keep`` of a job stay. A checkpoint appears whole or not at all (written to a temp
file, fsynced, renamed, the directory fsynced). Blocking file I/O runs in a worker thread (``trio.to_thread``).
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import trio

from cumulus.config import Settings
from cumulus.resources.files import check_job_id

CHECKPOINT_FILE = re.compile(r"^(\d{10})-(\d+)\.ckpt$")
TEMP_PREFIX = ".tmp-"
DIRNAME = "checkpoints"
DEFAULT_KEEP = 3


@dataclass(frozen=True)
class StoredCheckpoint:
    """One stored checkpoint of a job: its place in the job's sequence, the job's step, its size in bytes and
    when it was stored (``time.time()``; for a listed file, its modification time)."""

    job_id: str
    seq: int
    step: int
    size: int
    saved_at: float


class CheckpointStore(Protocol):
    """What the supervisor needs of a checkpoint store. Every method raises
    :class:`~cumulus.errors.InvalidRequest` for an invalid job id."""

    async def put(self, job_id: str, step: int, data: bytes) -> StoredCheckpoint:
        """Store ``data`` as the job's newest checkpoint (whole or not at all); older ones beyond the store's
        retention go."""
        ...

    async def latest(self, job_id: str) -> StoredCheckpoint | None:
        """The job's newest checkpoint, None when it has none."""
        ...

    async def read(self, checkpoint: StoredCheckpoint) -> bytes:
        """The bytes of a stored checkpoint; FileNotFoundError (or the store's own error) when it is gone."""
        ...

    async def list(self, job_id: str) -> list[StoredCheckpoint]:
        """The job's checkpoints, oldest first."""
        ...

    async def remove_job(self, job_id: str) -> int:
        """Remove all of the job's checkpoints; how many there were (idempotent: 0 the second time)."""
        ...


def store_root_for(journal_path: str) -> str:
    """The local store's root for a journal at ``journal_path``: ``<directory of the journal>/checkpoints``. For
    an in-memory journal (``":memory:"``) the empty string, meaning: use a temporary directory (nothing of such a
    supervisor outlives it, its checkpoints neither)."""
    if journal_path == ":memory:" or not journal_path:
        return ""
    return str(Path(journal_path).resolve().parent / DIRNAME)


@contextmanager
def open_local_checkpoints(settings: Settings) -> Iterator[LocalCheckpointStore]:
    """The embedded store of a supervisor with ``settings``: next to its journal, or in a temporary directory
    (removed on exit) for an in-memory journal; keeping ``jobs.checkpoint_retention`` per job."""
    keep = settings.jobs.checkpoint_retention
    root = store_root_for(os.path.expanduser(settings.journal.path))
    if root:
        yield LocalCheckpointStore(root, keep=keep)
        return
    with tempfile.TemporaryDirectory(prefix="cumulus-checkpoints-") as temporary:
        yield LocalCheckpointStore(temporary, keep=keep)


class LocalCheckpointStore:
    """:class:`CheckpointStore` in a local directory (``root``, created mode 0700 on the first put), keeping the
    newest ``keep`` checkpoints of each job."""

    def __init__(self, root: str | os.PathLike[str], keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.root = Path(root)
        self.keep = keep
        self._put_lock = trio.Lock()  # two puts of this store never pick the same seq

    async def put(self, job_id: str, step: int, data: bytes) -> StoredCheckpoint:
        check_job_id(job_id)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be a non-negative int, not {step!r}")
        async with self._put_lock:
            return await trio.to_thread.run_sync(self._put_sync, job_id, step, data)

    async def latest(self, job_id: str) -> StoredCheckpoint | None:
        found = await self.list(job_id)
        return found[-1] if found else None

    async def read(self, checkpoint: StoredCheckpoint) -> bytes:
        path = self._path(checkpoint)
        return await trio.to_thread.run_sync(path.read_bytes)

    async def list(self, job_id: str) -> list[StoredCheckpoint]:
        check_job_id(job_id)
        return await trio.to_thread.run_sync(self._list_sync, job_id)

    async def remove_job(self, job_id: str) -> int:
        check_job_id(job_id)
        return await trio.to_thread.run_sync(self._remove_sync, job_id)

    # ---- blocking halves (in a worker thread) ------------------------------------------------------------------

    def _job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _path(self, checkpoint: StoredCheckpoint) -> Path:
        check_job_id(checkpoint.job_id)
        return self._job_dir(checkpoint.job_id) / f"{checkpoint.seq:010d}-{checkpoint.step}.ckpt"

    def _put_sync(self, job_id: str, step: int, data: bytes) -> StoredCheckpoint:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        job_dir = self._job_dir(job_id)
        job_dir.mkdir(mode=0o700, exist_ok=True)
        existing = self._list_sync(job_id)
        seq = existing[-1].seq + 1 if existing else 1
        final = job_dir / f"{seq:010d}-{step}.ckpt"
        tmp = job_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(job_dir)
        stored = StoredCheckpoint(job_id, seq, step, len(data), time.time())
        for old in [*existing, stored][:-self.keep]:
            self._path(old).unlink(missing_ok=True)
        return stored

    def _list_sync(self, job_id: str) -> builtins.list[StoredCheckpoint]:  # the method list shadows the type here
        job_dir = self._job_dir(job_id)
        try:
            entries = list(os.scandir(job_dir))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            match = CHECKPOINT_FILE.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue  # temp files, foreign names, anything that is not a plain file
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                continue
            found.append(StoredCheckpoint(job_id, int(match.group(1)), int(match.group(2)), st.st_size,
                                          st.st_mtime))
        return sorted(found, key=lambda c: c.seq)

    def _remove_sync(self, job_id: str) -> int:
        job_dir = self._job_dir(job_id)
        count = len(self._list_sync(job_id))
        shutil.rmtree(job_dir, ignore_errors=True)
        return count


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system allows fsync of a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

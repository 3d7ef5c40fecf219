"""Checkpoints and pause, the in-job half: what a job's function calls while it runs.

    import cumulus

    def train(total):
        state = cumulus.checkpoint.load() or {"next": 0, "model": new_model()}  # resumed: the last one saved
        while state["next"] < total:
            state = train_one_step(state)                      # advances state["next"]
            if state["next"] % 100 == 0 or cumulus.should_pause():
                cumulus.checkpoint.save(state, step=state["next"])
                if cumulus.should_pause():
                    return None                                # paused: resumed later from this checkpoint
        return state["model"]

Contract:

- ``save(obj, step=None)`` pickles ``obj`` (cloudpickle, protocol 5) into ``$CUMULUS_CHECKPOINT_DIR`` as
  ``ckpt-<seq:08d>-<step>.bin``. Atomic: the bytes go to a ``.tmp-*`` file of the same directory, are fsynced, and
  only then renamed to their final name, so a half-written checkpoint is never loaded (a crash mid-save leaves the
  previous one in place). Bounded: a checkpoint larger than ``$CUMULUS_CHECKPOINT_MAX_BYTES`` (the supervisor's
  ``jobs.max_checkpoint_mb``; 256 MiB by default) raises :class:`CheckpointTooLarge` and writes nothing. Only the
  newest two checkpoints stay in the directory. Each save then prints one line to stderr,
  ``[cumulus] checkpoint <name> (<size> bytes)`` (:data:`CHECKPOINT_LINE`): the supervisor's log relay copies the
  file to its checkpoint store when it sees that line, so a retried or resumed attempt's ``load()`` returns the
  last checkpoint copied (``$CUMULUS_CHECKPOINT_RESTORE``) until it saves one of its own.
- ``load()`` returns the newest checkpoint this attempt saved, else the one it was restored from, else None.
- ``should_pause()`` says whether the supervisor asked the job to pause (the file ``$CUMULUS_PAUSE_FILE`` exists;
  a stat per call, cheap enough for every step). A job that saw True (or saved after the pause was asked) and then
  returns is paused, not finished: the runner asks :func:`pause_acknowledged` and writes no result.

Harmless outside a job (``$CUMULUS_CHECKPOINT_DIR`` unset: run locally, in a test, in a notebook): ``save`` writes
nothing and returns None (a bad ``step`` is still refused, as it would be in the job), ``load`` returns None,
``should_pause`` returns False. The same code runs unchanged on the client and in the job.

Standalone (the standard library only; cloudpickle when it is there, imported on the first save): the worker image
carries a byte-identical copy (worker_image/image/jobapi/cumulus/checkpoint.py, tests/test_checkpoint_copy.py), so
a job finds it in any image as ``cumulus.checkpoint``.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import threading
from typing import Any

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{8})-(\d+)\.bin$")
CHECKPOINT_LINE = re.compile(r"^\[cumulus\] checkpoint (ckpt-\d{8}-\d+\.bin) \((\d+) bytes\)$")
TEMP_PREFIX = ".tmp-"  # never matches CHECKPOINT_NAME: a file being written is never loaded
MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 256 * MiB
KEEP = 2  # the newest and the one before: the supervisor may still be copying it when the next one lands

DIR_ENV = "CUMULUS_CHECKPOINT_DIR"
RESTORE_ENV = "CUMULUS_CHECKPOINT_RESTORE"
RESTORE_STEP_ENV = "CUMULUS_CHECKPOINT_RESTORE_STEP"
MAX_BYTES_ENV = "CUMULUS_CHECKPOINT_MAX_BYTES"
PAUSE_FILE_ENV = "CUMULUS_PAUSE_FILE"

_lock = threading.Lock()  # saves from several threads get distinct sequence numbers and steps
_seq = 0  # the sequence number of this process's last save
_last_step: int | None = None  # the step of this process's last save
_pause_acknowledged = False


class CheckpointTooLarge(ValueError):
    """A checkpoint is larger than the job's limit (``$CUMULUS_CHECKPOINT_MAX_BYTES``); nothing was written."""


def checkpoint_name_step(name: str) -> int:
    """The step in a checkpoint file name ``ckpt-<seq:08d>-<step>.bin``; ValueError for any other name."""
    match = CHECKPOINT_NAME.match(name)
    if match is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return int(match.group(2))


def max_bytes() -> int:
    """The size limit of one checkpoint: ``$CUMULUS_CHECKPOINT_MAX_BYTES``, 256 MiB when unset or invalid."""
    try:
        limit = int(os.environ.get(MAX_BYTES_ENV, ""))
    except ValueError:
        return DEFAULT_MAX_BYTES
    return limit if limit > 0 else DEFAULT_MAX_BYTES


def save(obj: Any, step: int | None = None) -> int | None:
    """Save ``obj`` as the job's newest checkpoint, atomically; return its step (None outside a job).

    ``step`` is a non-negative int, or None for the previous step + 1 (the previous: this process's last save,
    else the step this attempt was restored from, else -1, so the first is 0). Raises TypeError or ValueError for
    a bad step, :class:`CheckpointTooLarge` over the size limit, OSError when the directory cannot be written
    (the previous checkpoint then stays the newest)."""
    global _seq, _last_step
    _check_step(step)
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return None
    data = _dumps(obj)
    limit = max_bytes()
    if len(data) > limit:
        raise CheckpointTooLarge(
            f"checkpoint of {len(data)} bytes ({len(data) / MiB:.1f} MiB) is over the limit of {limit / MiB:g} MiB: "
            f"save less (e.g. model and optimizer state only) or ask the operator to raise jobs.max_checkpoint_mb")
    with _lock:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if step is None:
            previous = _last_step if _last_step is not None else _restored_step()
            step = (previous if previous is not None else -1) + 1
        # After this attempt's own files: a directory that already holds checkpoints keeps them in order.
        seq = max([_seq, *(s for s, _ in _checkpoints(directory))]) + 1
        name = f"ckpt-{seq:08d}-{step}.bin"
        _write_atomically(directory, name, data)
        _seq, _last_step = seq, step
        for _, old in _checkpoints(directory)[:-KEEP]:
            try:
                os.unlink(os.path.join(directory, old))
            except OSError:  # already gone, or not ours to remove: it is only space
                pass
    if _pause_requested():
        _acknowledge_pause()
    _announce(f"[cumulus] checkpoint {name} ({len(data)} bytes)\n")
    return step


def load() -> Any | None:
    """The newest checkpoint: this attempt's latest save, else the one it was restored from, else None (and None
    outside a job). Unpickled with :func:`pickle.loads` (what cloudpickle wrote loads so)."""
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return None
    while True:
        mine = _checkpoints(directory)
        if not mine:
            break
        try:
            with open(os.path.join(directory, mine[-1][1]), "rb") as f:
                data = f.read()
        except FileNotFoundError:  # pruned by a save in another thread since the listing: a newer one exists
            continue
        return pickle.loads(data)
    restore = os.environ.get(RESTORE_ENV)
    if not restore:
        return None
    try:
        with open(restore, "rb") as f:
            return pickle.loads(f.read())
    except FileNotFoundError:
        return None


def latest_step() -> int | None:
    """The step of what :func:`load` returns: None when it returns None (or when the restored checkpoint's step
    was not given)."""
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return None
    mine = _checkpoints(directory)
    if mine:
        return checkpoint_name_step(mine[-1][1])
    restore = os.environ.get(RESTORE_ENV)
    if not restore or not os.path.isfile(restore):
        return None
    return _restored_step()


def should_pause() -> bool:
    """Whether the supervisor asks the job to pause (``$CUMULUS_PAUSE_FILE`` exists; False outside a job). True
    also acknowledges the pause: returning from the job's function then pauses the job instead of finishing it,
    so save a checkpoint first."""
    if not _pause_requested():
        return False
    _acknowledge_pause()
    return True


def pause_acknowledged() -> bool:
    """Whether this process answered True to :func:`should_pause`, or saved a checkpoint after the pause was
    asked (the runner asks when the job's function has returned)."""
    return _pause_acknowledged


# ---- internals ------------------------------------------------------------------------------------------------


def _check_step(step: object) -> None:
    if step is None:
        return
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"checkpoint step must be a non-negative int or None, not {type(step).__name__}")
    if step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int or None, not {step}")


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle  # lazily: `import cumulus` stays cheap, and a job without cloudpickle still saves
    except ImportError:
        return pickle.dumps(obj, protocol=5)
    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def _restored_step() -> int | None:
    try:
        step = int(os.environ.get(RESTORE_STEP_ENV, ""))
    except ValueError:
        return None
    return step if step >= 0 else None


def _checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(seq, name)`` of the checkpoint files in ``directory``, oldest first (temp files never count)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = CHECKPOINT_NAME.match(name)
        if match is not None:
            found.append((int(match.group(1)), name))
    return sorted(found)


def _write_atomically(directory: str, name: str, data: bytes) -> None:
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(8).hex()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # not tempfile: its import costs the job 6 ms
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash of the node (best effort: not every file system allows it)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _announce(line: str) -> None:
    """Write ``line`` to the process's stderr (fd 2) in one write, after what Python's stderr holds: the
    supervisor's log relay copies the checkpoint when it sees the line, so it must arrive whole even when the job
    replaced ``sys.stderr`` (a redirect, a progress bar)."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed by the job: nothing held there
            pass
    try:
        os.write(2, line.encode())
    except OSError:  # no stderr at all (closed by the job): no relay to tell; the checkpoint is saved anyway
        pass


def _pause_requested() -> bool:
    pause_file = os.environ.get(PAUSE_FILE_ENV)
    if not pause_file:
        return False
    return os.path.exists(pause_file)


def _acknowledge_pause() -> None:
    global _pause_acknowledged
    _pause_acknowledged = True

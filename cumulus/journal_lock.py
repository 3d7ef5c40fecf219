"""The journal's lock: one process at a time uses a journal file (a supervisor, or ``cumulus journal restore``).

Two supervisors writing one SQLite journal would each believe they own every job in it (re-adopting, tearing
down and retrying the same jobs twice), and a restore under a running supervisor would swap the file under its
open connection. So whoever opens the journal to use it takes an exclusive, non-blocking ``fcntl.flock`` on the
lock file next to it, ``<journal>.lock`` (mode 0600), and writes its pid and role into it; a second process is
refused with :class:`JournalInUse`, which names the holder's pid. The kernel drops the lock when the holder's
file descriptor closes, so a killed supervisor never leaves a stale lock (the file itself stays: deleting it
would let two processes lock two different files of one name).

The supervisor holds it for its whole life (:func:`holding`, from :func:`cumulus.app.open_supervisor`, before any
part of the tree starts), and every connection :func:`cumulus.journal.open_database` makes holds it too. Within one
process the lock is shared: the journal, token and join-token actors each open the database, and a one-for-all
restart reopens one while the others stay open, so holds are counted per journal and the lock is released with
the last one. ``cumulus journal backup`` takes no lock: it reads a consistent snapshot while the supervisor runs.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cumulus.errors import ConfigError

SUPERVISOR = "cumulus supervisor"


class JournalInUse(ConfigError):
    """Another process holds the journal's lock. ``pid`` is its process id (0 if the lock file does not say)."""

    def __init__(self, journal: str, pid: int, role: str) -> None:
        self.journal, self.pid, self.role = journal, pid, role
        holder = f"{role or 'another process'} (pid {pid})" if pid else (role or "another process")
        super().__init__("journal.path", f"{journal} is in use by {holder}, which holds {lock_path(journal)}; "
                                         "stop it first, or give this supervisor its own journal.path")


def lock_path(journal: str | os.PathLike[str]) -> Path:
    return Path(f"{journal}.lock")


class _Held:
    def __init__(self, fd: int, role: str) -> None:
        self.fd, self.role = fd, role
        self.count = 0


_held: dict[str, _Held] = {}  # realpath of the journal -> the lock this process holds on it
_guard = threading.Lock()  # the journal's connections are opened from worker threads


class JournalHold:
    """One hold on a journal's lock; :meth:`release` is idempotent (the lock goes with the process's last hold)."""

    def __init__(self, key: str) -> None:
        self._key: str | None = key

    def release(self) -> None:
        with _guard:
            key, self._key = self._key, None
            held = _held.get(key) if key is not None else None
            if held is None:
                return
            held.count -= 1
            if held.count <= 0:
                del _held[key]  # type: ignore[arg-type]
                os.close(held.fd)  # closing the descriptor drops the flock

    @property
    def released(self) -> bool:
        return self._key is None

    def __enter__(self) -> JournalHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(journal: str | os.PathLike[str], role: str = SUPERVISOR, *, shared: bool = True) -> JournalHold:
    """Take (or share, within this process) the lock of ``journal``; :class:`JournalInUse` if another process
    holds it, or if ``shared`` is false and this process holds it already. The journal's directory must exist."""
    key = os.path.realpath(journal)
    with _guard:
        held = _held.get(key)
        if held is not None and not shared:
            raise JournalInUse(str(journal), os.getpid(), f"this process ({held.role})")
        if held is None:
            path = lock_path(key)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, holder = _read_holder(fd)
                os.close(fd)
                raise JournalInUse(str(journal), pid, holder) from None
            except BaseException:
                os.close(fd)
                raise
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
            held = _held[key] = _Held(fd, role)
        held.count += 1
        return JournalHold(key)


@contextmanager
def holding(journal: str, role: str = SUPERVISOR) -> Iterator[None]:
    """Hold ``journal``'s lock for the block (the supervisor's whole life, so that a restart of the part of its tree
    that owns the database never lets go of it); nothing for ``:memory:``. Makes the journal's directory (0700)."""
    if journal == ":memory:":
        yield
        return
    path = Path(journal).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with acquire(path, role):
        yield


class LockedConnection(sqlite3.Connection):
    """An SQLite connection that holds its journal's lock until it is closed (or garbage-collected)."""

    hold: JournalHold | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.hold is not None:
                self.hold.release()


def connect(journal: str, role: str = SUPERVISOR, **kwargs: Any) -> LockedConnection:
    """``sqlite3.connect(journal, **kwargs)`` holding the journal's lock: :class:`JournalInUse` if another process
    uses the journal."""
    hold = acquire(journal, role)
    try:
        db = sqlite3.connect(journal, factory=LockedConnection, **kwargs)
    except BaseException:
        hold.release()
        raise
    db.hold = hold
    weakref.finalize(db, hold.release)  # a connection dropped without close() releases its hold too
    return db


def _read_holder(fd: int) -> tuple[int, str]:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return 0, ""
    pid, _, role = text.partition(" ")
    return (int(pid), role) if pid.isdigit() else (0, "")


__all__ = ["JournalHold", "JournalInUse", "LockedConnection", "SUPERVISOR", "acquire", "connect", "holding",
           "lock_path"]

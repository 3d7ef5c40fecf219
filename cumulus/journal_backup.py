"""Backup and restore of the journal file (``cumulus journal backup|restore``, on the supervisor's machine).

**Backup** copies the journal with SQLite's online backup API while the supervisor runs. It reads one snapshot:
a read transaction is held on the source for the whole copy, so the copy is consistent even while the supervisor
writes (in WAL mode a reader never blocks the writer; the only cost is that the WAL cannot be checkpointed past the
snapshot until the copy ends), and the copy goes in steps of ``pages_per_step`` pages (without the held snapshot,
each write by the supervisor would restart the copy from the first page, and under steady load it might never end).
The copy is written to a temporary file next to the target, checked (``PRAGMA integrity_check``), made a single
self-contained file (rollback journal mode, no -wal), flushed to disk and renamed over the target, mode 0600: a
backup holds job packages, results and token hashes. It does not hold the key that seals the jobs' secret env
values (``security.secret_key_file``, else ``journal.key`` next to the journal); ``with_key`` copies that key next
to the backup, where a journal at the backup's path would look for it (``<backup stem>.key``, 0600).

**Restore** takes the journal's lock (:mod:`cumulus.journal_lock`: refused while a supervisor uses the journal),
copies the backup next to the journal through the same API, checks that it is a Cumulus journal (its tables) and
intact, and replaces the journal atomically with a rename; the previous journal (checkpointed first, so it is one
file) is kept as ``<journal>.before-restore-<UTC time>`` unless ``keep=False``, and its -wal/-shm files are moved
or removed while the lock is held (a stale WAL next to the new file would be replayed into it). The next supervisor
start recovers the restored journal's unfinished jobs as after a crash.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from cumulus import journal_lock
from cumulus.errors import CumulusError
from cumulus.jobs import JobState

PAGES_PER_STEP = 1024  # 4 MiB of 4 KiB pages per step
REQUIRED_COLUMNS = {"jobs": {"job_id", "spec", "package", "state", "result"}, "tokens": {"name", "hash"}}
RESTORE_ROLE = "cumulus journal restore"
TERMINAL = frozenset(state.value for state in JobState if state.terminal)
Progress = Callable[[int, int], None]  # (pages copied, pages in all)


class JournalBackupError(CumulusError):
    """A backup or restore was refused or failed; the message says why and what to do. Nothing was replaced."""


@dataclass(frozen=True)
class JournalSummary:
    """What a journal file holds."""

    path: str
    size_bytes: int
    jobs_by_state: tuple[tuple[str, int], ...]
    tables: tuple[tuple[str, int], ...]  # every table's row count, by name
    tokens_active: int
    sealed_secret_jobs: int  # jobs whose secret env values are sealed with the journal's key

    @property
    def jobs(self) -> int:
        return sum(count for _, count in self.jobs_by_state)

    @property
    def unfinished(self) -> int:
        return sum(count for state, count in self.jobs_by_state if state not in TERMINAL)


@dataclass(frozen=True)
class BackupReport:
    summary: JournalSummary
    source: str
    seconds: float
    key_copy: str = ""  # where the key was copied (with_key), else ""
    key_file: str = ""  # the key that seals the journal's secret env values (not in the backup)


@dataclass(frozen=True)
class RestoreReport:
    summary: JournalSummary
    journal: str
    kept_as: str = ""  # the previous journal's new name ("" when there was none, or keep=False)
    key_installed: str = ""
    key_kept_as: str = ""
    unreadable_secret_jobs: int = 0  # sealed with another key than the journal's
    key_file: str = ""  # the journal's key, "" when it cannot be read here (then nothing could be checked)


def key_file_for(journal: str | os.PathLike[str], secret_key_file: str = "") -> Path:
    """The key file that seals ``journal``'s secret env values: the rule of :func:`cumulus.app.journal_secrets`."""
    return Path(secret_key_file or Path(journal).expanduser().with_suffix(".key")).expanduser()


def backup(journal: str, target: str, *, key_file: str | os.PathLike[str] | None = None, with_key: bool = False,
           pages_per_step: int = PAGES_PER_STEP, progress: Progress | None = None) -> BackupReport:
    """Copy ``journal`` to ``target`` consistently while a supervisor may be writing it (see the module doc)."""
    source_path, target_path = _file_journal(journal), Path(target).expanduser()
    key = Path(key_file) if key_file else key_file_for(source_path)
    if not source_path.is_file():
        raise JournalBackupError(f"no journal at {source_path}: give the supervisor's --config, or --journal PATH")
    if target_path.is_dir():
        raise JournalBackupError(f"{target_path} is a directory: give the backup's file name")
    if target_path.resolve() in {Path(f"{source_path}{s}").resolve() for s in ("", "-wal", "-shm", ".lock")}:
        raise JournalBackupError(f"{target_path} is the journal itself: back up to another file")
    if with_key and not key.is_file():
        raise JournalBackupError(f"--with-key: no key file at {key} (give the supervisor's --config if it sets "
                                 "security.secret_key_file)")
    started = time.monotonic()
    target_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = _open_read_only(source_path)
    try:
        check_journal(source, source_path)
        summary = _copy_checked(source, source_path, target_path, pages_per_step, progress)
    finally:
        source.close()
    key_copy = ""
    if with_key:
        copy = target_path.with_suffix(".key")
        if copy.resolve() != key.resolve():
            _write_atomically(copy, key.read_bytes())
        key_copy = str(copy)
    return BackupReport(summary, str(source_path), time.monotonic() - started, key_copy, str(key))


def restore(backup_file: str, journal: str, *, keep: bool = True, key_file: str | os.PathLike[str] | None = None,
            with_key: bool = False, now: float | None = None) -> RestoreReport:
    """Replace ``journal`` with ``backup_file`` (see the module doc); :class:`JournalBackupError` if refused."""
    journal_path, source_path = _file_journal(journal), Path(backup_file).expanduser()
    key = Path(key_file) if key_file else key_file_for(journal_path)
    backup_key = source_path.with_suffix(".key")
    if not source_path.is_file():
        raise JournalBackupError(f"no backup at {source_path}")
    if source_path.resolve() == journal_path.resolve():
        raise JournalBackupError(f"{source_path} is the journal itself")
    if with_key and not backup_key.is_file():
        raise JournalBackupError(f"--with-key: no key next to the backup ({backup_key}); `cumulus journal backup "
                                 "--with-key` puts it there")
    journal_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        hold = journal_lock.acquire(journal_path, RESTORE_ROLE, shared=False)
    except journal_lock.JournalInUse as error:
        raise JournalBackupError(f"refusing to restore: {error.journal} is in use by {error.role or 'a process'} "
                                 f"(pid {error.pid}); stop the supervisor first (nothing was changed)") from None
    with hold:
        source = _open_read_only(source_path)
        try:
            check_journal(source, source_path)
            temporary = _temporary_next_to(journal_path)
            try:
                summary = _copy_checked(source, source_path, temporary, PAGES_PER_STEP, None, rename=False)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        finally:
            source.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        kept_as = _replace_journal(journal_path, temporary, stamp, keep)
        key_installed = key_kept_as = ""
        if with_key and backup_key.resolve() != key.resolve():
            if key.exists():
                key_kept_as = _keep(key, f"{key}.before-restore-{stamp}")
            _write_atomically(key, backup_key.read_bytes())
            _same_owner(like=journal_path, paths=(key,))
            key_installed = str(key)
        unreadable = _unreadable_secrets(journal_path, key)
    return RestoreReport(replace(summary, path=str(journal_path)), str(journal_path), kept_as, key_installed,
                         key_kept_as, unreadable or 0, "" if unreadable is None else str(key))


def check_journal(db: sqlite3.Connection, path: Path) -> None:
    """:class:`JournalBackupError` unless ``db`` is an SQLite database with a Cumulus journal's tables."""
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, needed in REQUIRED_COLUMNS.items():
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")} if table in tables else set()
            if not needed <= columns:
                raise JournalBackupError(f"{path} is not a Cumulus journal (no {table} table with columns "
                                         f"{', '.join(sorted(needed))})")
    except sqlite3.DatabaseError as error:
        raise JournalBackupError(f"{path} is not a readable SQLite database: {error}") from None


def summarize(db: sqlite3.Connection, path: Path) -> JournalSummary:
    names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    tables = tuple((name, db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]) for name in names)
    states = tuple(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").fetchall())
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    sealed = (db.execute("SELECT COUNT(*) FROM jobs WHERE secret_env IS NOT NULL").fetchone()[0]
              if "secret_env" in columns else 0)
    tokens = db.execute("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL").fetchone()[0]
    return JournalSummary(str(path), path.stat().st_size, tuple((s, n) for s, n in states), tables, tokens, sealed)


# ---- internals ----------------------------------------------------------------------------------------------------


def _file_journal(journal: str) -> Path:
    if journal == ":memory:" or journal.startswith("file::memory:"):
        raise JournalBackupError("journal.path is ':memory:': an in-memory journal lives only inside its supervisor "
                                 "process and has nothing on disk to back up or restore")
    return Path(journal).expanduser().absolute()


def _open_read_only(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise JournalBackupError(f"cannot open {path}: {error}") from None


def _temporary_next_to(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    os.close(fd)
    return Path(name)


def _copy_checked(source: sqlite3.Connection, source_path: Path, target: Path, pages_per_step: int,
                  progress: Progress | None, *, rename: bool = True) -> JournalSummary:
    """Copy ``source``'s snapshot to ``target`` (through a temporary file renamed over it when ``rename``), check
    the copy, and summarize it."""
    temporary = _temporary_next_to(target) if rename else target
    try:
        copy = sqlite3.connect(temporary, isolation_level=None)
        try:
            source.execute("BEGIN")
            source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts here
            source.backup(copy, pages=max(1, pages_per_step),
                          progress=(lambda _, left, total: progress(total - left, total)) if progress else None)
            source.execute("COMMIT")
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise JournalBackupError(f"{source_path} fails its integrity check (is it damaged?): "
                                         f"{'; '.join(problems[:5])}")
            summary = summarize(copy, temporary)
        except sqlite3.DatabaseError as error:
            raise JournalBackupError(f"{source_path} fails its integrity check (is it damaged?): {error}") from None
        finally:
            copy.close()
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        if rename:
            os.replace(temporary, target)
            _sync_directory(target.parent)
        return replace(summary, path=str(target))
    except BaseException:
        if rename:
            temporary.unlink(missing_ok=True)
        raise


def _replace_journal(journal: Path, new: Path, stamp: str, keep: bool) -> str:
    """Rename ``new`` over ``journal`` (the caller holds its lock); returns where the previous one was kept."""
    kept_as = ""
    if journal.exists():
        try:  # fold the WAL of a supervisor that was killed into the file: the kept journal is one file
            with closing(sqlite3.connect(journal, isolation_level=None)) as old:
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass  # not a database (or damaged): kept as it is, with its WAL beside it
        if keep:  # a second name for the file: the journal's own name never points at nothing
            kept_as = _keep(journal, f"{journal}.before-restore-{stamp}")
    wal, shm = Path(f"{journal}-wal"), Path(f"{journal}-shm")
    if wal.exists() and kept_as and wal.stat().st_size:
        os.replace(wal, f"{kept_as}-wal")
    wal.unlink(missing_ok=True)  # never next to the new file: SQLite would replay it into it
    shm.unlink(missing_ok=True)
    os.chmod(new, 0o600)
    _same_owner(like=journal if journal.exists() else journal.parent, paths=(new, journal_lock.lock_path(journal)))
    os.replace(new, journal)
    _sync_directory(journal.parent)
    return kept_as


def _same_owner(like: Path, paths: tuple[Path, ...]) -> None:
    """Run as root (for a supervisor that runs as its own user): give ``paths`` the owner of ``like``, so that
    the supervisor can open its journal, lock and key as before."""
    if os.geteuid() != 0:
        return
    owner = like.stat()
    for path in paths:
        if path.exists():
            os.chown(path, owner.st_uid, owner.st_gid)


def _keep(path: Path, name: str) -> str:
    """Give ``path`` a second name (``name``, or ``name-1``, ... if taken), a hard link when possible."""
    kept, n = Path(name), 1
    while kept.exists():
        kept, n = Path(f"{name}-{n}"), n + 1
    try:
        os.link(path, kept)
    except OSError:
        shutil.copy2(path, kept)
    return str(kept)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = _temporary_next_to(path)
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unreadable_secrets(journal: Path, key: Path) -> int | None:
    """How many of ``journal``'s jobs have secret env values that ``key`` cannot open; None when the key cannot be
    read here (no such file, not readable by this user, not a key): then nothing could be checked."""
    from cumulus.errors import ConfigError
    from cumulus.journal_rows import SecretBox

    with sqlite3.connect(f"file:{quote(str(journal))}?mode=ro", uri=True) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        sealed = [row[0] for row in db.execute("SELECT secret_env FROM jobs WHERE secret_env IS NOT NULL")] \
            if "secret_env" in columns else []
    db.close()
    try:
        box = SecretBox(key.read_bytes().strip())
    except (OSError, ValueError):
        return None
    unreadable = 0
    for value in sealed:
        try:
            box.open(value)
        except ConfigError:
            unreadable += 1
    return unreadable


__all__ = ["BackupReport", "JournalBackupError", "JournalSummary", "RestoreReport", "backup", "check_journal",
           "key_file_for", "restore", "summarize"]

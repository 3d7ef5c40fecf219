"""Journal backup and restore (``cumulus journal backup|restore``) and the journal's lock (one supervisor per journal).

Real SQLite files in WAL mode, real processes for the lock (a journal opened by another Python process), and the
real supervisor on the in-memory fakes of the cluster for a backup taken while jobs run, restored into a new one.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from cumulus import journal_backup, journal_lock
from cumulus.app import journal_secrets, open_supervisor
from cumulus.cli import main
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.journal import Flush, JournalStore, open_database, row_of
from cumulus.journal_backup import JournalBackupError
from cumulus.journal_rows import SecretBox
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings, spec

BATCH = 10  # jobs per transaction of the concurrent writer: a consistent copy holds whole batches only


def write_jobs(store: JournalStore, prefix: str, count: int, state: JobState = JobState.COMPLETED,
               secret: bool = False) -> None:
    rows = []
    for i in range(count):
        record = JobRecord(f"{prefix}-{i:04d}", JobSpec(package=os.urandom(300), gpu=0.5,
                                                         secret_env={"TOKEN": "s3cret-value"} if secret else {}))
        record.state = state
        record.result = f"result-{prefix}-{i}".encode() if state is JobState.COMPLETED else None
        rows.append(row_of(record, with_package=True))
    store.save_many(rows)


def journal_with_jobs(path: Path, jobs: int = 20, *, key: Path | None = None) -> None:
    store = JournalStore(str(path), SecretBox.from_key_file(key) if key else None)
    write_jobs(store, "done", jobs)
    write_jobs(store, "running", 2, JobState.RUNNING, secret=True)
    store.close()


def job_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        ids = {row[0] for row in db.execute("SELECT job_id FROM jobs")}
    db.close()
    return ids


class HeldElsewhere:
    """The journal opened by another process (what a running supervisor holds), until :meth:`close`."""

    def __init__(self, journal: Path) -> None:
        code = ("import sys; from cumulus.journal import open_database; db = open_database(sys.argv[1]); "
                "print('ready', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(journal)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


# ---- backup ---------------------------------------------------------------------------------------------------


def test_a_backup_taken_while_another_connection_writes_is_one_consistent_snapshot(tmp_path):
    journal, target = tmp_path / "journal.sqlite3", tmp_path / "backup" / "b.sqlite3"
    store = JournalStore(str(journal))
    for n in range(300):  # ~1 MiB: many steps of 8 pages
        write_jobs(store, f"pre-{n}", BATCH)
    store.close()
    stop, batches, commit_gaps = threading.Event(), [0], [0.0]

    def writer() -> None:  # another connection, as the supervisor's would be, committing BATCH jobs at a time
        db = sqlite3.connect(journal, isolation_level=None)
        last = time.monotonic()
        while not stop.is_set():
            db.execute("BEGIN")
            for i in range(BATCH):
                db.execute("INSERT INTO jobs (job_id, spec, package, state, submitted_at) VALUES (?, '{}', ?, "
                           "'QUEUED', 0)", (f"live-{batches[0]}-{i}", os.urandom(300)))
            db.execute("COMMIT")
            batches[0] += 1
            now = time.monotonic()
            commit_gaps[0], last = max(commit_gaps[0], now - last), now
            time.sleep(0.001)
        db.close()

    copied: list[int] = []

    def progress(done: int, total: int) -> None:
        copied.append(done)
        if len(copied) > 3000:  # ~50 steps are enough; a copy without one snapshot restarts on every commit
            raise AssertionError(f"the copy keeps restarting: {copied[-20:]}")
        time.sleep(0.002)  # let the writer commit between the steps

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while batches[0] < 5:
            time.sleep(0.01)
        before = batches[0]
        report = journal_backup.backup(str(journal), str(target), pages_per_step=8, progress=progress)
        during = batches[0] - before
    finally:
        stop.set()
        thread.join()
    assert during > 10, "the writer was blocked during the backup"
    assert commit_gaps[0] < 1.0, f"a commit waited {commit_gaps[0]:.2f} s"
    assert len(copied) > 20 and copied == sorted(copied), "the copy restarted (it must read one snapshot)"
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        live = [row[0] for row in db.execute("SELECT job_id FROM jobs WHERE job_id LIKE 'live-%'")]
    db.close()
    per_batch: dict[str, int] = {}
    for job_id in live:
        per_batch[job_id.rsplit("-", 1)[0]] = per_batch.get(job_id.rsplit("-", 1)[0], 0) + 1
    assert set(per_batch.values()) <= {BATCH}, "a transaction was copied in part"
    assert len(per_batch) >= before and report.summary.jobs == 300 * BATCH + len(live)
    assert len(job_ids(journal)) > report.summary.jobs  # the writer went on after the snapshot


def test_a_backup_is_one_file_readable_by_its_owner_only_without_the_key(tmp_path):
    journal, key, target = tmp_path / "j" / "journal.sqlite3", tmp_path / "j" / "journal.key", tmp_path / "b.db"
    journal_with_jobs(journal, key=key)
    held = open_database(str(journal))  # a supervisor runs: the journal is locked, in WAL mode
    try:
        report = journal_backup.backup(str(journal), str(target))
    finally:
        held.close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "j"]  # no -wal, no temporary file
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    db.close()
    data = target.read_bytes()
    assert key.read_bytes().strip() not in data and b"s3cret-value" not in data
    assert report.summary.jobs_by_state == (("COMPLETED", 20), ("RUNNING", 2))
    assert report.summary.sealed_secret_jobs == 2 and report.key_file == str(key) and report.key_copy == ""

    report = journal_backup.backup(str(journal), str(target), with_key=True)
    copy = tmp_path / "b.key"
    assert report.key_copy == str(copy) and copy.read_bytes() == key.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_the_key_file_is_where_the_supervisor_keeps_it(tmp_path):
    journal = tmp_path / "state" / "journal.sqlite3"
    journal_secrets(settings(**{"journal.path": str(journal)}))
    assert journal_backup.key_file_for(str(journal)).is_file()
    assert journal_backup.key_file_for(str(journal), str(tmp_path / "k")) == tmp_path / "k"


def test_a_failed_backup_leaves_the_previous_backup_as_it_was(tmp_path):
    target = tmp_path / "b.db"
    target.write_bytes(b"the previous backup")
    not_a_journal = tmp_path / "other.sqlite3"
    with sqlite3.connect(not_a_journal) as db:
        db.execute("CREATE TABLE things (x)")
    db.close()
    for source, why in ((not_a_journal, "is not a Cumulus journal"), (tmp_path / "none", "no journal at")):
        with pytest.raises(JournalBackupError, match=why):
            journal_backup.backup(str(source), str(target))
    with pytest.raises(JournalBackupError, match="is the journal itself"):
        journal_with_jobs(tmp_path / "j.sqlite3")
        journal_backup.backup(str(tmp_path / "j.sqlite3"), str(tmp_path / "j.sqlite3"))
    assert target.read_bytes() == b"the previous backup"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_in_memory_journal_is_refused(tmp_path, capsys):
    assert main(["journal", "backup", str(tmp_path / "b.db"), "--journal", ":memory:"]) == 1
    assert "in-memory journal" in capsys.readouterr().err
    assert main(["journal", "restore", str(tmp_path / "b.db"), "--journal", ":memory:"]) == 1
    assert not list(tmp_path.iterdir())


# ---- the lock: one supervisor per journal -----------------------------------------------------------------------


def test_a_second_process_cannot_open_a_journal_in_use_and_is_told_by_whom(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    other = HeldElsewhere(journal)
    try:
        with pytest.raises(journal_lock.JournalInUse) as refused:
            open_database(str(journal))
        assert refused.value.pid == other.proc.pid
        assert f"in use by cumulus supervisor (pid {other.proc.pid})" in str(refused.value)
        assert stat.S_IMODE(journal_lock.lock_path(journal).stat().st_mode) == 0o600
    finally:
        other.close()
    open_database(str(journal)).close()  # the holder exited: the kernel dropped its lock


async def test_a_second_supervisor_on_a_journal_in_use_fails_to_start_naming_the_pid(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    other = HeldElsewhere(journal)
    try:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(1)], nursery)
            with pytest.raises(journal_lock.JournalInUse, match=f"pid {other.proc.pid}"):
                async with open_supervisor(settings(**{"journal.path": str(journal)}), backends=world.backends(),
                                           serve_rpc=False):
                    pass
            nursery.cancel_scope.cancel()
    finally:
        other.close()


async def test_a_running_supervisor_holds_the_lock_until_it_stops(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    probe = [sys.executable, "-c", "import sys; from cumulus.journal import open_database; "
             "open_database(sys.argv[1]).close()", str(journal)]
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1)], nursery)
        async with open_supervisor(settings(**{"journal.path": str(journal)}), backends=world.backends(),
                                   serve_rpc=False) as sup:
            record = await sup.submit(spec(runtime=0.1))
            await record.torn_down.wait()
            refused = await trio.run_process(probe, capture_stderr=True, check=False)
        after = await trio.run_process(probe, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    assert refused.returncode == 1 and b"JournalInUse" in refused.stderr
    assert after.returncode == 0, after.stderr


# ---- restore --------------------------------------------------------------------------------------------------


def test_restore_is_refused_while_the_journal_is_in_use_here_or_by_another_process(tmp_path, capsys):
    journal, backup = tmp_path / "journal.sqlite3", tmp_path / "backup.sqlite3"
    journal_with_jobs(backup, jobs=3)
    journal_with_jobs(journal, jobs=7)
    held = open_database(str(journal))  # this process
    try:
        with pytest.raises(JournalBackupError, match="refusing to restore: .* in use by this process"):
            journal_backup.restore(str(backup), str(journal))
    finally:
        held.close()
    other = HeldElsewhere(journal)
    try:
        assert main(["journal", "restore", str(backup), "--journal", str(journal)]) == 1
        err = capsys.readouterr().err
        assert f"in use by cumulus supervisor (pid {other.proc.pid}); stop the supervisor first" in err
    finally:
        other.close()
    assert len(job_ids(journal)) == 9 and not list(tmp_path.glob("*before-restore*"))
    assert main(["journal", "restore", str(backup), "--journal", str(journal)]) == 0
    assert len(job_ids(journal)) == 5


def test_restore_replaces_the_journal_and_keeps_the_previous_one(tmp_path, capsys):
    journal, backup = tmp_path / "state" / "journal.sqlite3", tmp_path / "backup.sqlite3"
    journal_with_jobs(tmp_path / "source.sqlite3", jobs=3)
    journal_backup.backup(str(tmp_path / "source.sqlite3"), str(backup))
    # The journal of a supervisor killed with SIGKILL: committed rows still in its WAL.
    killed = subprocess.run([sys.executable, "-c", (
        "import os, sys; from tests.test_journal_backup import JournalStore, write_jobs; "
        "store = JournalStore(sys.argv[1]); write_jobs(store, 'old', 4); os._exit(0)"), str(journal)],
        cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == 0 and Path(f"{journal}-wal").stat().st_size > 0
    config = tmp_path / "sup.yaml"
    config.write_text(f"journal:\n  path: \"{journal}\"\n")

    assert main(["journal", "restore", str(backup), "--config", str(config), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["jobs_by_state"] == {"COMPLETED": 3, "RUNNING": 2} and out["journal"] == str(journal)
    kept = Path(out["kept_as"])
    assert kept.name.startswith("journal.sqlite3.before-restore-") and kept.parent == journal.parent
    assert job_ids(kept) == {f"old-{i:04d}" for i in range(4)}  # the killed supervisor's WAL folded in
    assert job_ids(journal) == {f"done-{i:04d}" for i in range(3)} | {"running-0000", "running-0001"}
    assert not Path(f"{journal}-wal").exists() or Path(f"{journal}-wal").stat().st_size == 0
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert not [p for p in journal.parent.iterdir() if p.name.endswith(".tmp")]

    assert main(["journal", "restore", str(backup), "--journal", str(journal), "--no-keep"]) == 0
    assert "no previous journal kept" in capsys.readouterr().out
    assert len(list(journal.parent.glob("*before-restore*"))) == 1


def make_corrupt(path: Path) -> None:
    journal_with_jobs(path, jobs=200)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_state'").fetchone()[0]
    db.close()
    with open(path, "r+b") as file:  # scribble over the index's root page (its header and cells)
        file.seek((root - 1) * page_size)
        file.write(b"\x0d" + os.urandom(page_size - 1))


@pytest.mark.parametrize("kind", ["random bytes", "another SQLite database", "damaged journal", "empty file"])
def test_a_backup_that_is_not_an_intact_cumulus_journal_is_refused(tmp_path, kind):
    journal, backup = tmp_path / "journal.sqlite3", tmp_path / "backup.sqlite3"
    journal_with_jobs(journal, jobs=5)
    before = journal.read_bytes()
    if kind == "random bytes":
        backup.write_bytes(os.urandom(8192))
    elif kind == "another SQLite database":
        with sqlite3.connect(backup) as db:
            db.execute("CREATE TABLE jobs (job_id TEXT)")
        db.close()
    elif kind == "damaged journal":
        make_corrupt(backup)
    else:
        backup.write_bytes(b"")
    expected = {"random bytes": "not a readable SQLite database", "another SQLite database": "not a Cumulus journal",
                "damaged journal": "integrity check|damaged|malformed", "empty file": "not a Cumulus journal"}[kind]
    with pytest.raises(JournalBackupError, match=expected):
        journal_backup.restore(str(backup), str(journal))
    assert journal.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["backup.sqlite3",
                                                                                 "journal.sqlite3"]


def test_restore_with_key_installs_the_backups_key_and_warns_without_it(tmp_path, capsys):
    source, key = tmp_path / "a" / "journal.sqlite3", tmp_path / "a" / "journal.key"
    journal_with_jobs(source, jobs=1, key=key)
    assert main(["journal", "backup", str(tmp_path / "b.sqlite3"), "--journal", str(source), "--with-key"]) == 0
    assert "copied to" in capsys.readouterr().out
    journal = tmp_path / "new" / "journal.sqlite3"
    assert main(["journal", "restore", str(tmp_path / "b.sqlite3"), "--journal", str(journal)]) == 0
    assert "none readable here to check the sealed secret env values of 2 jobs" in capsys.readouterr().out
    SecretBox.from_key_file(tmp_path / "new" / "journal.key")  # a supervisor started there made its own key
    assert main(["journal", "restore", str(tmp_path / "b.sqlite3"), "--journal", str(journal)]) == 0
    assert "WARNING: the secret env values of 2 jobs were sealed with another key" in capsys.readouterr().out
    report = journal_backup.restore(str(tmp_path / "b.sqlite3"), str(journal), with_key=True)
    assert report.unreadable_secret_jobs == 0 and report.key_installed == str(tmp_path / "new" / "journal.key")
    assert (tmp_path / "new" / "journal.key").read_bytes() == key.read_bytes() and report.key_kept_as
    store = JournalStore(str(journal), SecretBox.from_key_file(tmp_path / "new" / "journal.key"))
    assert store.load("running-0000")["secret_env"] == {"TOKEN": "s3cret-value"}
    store.close()


async def test_a_backup_taken_while_jobs_run_restores_into_a_new_supervisor(tmp_path):
    """The fast variant of tests/cluster/test_cluster_backup.py, on the fakes: every job finished at backup time
    keeps its state and result; the unfinished ones end after the new supervisor's recovery."""
    journal, backup, restored = tmp_path / "a.sqlite3", tmp_path / "backup.sqlite3", tmp_path / "b" / "j.sqlite3"
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        async with open_supervisor(settings(**{"journal.path": str(journal)}), backends=world.backends(),
                                   serve_rpc=False) as sup:
            quick = [await sup.submit(spec(gpu=0.25, runtime=0.05)) for _ in range(6)]
            for record in quick:
                await record.torn_down.wait()
            slow = [await sup.submit(spec(gpu=0.25, runtime=30, retries=0)) for _ in range(2)]
            for record in slow:
                async for event in record.events(replay_logs=False):
                    if event.state is JobState.RUNNING:
                        break
            await sup._core("journal").call(Flush())
            report = await trio.to_thread.run_sync(journal_backup.backup, str(journal), str(backup))
            late = await sup.submit(spec(gpu=0.25, runtime=0.05))  # after the backup: not in it
            await late.torn_down.wait()
        nursery.cancel_scope.cancel()
    assert report.summary.jobs == 8 and report.summary.unfinished == 2
    journal_backup.restore(str(backup), str(restored))
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)  # new machines: the old services are gone
        async with open_supervisor(settings(**{"journal.path": str(restored)}), backends=world.backends(),
                                   serve_rpc=False) as sup:
            for record in quick:
                again = await sup.get(record.job_id)
                assert (again.state, again.result) == (JobState.COMPLETED, record.result)
                assert again.result == f"ok:{record.job_id}".encode()
            with trio.fail_after(30):
                for record in slow:
                    again = await sup.get(record.job_id)
                    await again.torn_down.wait()
                    assert again.state is JobState.FAILED and again.reason.startswith("lost: "), again.reason
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_restore_run_as_root_leaves_the_files_to_the_supervisors_user(tmp_path):
    backup, directory = tmp_path / "backup.sqlite3", tmp_path / "state"
    journal_with_jobs(backup, jobs=1)
    directory.mkdir()
    os.chown(directory, 10001, 10001)  # the supervisor's user owns its state directory; no journal yet
    journal = directory / "journal.sqlite3"
    journal_backup.restore(str(backup), str(journal))
    for path in (journal, journal_lock.lock_path(journal)):
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10001), path

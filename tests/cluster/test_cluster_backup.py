"""A journal backup taken under load, restored into a new supervisor, on the REAL local cluster (issue 15, item 6).

Supervisor A (a real ``cumulus supervisor`` process with its own journal and supervisor id) runs a stream of short
jobs - some quick, some a few seconds long, one raising - and ``cumulus journal backup --with-key`` copies its
journal while they run. While A runs, a second supervisor on its journal and a restore into it are refused, naming
A's pid. A stops (SIGTERM); ``cumulus journal restore --with-key`` puts the backup into a fresh journal, and
supervisor B (same settings, so the same supervisor id, as an operator restoring would run it) starts on it. Through
the SDK, B gives every job that had finished at backup time its state and result (the value, or the remote
exception), and every job that was unfinished in the backup ends in a terminal state after B's recovery (the
existing crash recovery: re-adopted, or lost and run again or failed). Nothing of any job is left afterwards.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from cumulus.errors import NotFound
from supervisor_process import START_TIMEOUT, start_supervisor, torn_down_problems
from helpers import cluster_description, holder_processes, job_dirs, lingering_containers, swarm_services

JOBS = 20
SUBMIT_EVERY = 0.4  # about 8 s of submissions: some come after the backup
RAISING = 5  # the job index that raises
RECOVERY_TIMEOUT = 120.0


def work(i: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    if i == 5:  # RAISING (the function travels by value: no globals of this module)
        raise ValueError(f"job {i} raises on purpose")
    return i * i


def backup_states(path) -> dict[str, tuple[str, bool]]:
    """job id -> (state, has a result) as the backup file holds them."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT job_id, state, result IS NOT NULL FROM jobs").fetchall()
    db.close()
    return {job_id: (state, bool(has_result)) for job_id, state, has_result in rows}


def test_a_backup_taken_under_load_restores_into_a_new_supervisor(cluster, tmp_path):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    backup = tmp_path / "backups" / "journal-backup.sqlite3"
    a = start_supervisor(tmp_path / "a", hostnames)
    b = None
    submitted: dict[str, tuple[int, float]] = {}  # job id -> (index, when its submission returned)
    finished_seen: dict[str, float] = {}  # job id -> when A's client saw it finished
    try:
        client = a.client()
        refs = {}
        errors: list[BaseException] = []

        def load() -> None:  # the stream of jobs: quick ones and 3 s ones, one of them raising
            try:
                for i in range(JOBS):
                    ref = client.submit(work, i, 3.0 if i % 3 == 0 else 0.0, gpu=0.25, retries=0)
                    refs[ref.job_id] = ref
                    submitted[ref.job_id] = (i, time.time())
                    time.sleep(SUBMIT_EVERY)
            except BaseException as error:  # reported by the test thread
                errors.append(error)

        loader = threading.Thread(target=load)
        loader.start()
        deadline = time.monotonic() + 90
        while sum(ref.done() for ref in list(refs.values())) < 4:
            assert time.monotonic() < deadline, f"jobs do not finish: {[r.state for r in refs.values()]}"
            assert not errors, errors
            time.sleep(0.1)
        for job_id, ref in list(refs.items()):
            if ref.done():
                finished_seen[job_id] = time.time()
        time.sleep(1.0)  # what was seen finished (or submitted) by now is written to the journal (10 ms batches)
        backup_started = time.time()
        res = a.cli("journal", "backup", str(backup), "--config", str(a.config), "--with-key", address=False,
                    check_rc=0)
        backup_seconds = time.time() - backup_started
        print(f"\nbackup under load: {backup_seconds:.2f} s (CLI process included)\n{res.stdout}")
        assert "integrity_check ok" in res.stdout and "copied to" in res.stdout
        running_during_backup = [j for j, ref in refs.items() if not ref.done()]

        # While A runs: a second supervisor on its journal, and a restore into it, are refused, naming A's pid.
        second = a.cli("supervisor", "--config", str(a.config), address=False, timeout=60)
        assert second.returncode == 1, second
        assert f"in use by cumulus supervisor (pid {a.proc.pid})" in second.stderr, second.stderr
        refused = a.cli("journal", "restore", str(backup), "--config", str(a.config), address=False, check_rc=1)
        assert f"(pid {a.proc.pid}); stop the supervisor first" in refused.stderr, refused.stderr

        loader.join(60)
        assert not errors, errors
        client.close()
        assert a.stop(timeout=60) == 0, a.log_tail()
        assert not swarm_services(a.sid), "A left services behind"

        in_backup = backup_states(backup)
        finished = {j for j, (state, _) in in_backup.items() if state in ("COMPLETED", "FAILED", "CANCELLED")}
        unfinished = set(in_backup) - finished
        print(f"in the backup: {len(in_backup)} of {len(submitted)} submitted jobs, {len(finished)} finished, "
              f"{len(unfinished)} unfinished; {len(running_during_backup)} were not done when it was taken")
        assert set(finished_seen) <= finished, "a job seen finished before the backup is not finished in it"
        assert {j for j, (_, at) in submitted.items() if at < backup_started - 1.0} <= set(in_backup)
        assert set(in_backup) <= set(submitted)
        assert unfinished, "the backup was not taken under load (no job was unfinished in it)"
        assert all(has_result for j, (state, has_result) in in_backup.items() if state == "COMPLETED")

        restored = tmp_path / "b" / "journal.sqlite3"
        res = a.cli("journal", "restore", str(backup), "--journal", str(restored), "--with-key", address=False,
                    check_rc=0)
        print(res.stdout)
        assert f"unfinished jobs: {len(unfinished)};" in res.stdout

        b = start_supervisor(tmp_path / "b", hostnames, sid=a.sid, timeout=START_TIMEOUT)
        with b.client() as client_b:
            for job_id in sorted(in_backup):
                index = submitted[job_id][0]
                if job_id in finished:  # as it was, before B waits for anything
                    assert client_b.status(job_id).state == in_backup[job_id][0], job_id
                try:
                    value = client_b.job(job_id).result(timeout=RECOVERY_TIMEOUT)
                except ValueError as error:  # the remote exception, its own type, also after the restore
                    assert index == RAISING and "raises on purpose" in str(error), (job_id, error)
                except Exception as error:  # JobFailed: an unfinished job lost in the restart (retries=0)
                    assert job_id in unfinished, (job_id, error)
                else:
                    assert value == index * index, (job_id, value)
                final = client_b.status(job_id)
                assert final.finished, (job_id, final.state)
                if job_id in finished:
                    assert final.state == in_backup[job_id][0], (job_id, final.state)
            for job_id in set(submitted) - set(in_backup):  # submitted after the backup: B never knew them
                with pytest.raises(NotFound):
                    client_b.status(job_id)
            problems = [p for job_id in in_backup for p in torn_down_problems(client_b, job_id, 60)]
            assert not problems, problems
        b.assert_nothing_left(in_backup, teardown_timeout=60)
        after = set(submitted) - set(in_backup)  # A tore these down when it stopped
        desc = cluster_description()
        assert not (lingering_containers(after, desc) + holder_processes(after)
                    + job_dirs(after, desc.get("jobs_dir", "/var/lib/cumulus/jobs")))
    finally:
        for sup in (a, b):
            if sup is not None and sup.alive():
                sup.stop(timeout=60)
    assert b is not None and b.proc.returncode == 0, b.log_tail() if b else "B never started"
    assert not swarm_services(a.sid)


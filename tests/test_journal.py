"""The journal: records survive a restart; unfinished jobs of a dead supervisor end FAILED or run again."""

from __future__ import annotations

import time

import trio

from cumulus.app import open_supervisor
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.journal import JournalStore, record_of, row_of
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings, spec


async def run_supervisor(path, body):
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        async with open_supervisor(settings(**{"journal.path": str(path)}), backends=world.backends(),
                                   serve_rpc=False) as sup:
            with trio.fail_after(20):
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.05)
                result = await body(sup)
        nursery.cancel_scope.cancel()
    return result


def unfinished_row(path, job_id: str, state: JobState, retries: int = 0) -> None:
    """What a supervisor killed with SIGKILL leaves in its journal: a job that never reached its end."""
    record = JobRecord(job_id, JobSpec(package=b"zip", gpu=0.5, retries=retries, env={"FAKE_RUNTIME": "0.2"}))
    record.state = state
    store = JournalStore(str(path))
    store.save_many([row_of(record, with_package=True)])
    store.close()


async def test_finished_jobs_and_results_survive_a_restart(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def first(sup):
        record = await sup.submit(spec(runtime=0.2, idempotency_key="key-1"))
        await record.torn_down.wait()
        return record.job_id

    job_id = await run_supervisor(path, first)

    async def second(sup):
        record = await sup.get(job_id)
        again = await sup.submit(spec(runtime=0.2, idempotency_key="key-1"))
        return record, again

    record, again = await run_supervisor(path, second)
    assert record.state is JobState.COMPLETED and record.result == f"ok:{job_id}".encode()
    assert record.teardown.released[-1] == "reservation"
    assert again.job_id == job_id  # the same key never runs the job a second time


async def test_a_job_lost_by_a_killed_supervisor_ends_failed_with_the_reason(tmp_path):
    path = tmp_path / "journal.sqlite3"
    unfinished_row(path, "unit-00000000dead", JobState.RUNNING)

    async def check(sup):
        return await sup.get("unit-00000000dead")

    record = await run_supervisor(path, check)
    assert record.state is JobState.FAILED
    assert record.reason == "lost: the supervisor restarted while the job was RUNNING"
    assert record.torn_down.is_set()


async def test_a_job_whose_container_was_never_created_is_started_after_a_restart(tmp_path):
    """Killed before its service existed, the job never ran: running it now runs it once (no retries needed)."""
    path = tmp_path / "journal.sqlite3"
    unfinished_row(path, "unit-00000000cafe", JobState.CREATING_PARTITION)

    async def check(sup):
        record = await sup.get("unit-00000000cafe")
        with trio.fail_after(20):
            await record.torn_down.wait()
        return record

    record = await run_supervisor(path, check)
    assert (record.state, record.reason, record.attempt) == (JobState.COMPLETED, "", 2)


async def test_a_lost_job_with_retries_left_runs_again(tmp_path):
    path = tmp_path / "journal.sqlite3"
    unfinished_row(path, "unit-00000000beef", JobState.RUNNING, retries=1)

    async def check(sup):
        record = await sup.get("unit-00000000beef")
        with trio.fail_after(20):
            await record.torn_down.wait()
        return record

    record = await run_supervisor(path, check)
    assert (record.state, record.reason, record.attempt) == (JobState.COMPLETED, "", 2)


async def test_terminal_state_is_never_overwritten_in_the_journal(tmp_path):
    store = JournalStore(str(tmp_path / "j.sqlite3"))
    record = JobRecord("unit-000000000001", JobSpec(package=b"zip"))
    record.state = JobState.COMPLETED
    store.save_many([row_of(record, with_package=True)])
    record.state = JobState.FAILED
    store.save_many([row_of(record, with_package=False)])
    assert store.load("unit-000000000001")["state"] == "COMPLETED"
    store.close()


def test_old_finished_jobs_are_forgotten_after_the_retention(tmp_path):
    store = JournalStore(str(tmp_path / "j.sqlite3"))
    record = JobRecord("unit-000000000002", JobSpec(package=b"zip"))
    record.state, record.finished_at = JobState.COMPLETED, time.time() - 100
    store.save_many([row_of(record, with_package=True)])
    assert store.forget_before(time.time() - 50) == 1
    assert store.load("unit-000000000002") is None


async def _crash_and_restart(tmp_path, *, downtime: float, runtime: float = 3):
    """Run jobs, 'SIGKILL' the supervisor (nothing released, unflushed journal writes lost), restart it."""
    import sqlite3

    path, copy = tmp_path / "journal.sqlite3", tmp_path / "after-crash.sqlite3"
    lease = {"lease.ttl": 3.0, "lease.renew_interval": 0.5}
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        world.lease_ttl = 3.0
        async with open_supervisor(settings(**{"journal.path": str(path)}, **lease), backends=world.backends(),
                                   serve_rpc=False) as sup:
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.05)
            records = [await sup.submit(spec(gpu=0.25, runtime=runtime)) for _ in range(3)]
            for record in records:
                async for event in record.events():
                    if event.state is JobState.RUNNING:
                        break
            await trio.sleep(0.3)
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)  # the journal as a killed process leaves it
            world.frozen = True
        world.frozen = False
        await trio.sleep(downtime)
        async with open_supervisor(settings(**{"journal.path": str(copy)}, **lease), backends=world.backends(),
                                   serve_rpc=False) as sup:
            recovered = [await sup.get(record.job_id) for record in records]
            with trio.fail_after(30):
                for record in recovered:
                    await record.torn_down.wait()
            workers = await sup.list_workers()
        leftovers = (dict(world.partitions), set(world.job_dirs), dict(world.services))
        nursery.cancel_scope.cancel()
    return recovered, workers, leftovers


async def test_running_jobs_survive_a_supervisor_crash_shorter_than_the_lease(tmp_path):
    recovered, workers, leftovers = await _crash_and_restart(tmp_path, downtime=0.5)
    for record in recovered:
        assert (record.state, record.attempt) == (JobState.COMPLETED, 1), record.reason  # adopted, not re-run
        assert record.result == f"ok:{record.job_id}".encode()
        assert record.teardown.leaked == ()
    assert all(d.used_share == 0 for w in workers for d in w.devices)
    assert leftovers == ({}, set(), {})


async def test_jobs_are_lost_when_the_supervisor_stays_away_longer_than_the_lease(tmp_path):
    """Still running when their leases expired (the supervisor away past the TTL): stopped, so lost."""
    recovered, workers, leftovers = await _crash_and_restart(tmp_path, downtime=6, runtime=20)
    for record in recovered:
        assert record.state is JobState.FAILED and record.reason.startswith("lost"), (record.state, record.reason)
    assert all(d.used_share == 0 for w in workers for d in w.devices)
    assert leftovers == ({}, set(), {})


async def test_jobs_that_finished_while_the_supervisor_was_away_keep_their_results(tmp_path):
    """Finished before their leases expired, while no supervisor ran: concluded from their job dirs."""
    recovered, workers, leftovers = await _crash_and_restart(tmp_path, downtime=4.5, runtime=3)
    for record in recovered:
        assert record.state is JobState.COMPLETED and record.result is not None, (record.state, record.reason)
    assert all(d.used_share == 0 for w in workers for d in w.devices)
    assert leftovers == ({}, set(), {})


async def test_a_restored_job_replays_its_result_before_its_terminal_state(tmp_path):
    """The SDK resolves a job on its terminal state, so the result must come first, also after a restart
    (regression: a COMPLETED job restored from the journal was seen without its result now and then)."""
    record = JobRecord("job-restored", JobSpec(package=b"zip", gpu=0.5))
    record.set_result(b"envelope")
    record.set_state(JobState.COMPLETED)
    store = JournalStore(str(tmp_path / "journal.sqlite3"))
    store.save_many([row_of(record, with_package=True)])
    restored = record_of(store.load("job-restored"))
    store.close()
    kinds = []
    async for event in restored.events():
        kinds.append("result" if event.result is not None else event.state.value if event.state else "other")
    assert kinds == ["result", "COMPLETED"]


async def test_the_service_of_a_job_that_ended_but_was_not_torn_down_is_removed_at_restart(tmp_path):
    """A job COMPLETED (on its runner's last line) whose supervisor died before removing its service: the
    restarted supervisor records its teardown, and its service goes with the orphans."""
    from tests.fakes.fake_cluster import FakeContainer

    from cumulus.resources.swarm import LABEL_JOB, LABEL_SUPERVISOR

    path = tmp_path / "journal.sqlite3"
    job_id = "unit-0000000ended"
    unfinished_row(path, job_id, JobState.COMPLETED)
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        world.services["svc-left"] = container = FakeContainer("svc-left", job_id, "fakenode0001", {})
        world.services_labels["svc-left"] = {LABEL_JOB: job_id, LABEL_SUPERVISOR: "unit"}
        async with open_supervisor(settings(**{"journal.path": str(path)}), backends=world.backends(),
                                   serve_rpc=False) as sup:
            with trio.fail_after(20):
                record = await sup.get(job_id)
                await record.torn_down.wait()
                await container.stop.wait()
        nursery.cancel_scope.cancel()
    assert record.state is JobState.COMPLETED and record.teardown.released == ("orphans reaped at restart",)


def test_the_journal_is_private_and_keeps_secret_env_values_sealed(tmp_path):
    from cumulus.journal_rows import SecretBox

    path, key = tmp_path / "state" / "journal.sqlite3", tmp_path / "state" / "journal.key"
    secret, plain = "s3cr3t-v4lue-that-must-not-leak", "visible-value"
    spec_ = JobSpec(package=b"zip", env={"PLAIN": plain}, secret_env={"API_TOKEN": secret}, owner="alice",
                    memory_bytes=1 << 30, cpus=1.5, network="none")
    store = JournalStore(str(path), SecretBox.from_key_file(key))
    store.save_many([row_of(JobRecord("job-secret", spec_), with_package=True)])
    store.close()

    assert (path.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o600, 0o600)
    assert path.parent.stat().st_mode & 0o077 == 0
    on_disk = b"".join(p.read_bytes() for p in path.parent.glob("journal.sqlite3*"))
    assert plain.encode() in on_disk and secret.encode() not in on_disk
    assert "API_TOKEN" not in repr(spec_) and secret not in repr(spec_)

    store = JournalStore(str(path), SecretBox.from_key_file(key))  # the same key: opened again
    restored = record_of(store.load("job-secret")).spec
    assert (restored.secret_env, restored.owner, restored.memory_bytes, restored.cpus, restored.network) == (
        {"API_TOKEN": secret}, "alice", 1 << 30, 1.5, "none")


def test_an_older_journal_file_is_made_private_on_open(tmp_path):
    import os

    path = tmp_path / "journal.sqlite3"
    JournalStore(str(path)).close()
    os.chmod(path, 0o644)
    JournalStore(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_changed_journal_key_fails_only_the_jobs_whose_secrets_cannot_be_opened(tmp_path):
    from cumulus.journal_rows import SecretBox

    path = tmp_path / "journal.sqlite3"
    sealed_with_another_key = JournalStore(str(path), SecretBox.from_key_file(tmp_path / "old.key"))
    secret = JobRecord("unit-0000000secret", JobSpec(package=b"zip", secret_env={"TOKEN": "t0ps3cret"},
                                                    env={"FAKE_RUNTIME": "0.2"}))
    plain = JobRecord("unit-00000000plain", JobSpec(package=b"zip", env={"FAKE_RUNTIME": "0.2"}))
    for record in (secret, plain):
        record.state = JobState.QUEUED
    sealed_with_another_key.save_many([row_of(r, with_package=True) for r in (secret, plain)])
    sealed_with_another_key.close()

    async def check(sup):
        records = [await sup.get(r.job_id) for r in (secret, plain)]
        with trio.fail_after(20):
            for record in records:
                await record.torn_down.wait()
        return records

    lost, ran = await run_supervisor(path, check)  # its key is journal.key, made on this start
    assert (lost.state, ran.state) == (JobState.FAILED, JobState.COMPLETED)
    assert "secret env values cannot be opened" in lost.reason and "t0ps3cret" not in lost.reason

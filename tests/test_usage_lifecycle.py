"""Usage of jobs run by the real supervisor on in-memory fakes: ``SupervisorApi.usage`` totals are the jobs' own
started_at/finished_at x share (exactly, for single-attempt jobs); each attempt of a retried job is one row;
attempts that never reached RUNNING record nothing; a user sees their own usage; and usage survives a supervisor
restart, a re-adopted job keeping its original RUNNING time."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from cumulus.errors import InvalidRequest
from cumulus.identity import Caller
from cumulus.jobs import JobState
from cumulus.usage import select_usage
from tests.test_job_lifecycle import fake_cluster, lose_partition_when_running, spec


def usage_rows(path) -> dict[tuple[str, int], object]:
    """The journal file's usage rows by (job id, attempt), read as another process would."""
    with sqlite3.connect(path) as db:
        return {(row.job_id, row.attempt): row for row in select_usage(db)}


async def test_usage_totals_match_the_jobs_own_start_and_end_times_and_shares(autojump_clock):
    async with fake_cluster(workers=2) as (sup, world):
        records = [await sup.submit(spec(gpu=gpu, runtime=runtime))
                   for gpu, runtime in ((0.25, 3), (0.5, 5), (1.0, 2))]
        for record in records:
            await record.torn_down.wait()
        assert all(r.state is JobState.COMPLETED and r.attempt == 1 for r in records)
        report = await sup.usage(by="job")
        rows = {row.key: row for row in report.rows}
        assert set(rows) == {r.job_id for r in records}
        for record in records:
            row = rows[record.job_id]
            own = (record.finished_at - record.started_at) * record.spec.gpu
            assert row.device_seconds == own, record.job_id  # the very numbers the job's status shows
            assert row.gpu_seconds == own  # the fake devices are GPUs
            assert row.wall_seconds == record.finished_at - record.started_at
            assert row.queue_seconds == record.started_at - record.submitted_at
            assert (row.jobs, row.attempts) == (1, 1)
        assert report.total.device_seconds == pytest.approx(
            sum((r.finished_at - r.started_at) * r.spec.gpu for r in records), rel=1e-12)
        assert (report.total.jobs, report.total.attempts) == (3, 3)
        assert report.total.cost == 0 and report.total.unpriced_device_seconds == report.total.device_seconds
        by_user = await sup.usage()  # no tokens in-process: the local admin's jobs, owner ""
        assert [row.key for row in by_user.rows] == [""] and by_user.total == report.total
        by_worker = await sup.usage(by="worker")
        assert {row.key for row in by_worker.rows} <= {"fw1", "fw2"}
        assert by_worker.total.device_seconds == pytest.approx(report.total.device_seconds, rel=1e-12)
        with pytest.raises(InvalidRequest, match="user, job, worker"):
            await sup.usage(by="team")


async def test_prices_from_the_config_price_each_device_model(autojump_clock):
    async with fake_cluster(workers=1, **{"usage.prices": {"Fake GPU 0": 3.6}, "usage.currency": "EUR"}) as (sup, _):
        record = await sup.submit(spec(gpu=0.5, runtime=4))
        await record.torn_down.wait()
        report = await sup.usage()
        own = (record.finished_at - record.started_at) * 0.5
        assert report.currency == "EUR"
        assert report.total.cost == pytest.approx(own / 3600 * 3.6)
        assert report.total.unpriced_device_seconds == 0


async def test_each_attempt_of_a_retried_job_is_one_row(tmp_path):  # real time: the journal writes in a thread
    path = tmp_path / "journal.sqlite3"
    async with fake_cluster(**{"journal.path": str(path)}) as (sup, world):
        record = await sup.submit(spec(gpu=0.5, runtime=3))
        await lose_partition_when_running(record, world)
        await record.torn_down.wait()
        assert (record.state, record.attempt) == (JobState.COMPLETED, 2)
        report = await sup.usage(by="job")  # reads flush the journal first
        assert (report.total.jobs, report.total.attempts) == (1, 2)
        rows = usage_rows(path)
    first, second = rows[record.job_id, 1], rows[record.job_id, 2]
    assert first.started_at == record.started_at and first.queued_at == record.submitted_at
    assert first.ended_at <= second.queued_at <= second.started_at  # the retry waits again from its own start
    assert second.ended_at == record.finished_at
    assert report.total.device_seconds == pytest.approx(first.device_seconds + second.device_seconds, rel=1e-12)


async def test_attempts_that_never_ran_record_nothing(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        running = await sup.submit(spec(gpu=1.0, runtime=100))
        async for event in running.events():
            if event.state is JobState.RUNNING:
                break
        queued = await sup.submit(spec(gpu=1.0, runtime=1))
        async for event in queued.events():
            if event.state is JobState.QUEUED:
                break
        await sup.cancel(queued.job_id)
        await sup.cancel(running.job_id)
        early = await sup.submit(spec(gpu=0.5, runtime=100))
        async for event in early.events():
            if event.state is JobState.CREATING_PARTITION:
                break
        await sup.cancel(early.job_id)
        report = await sup.usage(by="job")
        assert [row.key for row in report.rows] == [running.job_id]  # the cancelled job ran until it was stopped
        assert report.total.device_seconds == (running.finished_at - running.started_at) * 1.0


async def test_a_user_sees_their_own_usage_an_admin_everyones(autojump_clock):
    alice, bob = Caller("alice"), Caller("bob")
    async with fake_cluster() as (sup, world):
        a = await sup.submit(spec(gpu=0.5, runtime=2), caller=alice)
        b = await sup.submit(spec(gpu=0.25, runtime=2), caller=bob)
        for record in (a, b):
            await record.torn_down.wait()
        mine = await sup.usage(by="job", caller=alice)
        assert [row.key for row in mine.rows] == [a.job_id]
        assert [row.key for row in (await sup.usage(caller=bob)).rows] == ["bob"]
        assert [row.key for row in (await sup.usage(caller=Caller("carol"))).rows] == []
        everyone = await sup.usage(caller=Caller("root", admin=True))
        assert {row.key for row in everyone.rows} == {"alice", "bob"}


async def test_usage_survives_a_restart_and_an_adopted_job_keeps_its_running_time(tmp_path):
    """Jobs running when the supervisor is 'SIGKILLed' are re-adopted by the next one: their usage runs from
    their original RUNNING (journaled by the first process) to the end the second one saw."""
    from tests.test_journal import _crash_and_restart

    recovered, _, _ = await _crash_and_restart(tmp_path, downtime=0.5)
    rows = usage_rows(tmp_path / "after-crash.sqlite3")
    assert len(rows) == len(recovered) == 3
    for record in recovered:
        usage = rows[record.job_id, 1]
        assert (record.state, record.attempt) == (JobState.COMPLETED, 1)
        assert usage.started_at == record.started_at and usage.ended_at == record.finished_at
        assert usage.queued_at == record.submitted_at
        assert usage.device_seconds == (record.finished_at - record.started_at) * 0.25
        assert usage.device_model.startswith("Fake GPU") and usage.is_gpu


async def test_usage_recorded_before_a_restart_is_still_there_after_it(tmp_path):
    from tests.test_journal import run_supervisor

    path = tmp_path / "journal.sqlite3"

    async def first(sup):
        record = await sup.submit(spec(gpu=0.5, runtime=0.2))
        await record.torn_down.wait()
        return record

    record = await run_supervisor(path, first)

    async def second(sup):
        with trio.fail_after(10):
            return await sup.usage(by="job")

    report = await run_supervisor(path, second)
    assert [row.key for row in report.rows] == [record.job_id]
    assert report.rows[0].device_seconds == (record.finished_at - record.started_at) * 0.5

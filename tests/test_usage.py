"""Usage accounting (:mod:`cumulus.usage`): grouping by user, job and worker, the ``since`` filter, what a user
sees of others, prices and unpriced models, totals that are the sum of the rows and of the attempts (a property
test over random attempts), the journal's table (it survives reopening the file, and pruning finished jobs), the
wire checks of a GetUsage request, and the client's ``--since`` parser."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cumulus.errors import InvalidRequest
from cumulus.jobs import JobRecord, JobSpec, JobState, Placement
from cumulus.journal import JournalStore, row_of
from cumulus.rpc import convert
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.usage import SummarizeUsage, UsageRecord, attempt_usage, select_usage, summarize

H100, CPU = "NVIDIA H100 80GB HBM3", "pthread-cpu"
T0 = 1_700_000_000.0


def rec(job_id: str, *, owner: str = "alice", worker: str = "w1", model: str = H100, gpu: bool = True,
        share: float = 0.5, devices: int = 1, queued: float = 0.0, start: float = 10.0, end: float = 3610.0,
        attempt: int = 1) -> UsageRecord:
    return UsageRecord(job_id, attempt, owner, worker, model, gpu, share, devices, T0 + queued, T0 + start,
                       T0 + end)


RECORDS = [
    rec("j1", owner="alice", worker="w1", share=0.5, start=10, end=3610),             # 0.5 h on an H100
    rec("j1", owner="alice", worker="w2", share=0.5, start=4000, end=4000 + 1800, attempt=2, queued=3900),
    rec("j2", owner="bob", worker="w1", share=1.0, devices=2, start=0, end=1800),     # 2 devices x 0.5 h
    rec("j3", owner="", worker="w3", model=CPU, gpu=False, share=0.25, start=5, end=7205),  # 0.5 h, no GPU
]


def test_grouped_by_user_with_totals_that_are_the_sum_of_the_rows():
    report = summarize(RECORDS, by="user")
    rows = {row.key: row for row in report.rows}
    assert set(rows) == {"alice", "bob", ""}
    assert rows["alice"].jobs == 1 and rows["alice"].attempts == 2
    assert rows["alice"].device_seconds == pytest.approx(0.5 * 3600 + 0.5 * 1800)
    assert rows["alice"].wall_seconds == pytest.approx(3600 + 1800)
    assert rows["alice"].queue_seconds == pytest.approx(10 + 100)
    assert rows["bob"].device_seconds == pytest.approx(2 * 1800) == rows["bob"].gpu_seconds
    assert rows[""].device_seconds == pytest.approx(0.25 * 7200) and rows[""].gpu_seconds == 0
    assert [row.key for row in report.rows] == ["bob", "alice", ""]  # largest device time first
    for field in ("device_seconds", "gpu_seconds", "wall_seconds", "queue_seconds", "cost", "unpriced_device_seconds"):
        assert getattr(report.total, field) == pytest.approx(sum(getattr(row, field) for row in report.rows))
    assert (report.total.key, report.total.jobs, report.total.attempts) == ("total", 3, 4)


def test_grouped_by_job_and_by_worker():
    by_job = {row.key: row for row in summarize(RECORDS, by="job").rows}
    assert set(by_job) == {"j1", "j2", "j3"} and by_job["j1"].attempts == 2 and by_job["j1"].jobs == 1
    by_worker = {row.key: row for row in summarize(RECORDS, by="worker").rows}
    assert set(by_worker) == {"w1", "w2", "w3"}
    assert (by_worker["w1"].jobs, by_worker["w1"].attempts) == (2, 2)
    assert by_worker["w2"].device_seconds == pytest.approx(0.5 * 1800)
    # j1 ran on w1 and on w2: one job in the total, counted on both workers' lines
    assert summarize(RECORDS, by="worker").total.jobs == 3
    with pytest.raises(ValueError, match="user, job, worker"):
        summarize(RECORDS, by="team")


def test_since_counts_the_attempts_that_ended_at_or_after_it():
    report = summarize(RECORDS, by="job", since=T0 + 3610)  # j1's first attempt ended exactly then
    assert {row.key: row.attempts for row in report.rows} == {"j1": 2, "j3": 1}
    report = summarize(RECORDS, by="job", since=T0 + 3611)
    assert {row.key: row.attempts for row in report.rows} == {"j1": 1, "j3": 1}
    assert report.since == T0 + 3611
    assert summarize(RECORDS, since=T0 + 10**6).rows == ()


def test_a_user_sees_only_their_own_usage_an_admin_everyones():
    mine = summarize(RECORDS, by="job", owner="alice")
    assert [row.key for row in mine.rows] == ["j1"] and mine.total.attempts == 2
    assert summarize(RECORDS, by="user", owner="carol").rows == ()
    assert summarize(RECORDS, by="user", owner=None).total.attempts == 4


def test_prices_turn_device_hours_into_money_and_unpriced_models_are_said():
    report = summarize(RECORDS, by="user", prices={H100: 4.0}, currency="EUR")
    rows = {row.key: row for row in report.rows}
    assert report.currency == "EUR"
    assert rows["alice"].cost == pytest.approx(0.75 * 4.0) and rows["alice"].unpriced_device_seconds == 0
    assert rows["bob"].cost == pytest.approx(1.0 * 4.0)
    assert rows[""].cost == 0 and rows[""].unpriced_device_seconds == pytest.approx(1800)
    assert report.total.cost == pytest.approx(7.0)
    assert report.total.unpriced_device_seconds == pytest.approx(1800)
    no_prices = summarize(RECORDS)
    assert no_prices.total.cost == 0 and no_prices.total.unpriced_device_seconds == no_prices.total.device_seconds
    priced_cpu = summarize(RECORDS, prices={H100: 4.0, CPU: 0.1})  # any device model may have a price
    assert priced_cpu.total.cost == pytest.approx(7.0 + 0.5 * 0.1)
    assert priced_cpu.total.unpriced_device_seconds == 0


attempt_st = st.builds(
    lambda job, owner, worker, gpu, share, devices, queue, start, length, attempt: rec(
        f"j{job}", owner=owner, worker=worker, model=H100 if gpu else CPU, gpu=gpu, share=share, devices=devices,
        queued=start - queue, start=start, end=start + length, attempt=attempt),
    job=st.integers(0, 6), owner=st.sampled_from(["", "alice", "bob"]), worker=st.sampled_from(["w1", "w2"]),
    gpu=st.booleans(), share=st.sampled_from([0.1, 0.25, 0.5, 1.0]), devices=st.integers(1, 8),
    queue=st.floats(0, 1e5), start=st.floats(0, 1e7), length=st.floats(0, 1e6), attempt=st.integers(1, 5))


@given(records=st.lists(attempt_st, max_size=40), by=st.sampled_from(["user", "job", "worker"]),
       price=st.floats(0, 100), since=st.one_of(st.none(), st.floats(0, 1.1e7)))
def test_totals_are_the_sum_over_the_attempts_own_times_and_shares(records, by, price, since):
    report = summarize(records, by=by, prices={H100: price}, since=None if since is None else T0 + since)
    counted = [r for r in records if since is None or r.ended_at >= T0 + since]
    expected = math.fsum((r.ended_at - r.started_at) * r.share * r.devices for r in counted)
    assert report.total.device_seconds == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert report.total.gpu_seconds == pytest.approx(
        math.fsum((r.ended_at - r.started_at) * r.share * r.devices for r in counted if r.is_gpu), rel=1e-9, abs=1e-6)
    assert report.total.cost == pytest.approx(math.fsum(
        (r.ended_at - r.started_at) * r.share * r.devices / 3600 * price for r in counted if r.device_model == H100),
        rel=1e-9, abs=1e-6)
    assert report.total.attempts == len(counted) == sum(row.attempts for row in report.rows)
    assert report.total.jobs == len({r.job_id for r in counted})
    assert report.total.device_seconds == pytest.approx(sum(row.device_seconds for row in report.rows), rel=1e-9,
                                                        abs=1e-6)
    assert report.total.unpriced_device_seconds == pytest.approx(math.fsum(
        (r.ended_at - r.started_at) * r.share * r.devices for r in counted if r.device_model != H100),
        rel=1e-9, abs=1e-6)


def test_an_attempt_uses_the_records_own_times_share_and_device():
    record = JobRecord("job-1", JobSpec(package=b"zip", gpu=2, owner="alice"))
    assert attempt_usage(record, started_at=1.0, ended_at=2.0, queued_at=0.0) is None  # never placed
    record.placement = Placement("w1", "n1", 0, 1.0, device_indexes=(0, 1), device_model=H100, is_gpu=True)
    record.set_state(JobState.RUNNING)
    record.set_state(JobState.COMPLETED)
    usage = attempt_usage(record, started_at=record.running_at, ended_at=record.finished_at,
                          queued_at=record.submitted_at)
    assert usage is not None and record.running_at == record.started_at
    assert (usage.started_at, usage.ended_at, usage.queued_at) == (record.started_at, record.finished_at,
                                                                   record.submitted_at)
    assert usage.device_seconds == (record.finished_at - record.started_at) * 1.0 * 2
    assert (usage.owner, usage.worker, usage.device_model, usage.is_gpu) == ("alice", "w1", H100, True)
    assert attempt_usage(record, started_at=None, ended_at=2.0, queued_at=0.0) is None  # never reached RUNNING


# ---- the journal's table ------------------------------------------------------------------------------------------


def test_usage_survives_reopening_the_journal_and_pruning_finished_jobs(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    store = JournalStore(path)
    record = JobRecord("job-old", JobSpec(package=b"zip"))
    record.state, record.finished_at = JobState.COMPLETED, time.time() - 100
    store.save_many([row_of(record, with_package=True)], usage=RECORDS[:2])
    store.save_many([], usage=RECORDS[2:])
    store.close()

    store = JournalStore(path)  # a restarted supervisor
    assert store.forget_before(time.time() - 50) == 1  # the finished job goes, its usage stays
    assert list(select_usage(store.db)) == sorted(RECORDS, key=lambda r: r.ended_at)
    report = store.usage(SummarizeUsage(by="user", prices=((H100, 4.0),), currency="EUR"))
    assert report == summarize(RECORDS, by="user", prices={H100: 4.0}, currency="EUR")
    assert store.usage(SummarizeUsage(by="job", since=T0 + 3611, owner="alice")).total.attempts == 1
    store.save_many([], usage=[rec("j2", owner="bob", end=900, share=1.0, devices=2, start=0)])  # same attempt
    assert store.usage(SummarizeUsage(by="job", owner="bob")).total.device_seconds == pytest.approx(2 * 900)
    indexes = [row[1] for row in store.db.execute("PRAGMA index_list(usage)")]
    assert "usage_ended_at" in indexes
    store.close()


# ---- the wire: GetUsage's checks ----------------------------------------------------------------------------------


def test_a_usage_request_is_checked_and_says_what_to_fix():
    assert convert.usage_query(pb.GetUsageRequest()) == (None, "user")
    assert convert.usage_query(pb.GetUsageRequest(by=pb.BY_WORKER))[1] == "worker"
    with pytest.raises(InvalidRequest, match="BY_USER, BY_JOB or BY_WORKER"):
        convert.usage_query(pb.GetUsageRequest(by=7))
    request = pb.GetUsageRequest(by=pb.BY_JOB)
    request.since.FromSeconds(int(T0))
    assert convert.usage_query(request, now=T0 + 10) == (T0, "job")
    with pytest.raises(InvalidRequest, match="in the future"):
        convert.usage_query(request, now=T0 - 86400)
    request.since.nanos = -5
    with pytest.raises(InvalidRequest, match="nanos"):
        convert.usage_query(request, now=T0)
    reply = convert.usage_to_pb(summarize(RECORDS, by="job", since=T0, prices={H100: 1.0}))
    assert [row.key for row in reply.rows] == ["j2", "j1", "j3"] and reply.total.key == "total"
    assert reply.total.attempts == 4 and reply.since.seconds == int(T0) and reply.currency == "USD"


# ---- the client's --since -----------------------------------------------------------------------------------------


def test_since_takes_durations_and_iso_dates():
    from cumulus.client.usage import parse_since

    now = 1_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("1d12h", now) == now - 36 * 3600
    assert parse_since("2024-05-01T12:00:00Z", now=T0 * 2) == 1714564800.0
    assert parse_since("2024-05-01T14:00:00+02:00", now=T0 * 2) == 1714564800.0
    for bad in ("7", "-7d", "7x", "yesterday", "", "2024-13-01"):
        with pytest.raises(ValueError, match="duration"):
            parse_since(bad, now)
    with pytest.raises(ValueError, match="in the future"):
        parse_since("2999-01-01", now)

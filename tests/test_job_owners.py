"""Jobs belong to their user, on the real supervisor with in-memory fakes: another user's job is not found (with
the very answer of an unknown id), admins see all, idempotency keys are per user and never answer a different
request, each user's limits (running, queued, GPU share, submission rate) hold, and owners survive a restart."""

from __future__ import annotations

import pytest
import trio

from cumulus.client.cli_output import jobs_table
from cumulus.client.types import JobInfo
from cumulus.errors import AlreadyExists, NotFound, QuotaExceeded
from cumulus.identity import Caller, Limits
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.journal import JournalStore, row_of
from cumulus.rpc import convert
from tests.test_job_lifecycle import fake_cluster, spec
from tests.test_journal import run_supervisor

ALICE, BOB = Caller("alice"), Caller("bob")
ROOT = Caller("root", admin=True)


def limited(name: str, **limits) -> Caller:
    return Caller(name, limits=Limits(**limits))


async def refusal(call) -> Exception:
    with pytest.raises(Exception) as caught:
        await call
    return caught.value


def same_text(error: Exception, job_id: str) -> str:
    return str(error).replace(job_id, "<id>")


async def wait_for(predicate) -> None:
    with trio.fail_after(60):
        while not predicate():
            await trio.sleep(0.05)


# ---- ownership ------------------------------------------------------------------------------------------------


async def test_another_users_job_answers_exactly_like_an_unknown_id(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=30), caller=ALICE)
        assert record.spec.owner == "alice"
        unknown = "unit-" + "0" * 12
        assert len(unknown) == len(record.job_id)
        for method in (sup.get, sup.describe, sup.cancel):  # watch, logs and result read the job through get
            theirs = await refusal(method(record.job_id, caller=BOB))
            nobodys = await refusal(method(unknown, caller=BOB))
            assert type(theirs) is type(nobodys) is NotFound
            assert same_text(theirs, record.job_id) == same_text(nobodys, unknown)
        assert record.state is not JobState.CANCELLED  # bob's cancel did nothing
        assert await sup.get(record.job_id, caller=ALICE) is record
        assert (await sup.describe(record.job_id, caller=ALICE))[0] is record
        record, was_live = await sup.cancel(record.job_id, caller=ALICE)
        assert was_live and record.state is JobState.CANCELLED


async def test_a_list_holds_the_callers_jobs_and_an_admin_sees_all(autojump_clock):
    async with fake_cluster() as (sup, world):
        a = await sup.submit(spec(runtime=30), caller=ALICE)
        b = await sup.submit(spec(runtime=30), caller=BOB)
        assert [r.job_id for r in await sup.list_jobs(caller=ALICE)] == [a.job_id]
        assert [r.job_id for r in await sup.list_jobs(False, caller=BOB)] == [b.job_id]
        assert {r.job_id for r in await sup.list_jobs(caller=ROOT)} == {a.job_id, b.job_id}
        assert {r.job_id for r in await sup.list_jobs()} == {a.job_id, b.job_id}  # no tokens: the local admin
        assert await sup.get(b.job_id, caller=ROOT) is b
        _, was_live = await sup.cancel(b.job_id, caller=ROOT)
        assert was_live and b.state is JobState.CANCELLED
        assert (await sup.health()).jobs_active == 1


async def test_the_owner_goes_on_the_wire_and_into_the_jobs_table():
    record = JobRecord("unit-000000000001", JobSpec(package=b"zip", owner="alice"))
    info = JobInfo.from_pb(convert.status_to_pb(record))
    assert info.owner == "alice"
    table = jobs_table([info, JobInfo(job_id="unit-000000000002", state="QUEUED")], now=0)
    assert table.splitlines()[0].split()[:3] == ["JOB", "OWNER", "NAME"]
    assert table.splitlines()[1].split()[:2] == ["unit-000000000001", "alice"]
    assert table.splitlines()[2].split()[:2] == ["unit-000000000002", "-"]
    assert "OWNER" not in jobs_table([JobInfo(job_id="unit-000000000002", state="QUEUED")], now=0)


# ---- idempotency keys -----------------------------------------------------------------------------------------


async def test_idempotency_keys_are_per_user_and_never_answer_a_different_request(autojump_clock):
    async with fake_cluster() as (sup, world):
        first = await sup.submit(spec(idempotency_key="k1"), caller=ALICE)
        assert await sup.submit(spec(idempotency_key="k1"), caller=ALICE) is first
        bobs = await sup.submit(spec(idempotency_key="k1"), caller=BOB)  # bob's own key: his own job
        assert bobs.job_id != first.job_id and bobs.spec.owner == "bob"
        other_package = JobSpec(**{**spec(idempotency_key="k1").__dict__, "package": b"mallory's zip"})
        refused = await refusal(sup.submit(other_package, caller=ALICE))
        assert isinstance(refused, AlreadyExists)
        assert str(refused) == (f"idempotency key 'k1' was used for a different job {first.job_id} "
                                "(different package); use a new key")
        refused = await refusal(sup.submit(spec(gpu=0.25, idempotency_key="k1"), caller=ALICE))
        assert "(different gpu)" in str(refused)
        refused = await refusal(sup.submit(spec(idempotency_key="k1", secret_env={"T": "hunter2"}), caller=ALICE))
        assert "(different secret_env)" in str(refused) and "hunter2" not in str(refused)
        assert len(await sup.list_jobs()) == 2


async def test_owners_keys_and_their_requests_survive_a_restart(tmp_path):
    path = tmp_path / "journal.sqlite3"

    async def first(sup):
        record = await sup.submit(spec(runtime=0.2, idempotency_key="key-1", secret_env={"T": "x"}), caller=ALICE)
        await record.torn_down.wait()
        return record.job_id

    job_id = await run_supervisor(path, first)

    async def second(sup):
        record = await sup.get(job_id, caller=ALICE)
        hidden = await refusal(sup.get(job_id, caller=BOB))
        mine = await sup.list_jobs(caller=ALICE), await sup.list_jobs(caller=BOB)
        again = await sup.submit(spec(runtime=0.2, idempotency_key="key-1", secret_env={"T": "x"}), caller=ALICE)
        changed = await refusal(sup.submit(spec(runtime=0.2, idempotency_key="key-1", secret_env={"T": "y"}),
                                           caller=ALICE))
        bobs = await sup.submit(spec(runtime=0.2, idempotency_key="key-1"), caller=BOB)
        return record, hidden, mine, again, changed, bobs

    record, hidden, (alices, bobs_list), again, changed, bobs = await run_supervisor(path, second)
    assert record.spec.owner == "alice" and isinstance(hidden, NotFound)
    assert [r.job_id for r in alices] == [job_id] and bobs_list == []
    assert again.job_id == job_id
    assert isinstance(changed, AlreadyExists) and "(different secret_env)" in str(changed)
    assert bobs.job_id != job_id


async def test_a_recovered_job_keeps_its_owner_and_counts_against_their_limits(tmp_path):
    path = tmp_path / "journal.sqlite3"
    lost = JobRecord("unit-00000000cafe", JobSpec(package=b"zip", gpu=0.5, owner="alice",
                                                  env={"FAKE_RUNTIME": "30"}))
    lost.state = JobState.CREATING_PARTITION  # never ran: it runs again after the restart
    store = JournalStore(str(path))
    store.save_many([row_of(lost, with_package=True)])
    store.close()

    async def check(sup):
        record = await sup.get("unit-00000000cafe", caller=ALICE)
        hidden = await refusal(sup.get("unit-00000000cafe", caller=BOB))
        with trio.fail_after(20):
            while record.state is not JobState.RUNNING:
                await trio.sleep(0.05)
        held_back = await sup.submit(spec(), caller=limited("alice", max_running=1))
        await wait_for(lambda: held_back.queue_position > 0)
        state = held_back.state
        await sup.cancel(record.job_id)
        await held_back.torn_down.wait()
        return record, hidden, state, held_back

    record, hidden, state, held_back = await run_supervisor(path, check)
    assert record.spec.owner == "alice" and isinstance(hidden, NotFound)
    assert state is JobState.QUEUED and held_back.state is JobState.COMPLETED


# ---- limits ---------------------------------------------------------------------------------------------------


async def test_max_running_holds_a_users_next_job_in_the_queue_without_holding_up_others(autojump_clock):
    alice = limited("alice", max_running=1)
    async with fake_cluster(workers=2, devices=1) as (sup, world):
        first = await sup.submit(spec(runtime=5), caller=alice)
        second = await sup.submit(spec(runtime=5), caller=alice)  # there is room, but alice runs one already
        await wait_for(lambda: second.queue_position > 0)
        assert second.state is JobState.QUEUED
        bobs = await sup.submit(spec(runtime=1), caller=limited("bob", max_running=1))  # behind alice's in line
        await bobs.finished.wait()
        assert bobs.state is JobState.COMPLETED and second.state is JobState.QUEUED
        await first.finished.wait()
        await second.finished.wait()
        assert second.state is JobState.COMPLETED and second.started_at >= first.finished_at


async def test_max_queued_counts_the_jobs_waiting_for_capacity(autojump_clock):
    alice = limited("alice", max_queued=1)
    async with fake_cluster(workers=1, devices=1) as (sup, world):
        await sup.submit(spec(gpu=1.0, runtime=30), caller=BOB)  # fills the only device
        waiting = await sup.submit(spec(gpu=1.0, runtime=5), caller=alice)
        await wait_for(lambda: waiting.state is JobState.QUEUED and waiting.queue_position > 0)
        refused = await refusal(sup.submit(spec(gpu=1.0), caller=alice))
        assert isinstance(refused, QuotaExceeded)
        assert str(refused) == ("limit max_queued=1 reached: you have 1 jobs waiting in the queue; "
                                "retry when one of your jobs ends")
        await sup.cancel(waiting.job_id, caller=alice)
        await sup.submit(spec(gpu=1.0), caller=alice)


async def test_max_gpu_holds_a_job_that_would_pass_it_and_lets_one_that_fits_go_by(autojump_clock):
    alice = limited("alice", max_gpu=1)
    async with fake_cluster(workers=2, devices=1) as (sup, world):
        first = await sup.submit(spec(gpu=0.5, runtime=5), caller=alice)
        await sup.submit(spec(gpu=0.25, runtime=30), caller=alice)
        held = await sup.submit(spec(gpu=0.5, runtime=1), caller=alice)  # 0.75 + 0.5 > 1: waits
        await wait_for(lambda: held.queue_position > 0)
        small = await sup.submit(spec(gpu=0.25, runtime=1), caller=alice)  # 0.75 + 0.25 = 1: goes by
        await small.finished.wait()
        assert small.state is JobState.COMPLETED and held.state is JobState.QUEUED
        too_big = await refusal(sup.submit(spec(gpu=2), caller=alice))
        assert isinstance(too_big, QuotaExceeded) and "more than you may ever hold" in str(too_big)
        await first.finished.wait()
        await held.finished.wait()
        assert held.state is JobState.COMPLETED


async def test_the_submission_rate_is_a_token_bucket_per_user(autojump_clock):
    alice = limited("alice", rate=1)  # a burst of 2
    async with fake_cluster() as (sup, world):
        for _ in range(2):
            await sup.submit(spec(gpu=0.1, runtime=1), caller=alice)
        refused = await refusal(sup.submit(spec(gpu=0.1), caller=alice))
        assert isinstance(refused, QuotaExceeded) and "limit rate=1 submissions per second" in str(refused)
        assert 0 < refused.retry_after <= 1
        assert f"retry in {refused.retry_after:.2f} s" in str(refused)
        await sup.submit(spec(gpu=0.1, runtime=1), caller=limited("bob", rate=1))  # bob has his own bucket
        await trio.sleep(refused.retry_after)
        await sup.submit(spec(gpu=0.1, runtime=1), caller=alice)
        assert isinstance(await refusal(sup.submit(spec(gpu=0.1), caller=alice)), QuotaExceeded)

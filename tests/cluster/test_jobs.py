"""Jobs end to end on the real local cluster, through the supervisor's Python API (``open_supervisor``): results and
user exceptions, concurrency, device shares, and cancellation (API or killed actor) at every point of a job's
life - after each, nothing of the job is left anywhere (``helpers.assert_nothing_left``)."""

from __future__ import annotations

import secrets
import time
from contextlib import aclosing, asynccontextmanager

import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.client.packaging import build_package, decode_result
from cumulus.config import load_settings
from cumulus.errors import RemoteError
from cumulus.jobs import JobRecord, JobSpec, JobState

from helpers import assert_nothing_left, find_leftovers, holder_processes, wait_workers_healthy

SID = f"tj-{secrets.token_hex(4)}"  # this module's own supervisor id: orphan reaping leaves others alone
JOB_TIMEOUT = 30
SHARE_SLEEP = 2  # long enough to be RUNNING side by side


# ------------------------------------------------------------------------------------------ job functions
def add(a, b):
    print("adding", a, b)
    return a + b


def fails():
    raise ValueError("bad input 42")


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return seconds


def spec(func, *args, gpu: float = 0.5, duration: int = 60) -> JobSpec:
    return JobSpec(package=build_package(func, args), gpu=gpu, duration=duration)


# ---------------------------------------------------------------------------------------------- fixtures
@asynccontextmanager
async def supervisor(worker_count: int, **overrides):
    settings = load_settings(environ={}, overrides={
        "supervisor_id": SID, "cluster.allow_non_gpu_devices": True, "cluster.poll_interval": 0.1, **overrides})
    async with open_supervisor(settings, serve_rpc=False) as api:
        await wait_workers_healthy(api, worker_count)
        yield api


@pytest.fixture
async def sup(cluster, workers):
    async with supervisor(len(workers)) as api:
        yield api


async def wait_state(record: JobRecord, state: JobState, timeout: float = JOB_TIMEOUT) -> None:
    with trio.fail_after(timeout):
        async with aclosing(record.events(replay_logs=False)) as events:
            async for event in events:
                if event.state is state:
                    return
    raise AssertionError(f"{record.job_id} ended ({record.state.value} {record.reason!r}) before {state.value}")


async def finish(record: JobRecord, timeout: float = JOB_TIMEOUT) -> JobRecord:
    with trio.fail_after(timeout):
        await record.torn_down.wait()
    return record


# ------------------------------------------------------------------------------------------------ results
async def test_result_and_user_exception(sup):
    ok = await sup.submit(spec(add, 2, 2))
    bad = await sup.submit(spec(fails))
    await finish(ok)
    await finish(bad)

    assert ok.state is JobState.COMPLETED, (ok.state, ok.reason)
    outcome = decode_result(ok.result)
    assert outcome.ok and outcome.value == 4
    assert ok.placement is not None and ok.partition_id.startswith("partition_") and ok.service_id

    assert bad.state is JobState.FAILED and bad.reason == "user_exception", (bad.state, bad.reason)
    failure = decode_result(bad.result)
    assert not failure.ok
    assert failure.exc_type.endswith("ValueError") and failure.exc_message == "bad input 42"
    assert "in fails" in failure.traceback and "ValueError: bad input 42" in failure.traceback
    with pytest.raises((ValueError, RemoteError), match="bad input 42") as info:
        failure.result()
    assert "in fails" in str(info.value.__cause__)

    await assert_nothing_left(sup, SID, [ok.job_id, bad.job_id],
                              expect={ok.job_id: JobState.COMPLETED, bad.job_id: JobState.FAILED})

    # `cumulus describe`: the journal kept each job's life on the real cluster, in order.
    _, history = await sup.describe(ok.job_id)
    states = [e.state for e in history if e.kind == "state"]
    assert states[0] == "QUEUED" and states[-1] == "COMPLETED" and "RUNNING" in states, states
    assert [e.at for e in history] == sorted(e.at for e in history)
    (placed,) = [e for e in history if e.kind == "placement"]
    assert placed.data["worker"] == ok.placement.worker and placed.data["share"] == 0.5
    teardown = history[-1]
    assert teardown.kind == "teardown" and {"service", "partition"} <= set(teardown.data["released"])
    assert teardown.data["leaked"] == []


async def test_ten_concurrent_jobs_over_two_workers(sup, workers):
    records = [await sup.submit(spec(add, i, i, gpu=0.2)) for i in range(10)]
    for record in records:
        await finish(record, timeout=60)
    states = [(r.state.value, r.reason) for r in records]
    assert all(r.state is JobState.COMPLETED for r in records), states
    assert [decode_result(r.result).value for r in records] == [2 * i for i in range(10)]
    # 0.2 each: five fit on one device, so the ten need both workers.
    assert {r.placement.worker for r in records} == {w["hostname"] for w in workers[:2]}
    await assert_nothing_left(sup, SID, [r.job_id for r in records],
                              expect={r.job_id: JobState.COMPLETED for r in records})


# ------------------------------------------------------------------------------------------------- shares
async def sample_shares(sup, samples: list, stop: trio.Event) -> None:
    """Record (time, worker, device, used_share) every 50 ms until ``stop``."""
    while not stop.is_set():
        for worker in await sup.list_workers():
            for device in worker.devices:
                samples.append((time.monotonic(), worker.hostname, device.index, device.used_share))
        await trio.sleep(0.05)


async def test_shares_that_fit_run_together_on_one_device(sup):
    samples: list = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_shares, sup, samples, stop)
        a = await sup.submit(spec(sleeper, SHARE_SLEEP, gpu=0.5))
        b = await sup.submit(spec(sleeper, SHARE_SLEEP, gpu=0.3))
        await wait_state(a, JobState.RUNNING)
        await wait_state(b, JobState.RUNNING)
        together = a.state is JobState.RUNNING and b.state is JobState.RUNNING
        await finish(a)
        await finish(b)
        stop.set()
    assert together, "0.5 and 0.3 were never RUNNING at the same time"
    assert (a.placement.worker, a.placement.device_index) == (b.placement.worker, b.placement.device_index)
    assert (a.placement.share, b.placement.share) == (0.5, 0.3)
    assert a.state is JobState.COMPLETED and b.state is JobState.COMPLETED, (a.reason, b.reason)
    assert max(s[3] for s in samples) == pytest.approx(0.8)
    assert all(s[3] <= 1.0 + 1e-9 for s in samples)
    await assert_nothing_left(sup, SID, [a.job_id, b.job_id])


async def test_shares_that_do_not_fit_never_share_a_device(sup):
    samples: list = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_shares, sup, samples, stop)
        a = await sup.submit(spec(sleeper, SHARE_SLEEP, gpu=0.5))
        b = await sup.submit(spec(sleeper, SHARE_SLEEP, gpu=0.6))
        await wait_state(a, JobState.RUNNING)
        await wait_state(b, JobState.RUNNING)
        # Every device now has less than 0.6 free: the third fails to place, or waits in the queue.
        c = await sup.submit(spec(sleeper, SHARE_SLEEP, gpu=0.6))
        await finish(c)
        await finish(a)
        await finish(b)
        stop.set()
    assert (a.placement.worker, a.placement.device_index) != (b.placement.worker, b.placement.device_index)
    if c.state is JobState.FAILED:  # no queueing: it could not be placed
        assert "no capacity" in c.reason, c.reason
        assert c.placement is None and c.result is None
    else:  # queued until a device had 0.6 free, or placed on a third worker
        assert c.state is JobState.COMPLETED, (c.state, c.reason)
        for other in (a, b):
            if (other.placement.worker, other.placement.device_index) == (c.placement.worker,
                                                                          c.placement.device_index):
                assert c.started_at >= other.finished_at, f"{c.job_id} ran beside {other.job_id}"
    assert a.state is JobState.COMPLETED and b.state is JobState.COMPLETED, (a.reason, b.reason)
    over = [s for s in samples if s[3] > 1.0 + 1e-9]
    assert not over, over[:5]
    assert {round(s[3], 6) for s in samples} <= {0.0, 0.5, 0.6}
    await assert_nothing_left(sup, SID, [a.job_id, b.job_id, c.job_id])


# ------------------------------------------------------------------------------------------- cancellation
def kill_job_actor(sup):
    """Stop the job's actor task as a crash of its supervisor would: ``terminate_child`` cancels its task."""
    jobs = sup.root.whereis("core").whereis("jobs")

    async def kill(job_id: str) -> None:
        assert jobs.whereis(job_id) is not None, f"no job actor {job_id}"
        await jobs.terminate_child(job_id)

    return kill


async def stop_at(sup, record: JobRecord, state: JobState, how: str) -> tuple[bool, bool]:
    """When ``record`` reaches ``state``, stop it (``how``: "cancel" API or "kill" of its actor); wait for teardown.
    Returns (whether the job had already ended by itself when stopped, was_live as cancel saw it)."""
    await wait_state(record, state)
    ended_before = record.state.terminal
    was_live = True
    with trio.fail_after(JOB_TIMEOUT):
        if how == "cancel":
            returned, was_live = await sup.cancel(record.job_id)
            assert returned is record
            assert record.torn_down.is_set(), "cancel returned before teardown"
        else:
            await kill_job_actor(sup)(record.job_id)
            assert record.torn_down.is_set(), "the killed actor stopped before its teardown"
    return ended_before, was_live


@pytest.mark.parametrize("how", ["cancel", "kill"])
@pytest.mark.parametrize("state", [JobState.SCHEDULING, JobState.CREATING_PARTITION, JobState.RUNNING])
async def test_stop_a_live_job(sup, how, state):
    record = await sup.submit(spec(sleeper, 60))
    ended_before, was_live = await stop_at(sup, record, state, how)
    assert not ended_before and was_live
    assert record.state is JobState.CANCELLED
    assert record.reason == ("cancelled" if how == "cancel" else "supervisor stopped the job")
    assert record.result is None
    if state is JobState.RUNNING:
        assert record.placement is not None and record.partition_id and record.service_id
        # Its service, made first (early or warm), goes after its files and partition; the stop step before them.
        assert record.teardown.released == ("container stop", "task watch", "checkpoint copy", "files", "partition",
                                            "service", "warm dirs", "reservation")
    await assert_nothing_left(sup, SID, [record.job_id], expect={record.job_id: JobState.CANCELLED})


@pytest.mark.parametrize("how", ["cancel", "kill"])
async def test_stop_during_teardown_keeps_the_terminal_state(sup, how):
    """Stopped right after its COMPLETED event (teardown under way): it stays COMPLETED, result kept, all freed."""
    record = await sup.submit(spec(add, 2, 2))
    ended_before, was_live = await stop_at(sup, record, JobState.COMPLETED, how)
    assert ended_before
    assert record.state is JobState.COMPLETED and record.reason == ""
    assert decode_result(record.result).value == 4
    assert record.teardown.released == ("container stop", "task watch", "checkpoint copy", "files", "partition",
                                        "service", "warm dirs", "reservation")
    await assert_nothing_left(sup, SID, [record.job_id], expect={record.job_id: JobState.COMPLETED})


async def test_cancel_after_teardown_is_a_no_op(sup):
    record = await finish(await sup.submit(spec(add, 1, 2)))
    returned, was_live = await sup.cancel(record.job_id)
    assert returned is record and not was_live
    assert record.state is JobState.COMPLETED and decode_result(record.result).value == 3
    await assert_nothing_left(sup, SID, [record.job_id], expect={record.job_id: JobState.COMPLETED})


async def test_cancel_while_the_holder_session_opens(workers, monkeypatch):
    """A cancel that lands while the partition holder's SSH session is being opened (its exec reply still in
    flight) must stop the holder, like one that lands a moment later. The slow reply is injected: asyncssh's
    create_process returns 0.5 s after the remote process started (on a real network, the round trip).
    Leases off (``lease.ttl`` 0): the holder lives in its SSH session (``SshConnection.open_process``)."""
    import asyncio

    import asyncssh

    real_create_process = asyncssh.SSHClientConnection.create_process

    async def slow_create_process(self, *args, **kwargs):
        process = await real_create_process(self, *args, **kwargs)
        await asyncio.sleep(0.5)
        return process

    async with supervisor(len(workers), **{"lease.ttl": 0}) as sup:
        record = await sup.submit(spec(sleeper, 60, duration=5))  # a leaked holder expires after 5 s
        await wait_state(record, JobState.SCHEDULING)
        monkeypatch.setattr(asyncssh.SSHClientConnection, "create_process", slow_create_process)
        try:
            await wait_state(record, JobState.CREATING_PARTITION)
            await trio.sleep(0.25)  # the holder runs on the worker; its session has not been returned yet
            assert holder_processes([record.job_id]), "the holder should be running by now"
            with trio.fail_after(JOB_TIMEOUT):
                await sup.cancel(record.job_id)
            monkeypatch.undo()
            problems = await find_leftovers(sup, SID, [record.job_id],
                                            expect={record.job_id: JobState.CANCELLED})
        finally:
            monkeypatch.undo()
            with trio.move_on_after(10):  # leave the cluster clean for the next test either way
                while await trio.to_thread.run_sync(holder_processes, [record.job_id]):
                    await trio.sleep(0.2)
        assert not problems, "left behind:\n  " + "\n  ".join(problems)

"""The job state machine and its teardown guarantees, on in-memory fakes of the Swarm and the workers."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from cumulus.app import open_supervisor
from cumulus.config import load_settings
from cumulus.jobs import JobRecord, JobSpec, JobState
from tests.credentials import security_overrides
from tests.fakes.fake_cluster import FakeWorld, fake_node

SID = "unit"


def settings(**overrides):
    overrides = {("jobs." + k if k == "max_queue" else k): v for k, v in overrides.items()}
    base = {"supervisor_id": SID, "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
            "cluster.poll_interval": 0.1, "journal.path": ":memory:", **security_overrides()}
    base.update(overrides)
    return load_settings(environ={}, overrides=base)


@asynccontextmanager
async def fake_cluster(workers: int = 2, devices: int = 1, **overrides):
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(i + 1, devices) for i in range(workers)], nursery)
        async with open_supervisor(settings(**overrides), backends=world.backends(), serve_rpc=False) as sup:
            with trio.fail_after(30):
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.1)
            yield sup, world
        nursery.cancel_scope.cancel()


def spec(gpu: float = 0.5, runtime: float = 1, exit_code: int = 0, **kw) -> JobSpec:
    env = {"FAKE_RUNTIME": str(runtime), "FAKE_EXIT": str(exit_code)}
    env.update(kw.pop("env", {}))
    return JobSpec(package=b"zip", gpu=gpu, duration=kw.pop("duration", 600), env=env, **kw)


async def states(record: JobRecord) -> list[JobState]:
    return [event.state async for event in record.events(replay_logs=False) if event.state is not None]


async def assert_nothing_left(sup, world: FakeWorld, records: list[JobRecord]) -> None:
    for record in records:
        with trio.fail_after(60):
            await record.torn_down.wait()
        assert record.teardown.leaked == (), record.teardown
        terminal = [s async for s in _terminal_states(record)]
        assert len(terminal) == 1, terminal
    assert world.partitions == {}
    assert world.job_dirs_left() == set()
    assert world.job_services() == {}
    assert world.running_jobs() == set()
    for worker in await sup.list_workers():
        assert all(device.used_share == 0 for device in worker.devices), worker


async def _terminal_states(record: JobRecord):
    async for event in record.events(replay_logs=False):
        if event.state is not None and event.state.terminal:
            yield event.state


async def test_a_job_runs_through_every_state_and_leaves_nothing(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec())
        assert await states(record) == [JobState.QUEUED, JobState.SCHEDULING, JobState.CREATING_PARTITION,
                                        JobState.RUNNING, JobState.COMPLETED]
        assert record.state is JobState.COMPLETED
        assert record.result == f"ok:{record.job_id}".encode()
        # Its service was made first (it starts while the partition and files are made): released after them.
        assert record.teardown.released == ("container stop", "task watch", "checkpoint copy", "files", "partition",
                                            "service", "warm dirs", "reservation")
        await assert_nothing_left(sup, world, [record])


async def test_state_order_and_logs_before_result(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec())
        kinds = []
        async for event in record.events():
            if event.state is not None:
                kinds.append(event.state.value)
            elif event.log is not None:
                kinds.append("log")
            elif event.result is not None:
                kinds.append("result")
        assert kinds[:4] == ["QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING"]
        assert kinds.index("log") < kinds.index("result") < kinds.index("COMPLETED") == len(kinds) - 1


async def test_stdout_that_arrives_after_the_runners_marker_is_relayed_before_the_result(autojump_clock):
    """Docker does not keep stdout and stderr in order relative to each other: lines of the job's stdout can come
    after the runner's stderr "job finished" marker. None may be lost, and all come before the result; the
    runner's "job finished" line is relayed last, after them."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(env={"FAKE_LATE_STDOUT": "50"}))
        kinds, lines = [], []
        async for event in record.events():
            if event.log is not None:
                kinds.append("log")
                lines.append(event.log[1])
            elif event.result is not None:
                kinds.append("result")
        assert [line for line in lines if line.startswith("late line")] == [f"late line {i}" for i in range(50)]
        assert "[cumulus] end of stdout" not in lines  # the runner's, not the job's
        assert lines[-1] == "[cumulus] job finished in 1 s", lines[-3:]
        assert kinds[-1] == "result" and record.state is JobState.COMPLETED


async def logs_and_messages(record: JobRecord) -> tuple[list[tuple[str, str]], list[str]]:
    logs, messages = [], []
    async for event in record.events():
        if event.log is not None:
            logs.append(event.log)
        elif event.message is not None:
            messages.append(event.message)
    return logs, messages


ENGINE_PROBLEM = "Error grabbing logs: rpc error: node n1 is not available"


async def test_a_log_the_engine_could_not_read_is_followed_again_and_each_line_relayed_once(autojump_clock):
    """Docker's own line in a followed log ("Error grabbing logs: ... node X is not available") means the node's
    lines will not come on that stream: the log is followed again from its start, the lines already relayed are
    skipped, and the engine's line is a message of the job, never its output."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(env={"FAKE_ENGINE_MESSAGE": ENGINE_PROBLEM, "FAKE_ENGINE_MESSAGE_TIMES": "2",
                                            "FAKE_LATE_STDOUT": "3"}))
        logs, messages = await logs_and_messages(record)
        assert logs == [("stdout", f"hello from {record.job_id}"), *(("stdout", f"late line {i}") for i in range(3)),
                        ("stderr", "[cumulus] job finished in 1 s")], logs
        assert messages.count(f"log stream: {ENGINE_PROBLEM}; following the log again") == 2, messages
        assert record.state is JobState.COMPLETED and record.result is not None


async def test_a_log_the_engine_never_reads_is_given_up_and_the_job_still_ends(autojump_clock):
    from cumulus.actors.log_relay import LOG_REFOLLOW_ATTEMPTS

    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(env={"FAKE_ENGINE_MESSAGE": ENGINE_PROBLEM, "FAKE_ENGINE_MESSAGE_TIMES": "99"}))
        logs, messages = await logs_and_messages(record)
        assert logs == [("stdout", f"hello from {record.job_id}")], logs
        assert messages.count(f"log stream: {ENGINE_PROBLEM}; following the log again") == LOG_REFOLLOW_ATTEMPTS
        assert f"log stream: {ENGINE_PROBLEM} (lines of the job may be missing)" in messages, messages
        assert record.state is JobState.COMPLETED and record.result is not None
        assert not record.teardown.leaked and world.job_services() == {} and world.partitions == {}


async def test_a_finished_job_whose_process_lingers_is_completed_and_then_stopped(autojump_clock):
    """The runner said "finished" and the result is written: the job is COMPLETED at once; a container that then
    does not exit (a non-daemon thread left behind) is stopped after EXIT_AFTER_FINISH_SECONDS, not at its
    duration."""
    from cumulus.actors.attempt import EXIT_AFTER_FINISH_SECONDS

    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(env={"FAKE_LINGER": "1000"}, duration=3600))
        await record.finished.wait()
        completed_at = trio.current_time()
        assert record.state is JobState.COMPLETED and record.result is not None
        await record.torn_down.wait()
        assert trio.current_time() - completed_at < EXIT_AFTER_FINISH_SECONDS + 5
        assert not record.teardown.leaked and world.job_services() == {} and world.partitions == {}


async def test_user_exception_fails_the_job_with_its_envelope(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(exit_code=1))
        await record.torn_down.wait()
        assert (record.state, record.reason) == (JobState.FAILED, "user_exception")
        assert record.result == f"err:{record.job_id}".encode()
        await assert_nothing_left(sup, world, [record])


async def test_exit_without_result_fails_with_the_exit_code(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(exit_code=2, env={"FAKE_NO_RESULT": "1"}))
        await record.torn_down.wait()
        assert record.state is JobState.FAILED and "exit code 2" in record.reason
        await assert_nothing_left(sup, world, [record])


@pytest.mark.parametrize("at", [JobState.SCHEDULING, JobState.CREATING_PARTITION, JobState.RUNNING])
async def test_cancel_at_each_state_releases_everything(autojump_clock, at):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=100))
        async for event in record.events():
            if event.state is at:
                break
        _, was_live = await sup.cancel(record.job_id)
        assert was_live
        assert (record.state, record.reason) == (JobState.CANCELLED, "cancelled")
        await assert_nothing_left(sup, world, [record])


async def test_cancel_during_teardown_keeps_the_terminal_state(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=1))
        await record.finished.wait()
        assert not record.torn_down.is_set()
        await sup.cancel(record.job_id)
        assert record.state is JobState.COMPLETED  # written once, by the job's own end
        await assert_nothing_left(sup, world, [record])


async def test_cancelled_state_is_written_only_after_the_container_stopped(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=100))
        async for event in record.events():
            if event.state is JobState.RUNNING:
                break
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.cancel, record.job_id)
            await record.finished.wait()
            assert world.running_jobs() == set()  # the container was gone before CANCELLED was written


async def test_killing_the_job_actor_task_releases_everything(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=100))
        async for event in record.events():
            if event.state is JobState.RUNNING:
                break
        jobs = sup.root.whereis("core").whereis("jobs")
        await jobs.terminate_child(record.job_id)
        assert record.state is JobState.CANCELLED
        await assert_nothing_left(sup, world, [record])


async def test_duration_is_enforced(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=100, duration=5))
        await record.torn_down.wait()
        assert (record.state, record.reason) == (JobState.FAILED, "timeout")
        await assert_nothing_left(sup, world, [record])


async def lose_partition_when_running(record, world):
    async for event in record.events():
        if event.state is JobState.RUNNING:
            break
    (partition,) = world.partitions.values()
    partition.lost_reason = "partition expired"
    partition.lost.set()


async def test_lost_partition_fails_the_job_and_tears_down(autojump_clock):
    async with fake_cluster(**{"jobs.default_retries": 0}) as (sup, world):
        record = await sup.submit(spec(runtime=100))
        await lose_partition_when_running(record, world)
        await record.torn_down.wait()
        assert record.state is JobState.FAILED and record.reason.startswith("partition_lost")
        await assert_nothing_left(sup, world, [record])


async def test_infrastructure_failures_are_retried_by_default(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(runtime=3))
        await lose_partition_when_running(record, world)
        await record.torn_down.wait()
        assert (record.state, record.attempt) == (JobState.COMPLETED, 2)
        assert record.teardown.released.count("partition") == 2  # each attempt tore down what it held
        await assert_nothing_left(sup, world, [record])


@pytest.mark.parametrize(("retry_exceptions", "attempts"), [(False, 1), (True, 3)])
async def test_user_exceptions_are_retried_only_when_asked(autojump_clock, retry_exceptions, attempts):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(spec(exit_code=1, retries=2, retry_exceptions=retry_exceptions))
        await record.torn_down.wait()
        assert (record.state, record.reason, record.attempt) == (JobState.FAILED, "user_exception", attempts)
        results = [e async for e in record.events() if e.result is not None]
        assert len(results) == 1  # only the final outcome's envelope reaches the caller


async def test_fractional_jobs_pack_onto_one_device_and_never_overcommit(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        a = await sup.submit(spec(gpu=0.5, runtime=10))
        b = await sup.submit(spec(gpu=0.3, runtime=10))
        c = await sup.submit(spec(gpu=0.6, runtime=10))
        for record in (a, b, c):
            await record.torn_down.wait()
        assert a.state is b.state is c.state is JobState.COMPLETED
        assert a.placement.device_index == b.placement.device_index
        assert JobState.QUEUED in await states(c)  # 0.6 never ran beside 0.5: it waited for capacity
        assert c.started_at >= a.finished_at
        assert max(world.max_used.values()) <= 1.0
        await assert_nothing_left(sup, world, [a, b, c])


async def test_queue_is_fifo_within_priority_and_bounded(autojump_clock):
    from cumulus.errors import CapacityExhausted

    async with fake_cluster(workers=1, max_queue=3) as (sup, world):
        first = await sup.submit(spec(gpu=1.0, runtime=5))
        await trio.sleep(0.5)
        low = await sup.submit(spec(gpu=1.0, runtime=1))
        await trio.sleep(0.1)
        high = await sup.submit(spec(gpu=1.0, runtime=1, priority=5))
        await trio.sleep(0.1)
        timed_out = await sup.submit(spec(gpu=1.0, runtime=1, max_queue_seconds=1))
        await trio.sleep(0.1)
        with pytest.raises(CapacityExhausted, match="queue is full"):
            await sup.submit(spec(gpu=1.0, runtime=1))
        for record in (first, low, high, timed_out):
            await record.torn_down.wait()
        assert high.started_at < low.started_at  # priority first
        assert (timed_out.state, timed_out.reason.split(":")[0]) == (JobState.FAILED, "queue_timeout")
        await assert_nothing_left(sup, world, [first, low, high, timed_out])


async def test_packing_prefers_the_partly_used_device(autojump_clock):
    async with fake_cluster(workers=1, devices=2) as (sup, world):
        a = await sup.submit(spec(gpu=0.5, runtime=10))
        b = await sup.submit(spec(gpu=1.0, runtime=10))  # takes the other, empty device
        c = await sup.submit(spec(gpu=0.25, runtime=10))  # packs next to a
        for record in (a, b, c):
            await record.torn_down.wait()
        assert a.placement.device_index == c.placement.device_index != b.placement.device_index


async def test_requests_that_can_never_fit_are_refused_up_front(autojump_clock):
    from cumulus.errors import Unsatisfiable

    async with fake_cluster(workers=2, devices=1) as (sup, world):
        with pytest.raises(Unsatisfiable, match="gpu=2"):
            await sup.submit(spec(gpu=2))


async def test_idempotency_key_returns_the_same_job(autojump_clock):
    async with fake_cluster() as (sup, world):
        first = await sup.submit(spec(idempotency_key="k1"))
        second = await sup.submit(spec(idempotency_key="k1"))
        assert first is second


async def test_supervisor_shutdown_tears_every_job_down(autojump_clock):
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        async with open_supervisor(settings(), backends=world.backends(), serve_rpc=False) as sup:
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.1)
            records = [await sup.submit(spec(gpu=0.25, runtime=100)) for _ in range(6)]
            await trio.sleep(1)
        for record in records:
            assert record.torn_down.is_set() and record.teardown.leaked == ()
            assert record.state is JobState.CANCELLED
        assert world.partitions == {} and world.job_services() == {} and world.job_dirs_left() == set()
        nursery.cancel_scope.cancel()


async def test_a_subscriber_drains_a_burst_in_order_and_still_lets_other_tasks_run():
    """A burst of buffered events reaches a subscriber whole and in order, without a trip through the scheduler
    per event, but with a checkpoint every EVENTS_PER_CHECKPOINT, so a long burst does not hold the loop."""
    from cumulus.jobs import EVENTS_PER_CHECKPOINT, TeardownReport

    record = JobRecord("job-burst", spec())
    record.announce()
    lines, other_task_ran = [], []
    async with trio.open_nursery() as nursery:
        async def other_task():
            while True:
                other_task_ran.append(len(lines))
                await trio.lowlevel.checkpoint()

        async def subscriber(task_status=trio.TASK_STATUS_IGNORED):
            events = record.events()
            task_status.started()
            async for event in events:
                if event.log is not None:
                    lines.append(event.log[1])

        await nursery.start(subscriber)
        for i in range(2_000):
            record.add_log("stdout", f"line {i}")
        record.set_torn_down(TeardownReport())
        nursery.start_soon(other_task)
        with trio.fail_after(5):
            while len(lines) < 2_000:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert lines == [f"line {i}" for i in range(2_000)]
    # How often the other task ran mid-burst (not at how many distinct points: Trio may run the two tasks in
    # either order in each batch, so the other task can see the same point twice and skip the next one).
    during_burst = [seen for seen in other_task_ran if 0 < seen < 2_000]
    assert len(during_burst) >= 2_000 // EVENTS_PER_CHECKPOINT - 2, during_burst


async def test_a_worker_that_cannot_connect_says_why_in_the_worker_list(autojump_clock):
    async with fake_cluster(workers=2) as (sup, world):
        world.cut("fw2")
        with trio.fail_after(60):
            while True:
                workers = {w.hostname: w for w in await sup.list_workers()}
                if workers["fw2"].reason.startswith("SSH:"):
                    break
                await trio.sleep(1)
        assert workers["fw2"].state == "unreachable" and "connection refused" in workers["fw2"].reason
        assert workers["fw1"].healthy

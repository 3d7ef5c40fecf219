"""Checkpoints, pause and resume of jobs, on the in-memory fakes (tests/fakes/fake_cluster.py) under an autojump
clock: a FAKE_STEPS job is a training loop that saves a checkpoint every FAKE_SAVE_EVERY steps, starts from the step
after the checkpoint it was restored from, and returns (exit 3) at a pause request unless FAKE_IGNORE_PAUSE=1.

What must hold: a paused job holds nothing (no share, partition, service or job dir) and its checkpoints stay in
the store; every later attempt (a resume, a retry, a resume_on_timeout rerun) starts from the newest stored
checkpoint, never from step 0; a resumed attempt gets only what is left of the job's duration; the store forgets
the job's checkpoints when it ends; a PAUSED job stays PAUSED across a supervisor restart.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import asynccontextmanager

import pytest
import trio

import cumulus.actors.job
import cumulus.jobs
from cumulus.actors.scheduler import NodeJobs
from cumulus.app import open_supervisor
from cumulus.errors import CapacityExhausted, NotFound, WrongJobState
from cumulus.jobs import FailureReason, JobRecord, JobSpec, JobState
from cumulus.journal import Flush
from tests.fakes.fake_cluster import FakeNode, FakeWorld, fake_node
from tests.test_job_lifecycle import assert_nothing_left, fake_cluster, settings, spec, states

STEP = 0.1  # FAKE_STEP_SECONDS' default: one training step, in virtual seconds


def training(steps: int, *, save_every: int = 1, ignore_pause: bool = False, gpu: float = 0.5,
             duration: int = 600, **kw) -> JobSpec:
    """A fake training job of ``steps`` steps (result ``ok:<job id>:<steps - 1>`` when it runs to its end)."""
    env = {"FAKE_STEPS": str(steps), "FAKE_SAVE_EVERY": str(save_every)}
    if ignore_pause:
        env["FAKE_IGNORE_PAUSE"] = "1"
    return JobSpec(package=b"zip", gpu=gpu, duration=duration, env=env, **kw)


def steps_of(world: FakeWorld, record: JobRecord) -> list[int]:
    return list(world.steps_run.get(record.job_id, []))


def stored_steps(world: FakeWorld, record: JobRecord) -> list[int]:
    return [stored.step for stored, _ in world.checkpoint_store.jobs.get(record.job_id, [])]


async def until_step(world: FakeWorld, record: JobRecord, step: int) -> None:
    """Wait until the job's training loop has run ``step``."""
    with trio.fail_after(600):
        while step not in world.steps_run.get(record.job_id, []):
            await trio.sleep(STEP / 4)


async def until_state(record: JobRecord, state: JobState) -> None:
    with trio.fail_after(600):
        async for event in record.events(replay_logs=False):
            if event.state is state:
                return
    raise AssertionError(f"{record.job_id} ended {record.state.value} without becoming {state.value}")


async def until_queued(record: JobRecord, position: int) -> None:
    with trio.fail_after(10):
        while (record.state, record.queue_position) != (JobState.QUEUED, position):
            await trio.sleep(0.05)


async def states_so_far(record: JobRecord) -> list[JobState]:
    """The job's states until now (``states`` of the lifecycle tests waits for the teardown: a PAUSED job has none)."""
    seen = []
    with trio.move_on_after(0.001):
        async for event in record.events(replay_logs=False):
            if event.state is not None:
                seen.append(event.state)
    return seen


async def assert_holds_nothing(sup, world: FakeWorld, record: JobRecord) -> None:
    """Nothing of the job is held anywhere: no partition, service, container or job dir, no reservation of a share
    in the Scheduler (a queue place: see test_pausing_a_queued_job_pauses_it_at_once_and_frees_its_queue_place)."""
    job_id = record.job_id
    assert [p for p in world.partitions.values() if p.job_id == job_id] == []
    assert [c for c in world.services.values() if c.job_id == job_id] == []
    assert [d for d in world.job_dirs if d[1] == job_id] == []
    assert not any(c.job_id == job_id for c in world.services.values() if c.service_id in world.running)
    scheduler = sup.root.whereis("core").whereis("scheduler")
    for node in world.nodes:
        assert job_id not in await scheduler.call(NodeJobs(node.id)), node.hostname


async def checkpoint_events(record: JobRecord) -> list[tuple[int, int, bool]]:
    """(attempt, step, restored) of each checkpoint event of the job."""
    return [(e.attempt, e.checkpoint.step, e.checkpoint.restored)
            async for e in record.events(replay_logs=False) if e.checkpoint is not None]


async def test_a_paused_job_holds_nothing_and_resumes_from_its_checkpoint_to_the_same_result(autojump_clock):
    """Paused while it trains: it returns at its next step (PAUSED, was_running), holds nothing, and its
    checkpoints are in the store. Resumed: its next attempt is given the stored checkpoint and runs from the step
    after it (every step runs exactly once), completes with the result of an uninterrupted run, says in its events
    and its history that it started from that checkpoint, and the store forgets the job when it ends."""
    async with fake_cluster() as (sup, world):
        uninterrupted = await sup.submit(training(40))
        record = await sup.submit(training(40))
        await until_step(world, record, 10)
        asked_at = trio.current_time()
        paused, was_running = await sup.pause(record.job_id, grace=30)
        assert paused is record and was_running
        assert record.state is JobState.PAUSED and record.reason == "returned after the pause request"
        assert not record.torn_down.is_set() and record.teardown is None  # it has not ended
        assert trio.current_time() - asked_at < 1  # at its next step, not at the end of the grace period
        ran = steps_of(world, record)
        assert ran == list(range(len(ran))) and 10 <= ran[-1] < 39
        assert stored_steps(world, record)[-1] == ran[-1] == record.checkpoint_step
        assert record.checkpoints == len(stored_steps(world, record)) > 0
        await assert_holds_nothing(sup, world, record)
        await trio.sleep(5)  # still nothing: a paused job waits for its resume
        assert record.state is JobState.PAUSED and steps_of(world, record) == ran
        await assert_holds_nothing(sup, world, record)

        assert await sup.resume(record.job_id) is record
        with trio.fail_after(600):
            await record.torn_down.wait()
            await uninterrupted.torn_down.wait()
        assert record.state is JobState.COMPLETED and record.attempt == 2
        assert world.restores == [(record.job_id, f"step {ran[-1]}".encode())]
        assert steps_of(world, record) == list(range(40))  # from step k + 1 on, never again from 0
        assert record.result.split(b":")[2] == uninterrupted.result.split(b":")[2] == b"39"
        assert steps_of(world, uninterrupted) == steps_of(world, record)
        assert record.result == f"ok:{record.job_id}:39".encode()
        assert (2, ran[-1], True) in await checkpoint_events(record)
        assert await states(record) == [JobState.QUEUED, JobState.SCHEDULING, JobState.CREATING_PARTITION,
                                        JobState.RUNNING, JobState.PAUSED, JobState.QUEUED, JobState.SCHEDULING,
                                        JobState.CREATING_PARTITION, JobState.RUNNING, JobState.COMPLETED]
        _, history = await sup.describe(record.job_id)
        restored = [e for e in history if e.kind == "checkpoint" and e.data.get("restored")]
        assert [(e.attempt, e.data["step"]) for e in restored] == [(2, ran[-1])]
        assert str(ran[-1]) in restored[0].text
        assert record.job_id not in world.checkpoint_store.jobs  # removed at the end
        assert "checkpoints" in record.teardown.released
        await assert_nothing_left(sup, world, [record, uninterrupted])


async def test_a_job_that_ignores_the_pause_is_stopped_after_the_grace_period_at_its_last_checkpoint(autojump_clock):
    """A job that never returns at the pause request is stopped once its grace period is over; it is PAUSED at
    the last checkpoint it saved (copied from its worker as its attempt was torn down), and a resume runs it from
    the step after that one (the steps after it run again)."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(60, save_every=3, ignore_pause=True))
        await until_step(world, record, 5)
        asked_at = trio.current_time()
        _, was_running = await sup.pause(record.job_id, grace=2)
        assert was_running and record.state is JobState.PAUSED
        assert "did not return within 2 s" in record.reason
        assert 2 <= trio.current_time() - asked_at < 3
        ran = steps_of(world, record)
        assert ran[-1] >= 5 + 2 / STEP - 2  # it went on training through its grace period
        last_saved = max(s for s in ran if (s + 1) % 3 == 0)
        assert record.checkpoint_step == stored_steps(world, record)[-1] == last_saved
        await assert_holds_nothing(sup, world, record)

        await sup.resume(record.job_id)
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and record.result == f"ok:{record.job_id}:59".encode()
        assert steps_of(world, record)[len(ran)] == last_saved + 1
        assert steps_of(world, record)[len(ran):] == list(range(last_saved + 1, 60))
        await assert_nothing_left(sup, world, [record])


async def test_a_job_whose_process_exits_with_3_unasked_failed_and_is_not_paused(autojump_clock):
    """Exit status 3 without a result is the runner's for a job that returned at a pause request. A job's own
    process exiting with 3 when nobody asked it to pause (``os._exit(3)``) crashed: FAILED, never PAUSED (a
    paused job would wait for a resume that nobody knows to give)."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(JobSpec(package=b"zip", gpu=0.5, duration=600, env={"FAKE_EXIT": "3"}))
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert (record.state, record.failure) == (JobState.FAILED, FailureReason.CONTAINER_FAILED), record.reason
        assert "exit code 3" in record.reason
        await assert_nothing_left(sup, world, [record])


async def test_pausing_a_queued_job_pauses_it_at_once_and_frees_its_queue_place(autojump_clock):
    """A job that waits for capacity is PAUSED at once (was_running False) and leaves the queue: a job submitted
    next is admitted to the (full) queue, and when capacity comes the paused job is not the one that gets it.
    Resumed, it queues again and runs once there is room."""
    async with fake_cluster(workers=2, max_queue=1) as (sup, world):
        blockers = [await sup.submit(spec(gpu=1.0, runtime=30)) for _ in range(2)]
        for blocker in blockers:
            await until_state(blocker, JobState.RUNNING)
        queued = await sup.submit(training(10, gpu=1.0))
        await until_queued(queued, 1)
        assert queued.state is JobState.QUEUED
        with pytest.raises(CapacityExhausted, match="queue is full"):
            await sup.submit(spec(gpu=1.0, runtime=1))

        record, was_running = await sup.pause(queued.job_id)
        assert record is queued and not was_running
        assert queued.state is JobState.PAUSED and queued.reason == "paused before it ran"
        await assert_holds_nothing(sup, world, queued)
        later = await sup.submit(spec(gpu=1.0, runtime=5))  # the place it held is free
        await until_queued(later, 1)
        await sup.cancel(blockers[0].job_id)
        await until_state(later, JobState.RUNNING)  # the capacity went to the job behind it
        assert queued.state is JobState.PAUSED and queued.job_id not in world.steps_run

        await sup.resume(queued.job_id)  # both devices are busy: it waits in the queue again
        await until_queued(queued, 1)
        assert queued.state is JobState.QUEUED
        so_far = await states_so_far(queued)
        assert so_far[so_far.index(JobState.PAUSED):] == [JobState.PAUSED, JobState.QUEUED, JobState.SCHEDULING,
                                                          JobState.QUEUED]
        with trio.fail_after(600):
            await queued.torn_down.wait()
        assert queued.state is JobState.COMPLETED and steps_of(world, queued) == list(range(10))
        assert queued.started_at >= later.finished_at
        assert world.restores == []  # it had saved nothing: it started from the beginning
        await sup.cancel(blockers[1].job_id)
        await assert_nothing_left(sup, world, [*blockers, queued, later])


async def test_a_retry_after_a_lost_node_runs_from_the_last_stored_checkpoint(autojump_clock):
    """The job's node is cut off mid-run: the checkpoint it saved last cannot be copied any more, and the retry
    starts from the newest one the store has, not from step 0 (steps_run shows it); the retry is in its events."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(40, save_every=3, retries=5))
        await until_step(world, record, 10)
        host = record.placement.worker
        world.cut(host)
        cut_at = len(steps_of(world, record))
        stored = stored_steps(world, record)[-1]
        with trio.fail_after(60):
            async for event in record.events(replay_logs=False):
                if event.message and "node_lost" in event.message and "retrying" in event.message:
                    break
        world.restore(host)
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and record.attempt >= 2, record.reason
        ran = steps_of(world, record)
        assert ran[:cut_at] == list(range(cut_at))
        assert ran[cut_at:] == list(range(stored + 1, 40)), (stored, ran)  # no step 0 again
        assert stored > 0 and ran.count(0) == 1
        assert world.restores and all(data == f"step {stored}".encode() for _, data in world.restores)
        _, history = await sup.describe(record.job_id)
        assert [e.data["failed_attempt"] for e in history if e.kind == "retry"][:1] == [1]
        assert any(e.kind == "checkpoint" and e.data["restored"] and e.data["step"] == stored for e in history)
        await assert_nothing_left(sup, world, [record])


async def test_wrong_states_are_refused_and_a_second_pause_is_harmless(autojump_clock):
    """Resuming a job that is not PAUSED, pausing or resuming one that has ended: WrongJobState, saying why; an
    unknown job: NotFound. Pausing twice (at once, or once it is PAUSED) does nothing more."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(100))
        await until_state(record, JobState.RUNNING)
        with pytest.raises(WrongJobState, match="not PAUSED"):
            await sup.resume(record.job_id)
        with pytest.raises(NotFound):
            await sup.pause("unit-000000000000")
        with pytest.raises(NotFound):
            await sup.resume("unit-000000000000")

        answers = []

        async def pause() -> None:
            answers.append(await sup.pause(record.job_id, grace=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause)
            nursery.start_soon(pause)
        assert sorted(was_running for _, was_running in answers) == [False, True]
        assert all(r.state is JobState.PAUSED for r, _ in answers)
        paused_states = await states_so_far(record)
        assert paused_states[-1] is JobState.PAUSED and paused_states.count(JobState.PAUSED) == 1
        assert await sup.pause(record.job_id) == (record, False)
        assert await states_so_far(record) == paused_states and record.state is JobState.PAUSED  # nothing new
        await sup.resume(record.job_id)
        with pytest.raises(WrongJobState, match="not PAUSED"):
            await sup.resume(record.job_id)

        done = await sup.submit(spec(runtime=0.5))
        await done.torn_down.wait()
        with pytest.raises(WrongJobState, match="has ended"):
            await sup.pause(done.job_id)
        with pytest.raises(WrongJobState, match="has ended"):
            await sup.resume(done.job_id)
        await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [record, done])


async def test_cancelling_a_paused_job_ends_it_and_empties_the_store(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(100))
        await until_step(world, record, 5)
        await sup.pause(record.job_id)
        assert stored_steps(world, record)
        _, was_live = await sup.cancel(record.job_id)
        assert was_live and (record.state, record.reason) == (JobState.CANCELLED, "cancelled")
        assert record.job_id not in world.checkpoint_store.jobs
        assert record.teardown.released[-1] == "checkpoints"
        with pytest.raises(WrongJobState):
            await sup.resume(record.job_id)
        await assert_nothing_left(sup, world, [record])


async def test_a_job_paused_in_the_queue_is_not_shown_in_the_queue(autojump_clock):
    """A job paused while it waited for capacity has no queue position any more: its status and the dashboard's
    queue do not show it waiting."""
    from cumulus.dashboard.cluster import cluster_view

    async with fake_cluster(workers=1) as (sup, world):
        blocker = await sup.submit(spec(gpu=1.0, runtime=30))
        await until_state(blocker, JobState.RUNNING)
        queued = await sup.submit(training(10, gpu=1.0))
        await until_queued(queued, 1)
        await sup.pause(queued.job_id)
        view = cluster_view(await sup.list_workers(), await sup.list_jobs(include_finished=False), admin=True)
        assert view["queue_length"] == 0 and queued.queue_position == 0
        await sup.cancel(queued.job_id)
        await sup.cancel(blocker.job_id)


async def test_a_job_paused_while_it_ran_is_not_shown_on_a_device(autojump_clock):
    """The dashboard's cluster page lists the jobs on each device: a PAUSED job holds none and is not there."""
    from cumulus.dashboard.cluster import cluster_view

    async with fake_cluster(workers=1) as (sup, world):
        record = await sup.submit(training(100))
        await until_step(world, record, 3)
        await sup.pause(record.job_id)
        view = cluster_view(await sup.list_workers(), await sup.list_jobs(include_finished=False), admin=True)
        on_devices = [r.job_id for worker in view["workers"] for device in worker.devices for r in device.jobs]
        assert record.job_id not in on_devices
        await sup.cancel(record.job_id)


async def test_killing_the_actor_of_a_paused_job_leaves_it_paused_and_resumable(autojump_clock):
    """A paused job holds nothing, so its actor stopping from outside (killed, or the supervisor stopping) ends
    nothing: the job stays PAUSED with its checkpoints, and a resume gives it a new actor that goes on from them."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(12))
        await until_step(world, record, 3)
        await sup.pause(record.job_id)
        step = record.checkpoint_step
        await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
        assert record.state is JobState.PAUSED and not record.torn_down.is_set()
        assert stored_steps(world, record)[-1] == step
        await sup.resume(record.job_id)
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert record.state is JobState.COMPLETED
        assert steps_of(world, record) == list(range(12))
        await assert_nothing_left(sup, world, [record])


async def test_cancelling_a_paused_job_whose_actor_stopped_ends_it(autojump_clock):
    """Its actor stopped from outside, a paused job is left PAUSED (as a resume finds it); a cancel must still end
    it: CANCELLED, its checkpoints gone, torn down."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(100))
        await until_step(world, record, 3)
        await sup.pause(record.job_id)
        await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
        with trio.fail_after(60):
            _, was_live = await sup.cancel(record.job_id)
        assert was_live and record.state is JobState.CANCELLED
        assert record.job_id not in world.checkpoint_store.jobs
        await assert_nothing_left(sup, world, [record])


class VirtualWallClock:
    """``time.time()`` following the Trio clock, for the job's wall-clock bookkeeping (``ran_seconds``): under the
    autojump clock the real one hardly moves while a job "runs" for seconds."""

    def __init__(self) -> None:
        self.epoch = time.time()

    def time(self) -> float:
        return self.epoch + trio.current_time()


@pytest.fixture()
def virtual_wall_clock(monkeypatch):
    clock = VirtualWallClock()
    monkeypatch.setattr(cumulus.jobs, "time", clock)
    monkeypatch.setattr(cumulus.actors.job, "time", clock)
    return clock


@pytest.fixture()
def partition_durations(monkeypatch) -> list[tuple[str, float]]:
    """(job id, duration) of every partition the fake workers are asked to open."""
    opened: list[tuple[str, float]] = []
    original = FakeNode.open_partition

    def open_partition(self, *, duration: float, job_id: str, **kw):
        opened.append((job_id, duration))
        return original(self, duration=duration, job_id=job_id, **kw)

    monkeypatch.setattr(FakeNode, "open_partition", open_partition)
    return opened


async def test_a_resumed_job_gets_what_is_left_of_its_duration(autojump_clock, virtual_wall_clock,
                                                                partition_durations):
    """Duration D, paused after running r seconds: its resumed attempt's partition is for D - r, and it is
    stopped (FAILED, timeout) once that is used up, though its training has steps left."""
    duration = 20
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(1_000, duration=duration))
        await until_state(record, JobState.RUNNING)
        running_at = trio.current_time()
        await until_step(world, record, 50)
        await sup.pause(record.job_id)
        ran = record.ran_seconds
        assert 5 <= ran <= trio.current_time() - running_at + 0.01
        assert partition_durations == [(record.job_id, duration)]

        await sup.resume(record.job_id)
        await until_state(record, JobState.RUNNING)
        resumed_at = trio.current_time()
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert partition_durations[1] == (record.job_id, pytest.approx(duration - ran))
        assert (record.state, record.failure) == (JobState.FAILED, FailureReason.TIMEOUT)
        assert trio.current_time() - resumed_at == pytest.approx(duration - ran, abs=1)
        assert len(steps_of(world, record)) < duration / STEP
        await assert_nothing_left(sup, world, [record])


async def test_a_job_that_used_its_whole_duration_cannot_be_resumed(autojump_clock):
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(1_000, duration=30))
        await until_step(world, record, 3)
        await sup.pause(record.job_id)
        record.ran_seconds = 30.0  # as its paused attempts left it had they run it all (the journal keeps it)
        with pytest.raises(WrongJobState, match="whole duration"):
            await sup.resume(record.job_id)
        assert record.state is JobState.PAUSED
        await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [record])


async def test_resume_on_timeout_runs_a_long_training_to_its_end_across_durations(autojump_clock,
                                                                                   partition_durations):
    """resume_on_timeout: each attempt is stopped at the job's duration and the next one runs from the last
    checkpoint, each with the whole duration, until the training completes; attempts that saved a checkpoint are
    no retries, so it runs more attempts than ``retries`` allows."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(40, duration=1, retries=1, resume_on_timeout=True))
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert record.state is JobState.COMPLETED, record.reason
        assert record.result == f"ok:{record.job_id}:39".encode()
        assert record.attempt >= 4  # > retries + 1
        assert steps_of(world, record) == list(range(40))  # each attempt went on from the one before
        assert len(world.restores) == record.attempt - 1
        assert {d for _, d in partition_durations} == {1.0}
        _, history = await sup.describe(record.job_id)
        retries = [e for e in history if e.kind == "retry"]
        assert len(retries) == record.attempt - 1 and all("timeout" in e.reason for e in retries)
        await assert_nothing_left(sup, world, [record])


async def test_resume_on_timeout_without_progress_fails_after_its_retries(autojump_clock):
    """An attempt that saved no checkpoint within the duration made no progress: it counts as a retry, and once
    ``retries`` are used up the job ends FAILED (timeout)."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(100, save_every=1_000, duration=1, retries=2, resume_on_timeout=True))
        with trio.fail_after(600):
            await record.torn_down.wait()
        assert (record.state, record.failure, record.attempt) == (JobState.FAILED, FailureReason.TIMEOUT, 3)
        assert world.restores == [] and stored_steps(world, record) == []
        assert steps_of(world, record).count(0) == 3  # each attempt started over
        await assert_nothing_left(sup, world, [record])


# A journal on disk works in a thread: a clock that jumped at once whenever the Trio loop waits for it would spin
# (starving the thread) and jump hours ahead; this long a wait (real seconds) first lets the thread go on.
JOURNAL_THREAD_GRACE = 0.005


@asynccontextmanager
async def supervisor_on(world: FakeWorld, journal: str):
    async with open_supervisor(settings(**{"journal.path": journal}), backends=world.backends(),
                               serve_rpc=False) as sup:
        with trio.fail_after(30):
            while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                await trio.sleep(0.1)
        yield sup


async def test_a_paused_job_stays_paused_across_a_supervisor_restart(mock_clock, tmp_path):
    """The supervisor dies (nothing released, its journal as it was) while a job is PAUSED: the next one finds it
    PAUSED with its checkpoint step, holding nothing, and resuming it runs it on from that checkpoint."""
    mock_clock.autojump_threshold = JOURNAL_THREAD_GRACE
    journal, after_crash = tmp_path / "journal.sqlite3", tmp_path / "after-crash.sqlite3"
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        async with supervisor_on(world, str(journal)) as sup:
            record = await sup.submit(training(12))
            await until_step(world, record, 4)
            await sup.pause(record.job_id)
            step = record.checkpoint_step
            await sup.root.whereis("core").whereis("journal").call(Flush())
            with sqlite3.connect(journal) as source, sqlite3.connect(after_crash) as target:
                source.backup(target)  # the journal as a killed process leaves it
            store = {job_id: list(kept) for job_id, kept in world.checkpoint_store.jobs.items()}
            world.frozen = True
        world.frozen = False
        world.checkpoint_store.jobs = store  # and its checkpoint store, as the killed process left it
        assert world.partitions == {} and world.job_services() == {} and world.job_dirs_left() == set()

        async with supervisor_on(world, str(after_crash)) as sup:
            recovered = await sup.get(record.job_id)
            assert recovered is not record
            await trio.sleep(5)
            assert recovered.state is JobState.PAUSED
            assert (recovered.checkpoint_step, recovered.checkpoints) == (step, len(stored_steps(world, record)))
            await assert_holds_nothing(sup, world, recovered)
            assert await sup.pause(record.job_id) == (recovered, False)
            await sup.resume(record.job_id)
            with trio.fail_after(600):
                await recovered.torn_down.wait()
            assert recovered.state is JobState.COMPLETED, recovered.reason
            assert recovered.result == f"ok:{record.job_id}:11".encode()
            assert steps_of(world, record) == list(range(12))
            assert world.restores == [(record.job_id, f"step {step}".encode())]
            assert record.job_id not in world.checkpoint_store.jobs
            await assert_nothing_left(sup, world, [recovered])
        nursery.cancel_scope.cancel()


async def test_a_paused_job_keeps_its_checkpoints_across_a_graceful_supervisor_restart(mock_clock, tmp_path):
    """The supervisor is stopped the ordinary way (an upgrade, a restart) while a job is PAUSED: the next one finds
    it PAUSED (the journal says so) and its checkpoints with it, so a resume goes on from where it was paused."""
    mock_clock.autojump_threshold = JOURNAL_THREAD_GRACE
    journal = str(tmp_path / "journal.sqlite3")
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], nursery)
        async with supervisor_on(world, journal) as sup:
            record = await sup.submit(training(12))
            await until_step(world, record, 4)
            await sup.pause(record.job_id)
            step = record.checkpoint_step
        async with supervisor_on(world, journal) as sup:
            recovered = await sup.get(record.job_id)
            assert recovered.state is JobState.PAUSED
            assert recovered.checkpoint_step == step and stored_steps(world, record)[-1] == step
            await sup.resume(record.job_id)
            with trio.fail_after(600):
                await recovered.torn_down.wait()
            assert recovered.state is JobState.COMPLETED
            assert steps_of(world, record) == list(range(12))
        nursery.cancel_scope.cancel()


async def test_pausing_a_job_whose_actor_is_stopping_leaves_the_other_jobs_alone(autojump_clock):
    """A pause that reaches a job while its actor stops (killed here; its job ends meanwhile) is refused or
    answered with the ended job, never a crash of the supervisor's core: the other jobs go on undisturbed."""
    async with fake_cluster() as (sup, world):
        bystander = await sup.submit(training(100))
        record = await sup.submit(spec(runtime=100))
        await until_state(record, JobState.RUNNING)
        await until_step(world, bystander, 2)
        answers = []

        async def pause() -> None:
            try:
                answers.append((await sup.pause(record.job_id))[0].state)
            except WrongJobState as refused:
                answers.append(refused)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.root.whereis("core").whereis("jobs").terminate_child, record.job_id)
            nursery.start_soon(pause)
        assert record.state is JobState.CANCELLED and len(answers) == 1, answers
        await trio.sleep(1)
        assert bystander.state is JobState.RUNNING, (bystander.state, bystander.reason)
        await sup.cancel(bystander.job_id)
        await assert_nothing_left(sup, world, [record, bystander])


@pytest.mark.parametrize("earlier", ["paused and resumed", "failed and retried"])
async def test_a_job_stopped_from_outside_in_a_later_attempt_is_cancelled(autojump_clock, earlier):
    """A job in its second attempt (after a pause and resume, or after a retried failure) whose actor is stopped
    from outside (killed here, as the supervisor's shutdown does) ends CANCELLED, as in its first attempt
    (test_killing_the_job_actor_task_releases_everything): not with its earlier attempt's outcome (PAUSED, or
    FAILED with that attempt's reason)."""
    async with fake_cluster() as (sup, world):
        record = await sup.submit(training(100))
        await until_step(world, record, 3)
        if earlier == "paused and resumed":
            await sup.pause(record.job_id)
            await sup.resume(record.job_id)
        else:
            (partition,) = [p for p in world.partitions.values() if p.job_id == record.job_id]
            partition.lost_reason = "partition expired"
            partition.lost.set()
        await until_step(world, record, 8)
        assert record.attempt == 2 and record.state is JobState.RUNNING
        await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
        assert (record.state, record.reason) == (JobState.CANCELLED, "supervisor stopped the job")
        assert record.job_id not in world.checkpoint_store.jobs
        await assert_nothing_left(sup, world, [record])

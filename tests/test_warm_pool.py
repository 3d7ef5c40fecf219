"""Warm services, on in-memory fakes of the Swarm and the workers: a job takes a ready one, each runs exactly one
job, the pool refills, jobs that need something made at create time start cold, and a warm service that dies
(idle, or between its hand-over and its start) never loses or doubles a job."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from cumulus import metrics
from cumulus.jobs import JobState
from tests.fakes.fake_cluster import FakeWorld
from tests.test_job_lifecycle import assert_nothing_left, fake_cluster, spec


def warm_services(world: FakeWorld, *, ready_only: bool = True) -> dict[str, object]:
    return {sid: c for sid, c in world.services.items() if c.warm_start is not None and not c.warm_start.is_set()
            and (c.state == "running" or not ready_only)}


async def pool_ready(world: FakeWorld, count: int) -> None:
    with trio.fail_after(30):
        while len(warm_services(world)) < count:
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # the pool hears of the running tasks at the watcher's next poll


def starts(path: str) -> float:
    return metrics.current().job_starts.labels(path)._value.get()


async def test_a_job_takes_a_ready_warm_service_and_the_pool_refills(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        before = starts("warm")
        record = await sup.submit(spec(runtime=1))
        await record.finished.wait()
        assert record.state is JobState.COMPLETED
        assert starts("warm") == before + 1
        assert [jobs for jobs in world.warm_jobs.values()] == [[record.job_id]]
        await assert_nothing_left(sup, world, [record])
        await pool_ready(world, 1)  # a new warm service replaced the one the job took


async def test_every_warm_container_runs_exactly_one_job(autojump_clock):
    async with fake_cluster(workers=2, devices=2, **{"jobs.warm_per_device": 1}) as (sup, world):
        await pool_ready(world, 4)
        records = []
        for wave in range(3):
            records += [await sup.submit(spec(gpu=0.3, runtime=0.5)) for _ in range(6)]
            await trio.sleep(0.7 * wave)
        for record in records:
            await record.torn_down.wait()
        assert all(r.state is JobState.COMPLETED for r in records)
        assert all(len(jobs) == 1 for jobs in world.warm_jobs.values())
        taken = [job for jobs in world.warm_jobs.values() for job in jobs]
        assert len(taken) == len(set(taken)) >= 4  # no job ran in two warm containers either
        await assert_nothing_left(sup, world, records)


@pytest.mark.parametrize("options", [{"requirements": ("six",)}, {"gpu": 1.0}, {"memory_bytes": 64 << 20},
                                     {"secret_env": {"TOKEN": "x"}}, {"cpus": 0.5}])
async def test_a_job_that_needs_its_own_container_starts_cold(autojump_clock, options):
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        pooled, before = set(warm_services(world)), starts("cold")
        record = await sup.submit(spec(**options))
        await record.torn_down.wait()
        assert starts("cold") == before + 1 and not pooled & set(world.warm_jobs)


async def test_warm_services_off(autojump_clock):
    async with fake_cluster(workers=1, **{"jobs.warm_per_device": 0}) as (sup, world):
        await trio.sleep(5)
        assert warm_services(world, ready_only=False) == {}  # no pool
        record = await sup.submit(spec(runtime=0.5))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and world.services == {}
        assert list(world.warm_jobs.values()) == [[record.job_id]]  # its own service, made for it


async def test_a_warm_container_that_dies_idle_is_replaced(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        (first,) = warm_services(world).values()
        first.killed.set()  # killed while it waited: its task fails, its service stays
        with trio.fail_after(30):
            while first.service_id in world.services:
                await trio.sleep(0.05)
        await pool_ready(world, 1)
        record = await sup.submit(spec(runtime=0.5))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and len(world.warm_jobs) == 1
        await assert_nothing_left(sup, world, [record])


async def test_a_warm_container_gone_before_its_start_is_retried_never_run_twice(autojump_clock, monkeypatch):
    from tests.fakes import fake_cluster as fakes

    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        original = fakes.FakeNode.start_warm_job
        killed: list[str] = []

        async def die_first(self, job_id, message, timeout=3.0):  # the container dies between the hand-over and the start
            if not killed:
                for container in warm_services(world).values():
                    container.killed.set()
                    killed.append(container.service_id)
                await trio.sleep(0.05)
            return await original(self, job_id, message, timeout)

        monkeypatch.setattr(fakes.FakeNode, "start_warm_job", die_first)
        record = await sup.submit(spec(runtime=0.5))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and record.attempt == 2
        assert killed and killed[0] not in world.warm_jobs
        assert sum(job == record.job_id for jobs in world.warm_jobs.values() for job in jobs) <= 1
        await assert_nothing_left(sup, world, [record])


async def test_cancel_of_a_warm_job_returns_when_stopped_and_releases_everything(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        record = await sup.submit(spec(runtime=100))
        async for event in record.events():
            if event.state is JobState.RUNNING:
                break
        assert world.warm_jobs
        stopped, _ = await sup.cancel(record.job_id, until_stopped=True)
        assert stopped.halted.is_set() and world.partitions == {}
        assert world.running_jobs() == set()
        await assert_nothing_left(sup, world, [record])
        assert record.state is JobState.CANCELLED


def slow_warm_unwatch(monkeypatch) -> trio.Event:
    """Make a claim's end of the warm service's task watch take a second; the event is set when one begins."""
    from cumulus.actors.watcher import TaskWatcher, Unwatch

    original, claiming = TaskWatcher.handle, trio.Event()

    async def handle(self, message):
        if isinstance(message, Unwatch) and "-warm-" in message.job_id and not claiming.is_set():
            claiming.set()
            await trio.sleep(1)
        return await original(self, message)

    monkeypatch.setattr(TaskWatcher, "handle", handle)
    return claiming


async def test_a_job_killed_while_it_claims_a_warm_service_removes_it(autojump_clock, monkeypatch):
    claiming = slow_warm_unwatch(monkeypatch)
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        record = await sup.submit(spec(runtime=100))
        await claiming.wait()
        await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
        await record.torn_down.wait()
        assert world.warm_jobs == {}  # it never started there, and its warm service went with it
        await assert_nothing_left(sup, world, [record])
    assert world.services == {} and world.job_dirs == set()


async def test_a_supervisor_stopping_while_a_job_claims_a_warm_service_leaves_none(autojump_clock, monkeypatch):
    claiming = slow_warm_unwatch(monkeypatch)
    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        await sup.submit(spec(runtime=100))
        await claiming.wait()
    assert world.services == {} and world.partitions == {} and world.job_dirs == set()


async def test_a_job_without_a_warm_service_has_its_own_made_before_its_partition(autojump_clock, monkeypatch):
    from tests.fakes import fake_cluster as fakes

    original, seen = fakes.FakeNode.open_partition, []

    def open_partition(self, **kw):  # what exists of the job's own service when its partition is asked for
        seen.append([c.state for c in world.services.values() if c.warm_start is not None])
        return original(self, **kw)

    monkeypatch.setattr(fakes.FakeNode, "open_partition", open_partition)
    async with fake_cluster(workers=1, **{"jobs.warm_per_device": 0}) as (sup, world):
        before = starts("cold")
        record = await sup.submit(spec(runtime=0.5))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and starts("cold") == before + 1
        assert seen == [["pending"]]  # made, and still being started by the Swarm
        await assert_nothing_left(sup, world, [record])


async def test_a_jobs_own_container_that_ends_before_its_start_is_retried_at_once(autojump_clock, monkeypatch):
    from tests.fakes import fake_cluster as fakes

    original, killed = fakes.FakeSwarm.open_service, []

    @asynccontextmanager
    async def dies_at_start(self, request):  # the first job container fails as it starts
        async with original(self, request) as handle:
            if not killed:
                killed.append(handle.id)
                self.world.services[handle.id].killed.set()
            yield handle

    monkeypatch.setattr(fakes.FakeSwarm, "open_service", dies_at_start)
    async with fake_cluster(workers=1, **{"jobs.warm_per_device": 0}) as (sup, world):
        started = trio.current_time()
        record = await sup.submit(spec(runtime=0.5, retries=0))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED and record.attempt == 2
        assert trio.current_time() - started < 30  # its task's end was seen: the hand-over did not wait it out
        assert killed[0] not in world.warm_jobs
        await assert_nothing_left(sup, world, [record])


async def test_a_job_whose_env_does_not_fit_a_start_message_starts_the_plain_cold_way(autojump_clock):
    from cumulus.resources.warm import MAX_START_BYTES

    async with fake_cluster(workers=1) as (sup, world):
        await pool_ready(world, 1)
        record = await sup.submit(spec(runtime=0.5, env={"BIG": "x" * MAX_START_BYTES}))
        await record.torn_down.wait()
        assert record.state is JobState.COMPLETED
        assert record.job_id not in [job for jobs in world.warm_jobs.values() for job in jobs]
        await assert_nothing_left(sup, world, [record])

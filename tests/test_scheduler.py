"""The Scheduler actor: the one owner of shares, the queue and placement. Real actors; the jobs are fakes that only
record what the Scheduler tells them."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given, settings as hsettings, strategies as st

from cumulus.actors import Actor, run_actor
from cumulus.actors.scheduler import (Admit, ExpectAdoptions, Granted, ListWorkers, NodeInventory, NodesChanged,
                                      QueuePosition, Queued, Release, Reservation, Reserve, Scheduler, WorkerHealth)
from cumulus.backends import WorkerUnavailable
from cumulus.config import load_settings
from cumulus.errors import CapacityExhausted, Unsatisfiable
from cumulus.devices import DeviceInfo
from cumulus.jobs import JobSpec, Placement


def settings(max_queue: int = 100, allow_non_gpu: bool = False, max_jobs_per_device: int = 16):
    return load_settings(environ={}, overrides={
        "supervisor_id": "unit", "cluster.docker_host": "unix:///fake", "cluster.image": "sha256:fake",
        "journal.path": ":memory:", "jobs.max_queue": max_queue, "cluster.allow_non_gpu_devices": allow_non_gpu,
        "jobs.max_jobs_per_device": max_jobs_per_device})


def inventory(name: str, devices: int = 1, *, ready: bool = True) -> NodeInventory:
    return NodeInventory(f"id-{name}", name, f"{name}:22",
                         tuple(DeviceInfo(i, "gpu", "gpu", True, 0, f"GPU-{name}-{i}") for i in range(devices)),
                         ready, "ready/active" if ready else "down/active")


def spec(gpu: float = 0.5, priority: int = 0) -> JobSpec:
    return JobSpec(package=b"", gpu=gpu, priority=priority)


class FakeJob(Actor):
    """Records the Scheduler's messages to a job."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.got: list[Any] = []
        self.changed = trio.Event()

    async def handle(self, message: Any) -> Any:
        self.got.append(message)
        self.changed.set()
        self.changed = trio.Event()


@asynccontextmanager
async def scheduler(*nodes: NodeInventory, connected: bool = True, **kw):
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_actor, Scheduler(settings(**kw)))
        await ref.cast(NodesChanged(nodes))
        for node in nodes if connected else ():
            await ref.cast(WorkerHealth(node.node_id, True))
        yield ref, nursery
        nursery.cancel_scope.cancel()


async def fake_job(nursery, name: str):
    job = FakeJob(name)
    return job, await nursery.start(run_actor, job)


async def settle():
    for _ in range(20):
        await trio.lowlevel.checkpoint()


async def test_a_fitting_request_is_granted_at_once_and_released_by_message():
    async with scheduler(inventory("a")) as (ref, _):
        got = await ref.call(Reserve("j1", spec(0.5), 1))
        assert isinstance(got, Reservation) and (got.worker, got.device_indexes, got.share) == ("a", (0,), 0.5)
        assert got.gpu_uuids == ("GPU-a-0",)
        assert isinstance(await ref.call(Reserve("j2", spec(0.5), 1)), Reservation)
        assert isinstance(await ref.call(Reserve("j3", spec(0.5), 1)), Queued)
        await ref.cast(Release("j1"))
        (worker,) = await ref.call(ListWorkers())
        assert worker.running_jobs == 1 + 1 and worker.devices[0].used_share == 1.0  # j3 took j1's share


async def test_a_device_holding_the_most_jobs_allowed_takes_no_more_whatever_share_is_free():
    async with scheduler(inventory("a"), max_jobs_per_device=3) as (ref, nursery):
        for n in range(3):
            assert isinstance(await ref.call(Reserve(f"j{n}", spec(0.01), 1)), Reservation)
        waiting, waiting_ref = await fake_job(nursery, "waiting")
        assert await ref.call(Reserve("j3", spec(0.01), 1, waiting_ref)) == Queued(1)  # 0.97 free, but 3 jobs
        (worker,) = await ref.call(ListWorkers())
        assert worker.running_jobs == 3 and worker.devices[0].used_share == 0.03
        await ref.cast(Release("j0"))
        await settle()
        assert [m.reservation.job_id for m in waiting.got if isinstance(m, Granted)] == ["j3"]


async def test_by_default_a_device_takes_sixteen_jobs():
    async with scheduler(inventory("a", devices=2)) as (ref, _):
        places = [(await ref.call(Reserve(f"j{n}", spec(0.01), 1))).device_indexes for n in range(32)]
        assert places == [(0,)] * 16 + [(1,)] * 16
        assert isinstance(await ref.call(Reserve("j32", spec(0.01), 1)), Queued)


async def test_the_queue_is_strict_priority_then_arrival_and_grants_by_message():
    async with scheduler(inventory("a")) as (ref, nursery):
        await ref.call(Reserve("big", spec(1.0), 1))
        jobs = {name: await fake_job(nursery, name) for name in ("low", "high", "tiny")}
        assert await ref.call(Reserve("low", spec(1.0), 7, jobs["low"][1])) == Queued(1)
        assert await ref.call(Reserve("high", spec(1.0, priority=5), 8, jobs["high"][1])) == Queued(1)
        assert await ref.call(Reserve("tiny", spec(0.1), 9, jobs["tiny"][1])) == Queued(3)
        await settle()
        assert jobs["low"][0].got == [QueuePosition(7, 2)]  # overtaken by a higher priority
        await ref.cast(Release("big"))
        await settle()
        (granted,) = [m for m in jobs["high"][0].got if isinstance(m, Granted)]
        assert granted.ticket == 8 and granted.reservation.job_id == "high"
        assert QueuePosition(7, 1) in jobs["low"][0].got
        assert not any(isinstance(m, Granted) for m in jobs["tiny"][0].got)  # nobody overtakes the head


async def test_a_queued_job_that_releases_leaves_the_queue():
    async with scheduler(inventory("a")) as (ref, nursery):
        await ref.call(Reserve("big", spec(1.0), 1))
        a, a_ref = await fake_job(nursery, "a")
        b, b_ref = await fake_job(nursery, "b")
        await ref.call(Reserve("qa", spec(1.0), 1, a_ref))
        await ref.call(Reserve("qb", spec(1.0), 1, b_ref))
        await ref.cast(Release("qa"))
        await settle()
        assert QueuePosition(1, 1) in b.got
        await ref.cast(Release("big"))
        await settle()
        assert any(isinstance(m, Granted) for m in b.got) and not any(isinstance(m, Granted) for m in a.got)


async def test_a_grant_for_a_job_that_is_gone_is_given_back():
    async with scheduler(inventory("a")) as (ref, nursery):
        await ref.call(Reserve("big", spec(1.0), 1))
        gone, gone_ref = await fake_job(nursery, "gone")
        await ref.call(Reserve("gone", spec(1.0), 1, gone_ref))
        gone.stop()
        await gone_ref.wait_stopped()
        await ref.cast(Release("big"))
        assert isinstance(await ref.call(Reserve("next", spec(1.0), 1)), Reservation)


async def test_admission_refuses_what_could_never_run_and_a_full_queue():
    async with scheduler(max_queue=1) as (ref, _):
        with pytest.raises(Unsatisfiable, match="no workers"):
            await ref.call(Admit(spec()))
    async with scheduler(inventory("a", devices=2), max_queue=1) as (ref, _):
        with pytest.raises(Unsatisfiable, match="no worker has enough GPUs for gpu=3"):
            await ref.call(Admit(spec(3)))
        await ref.call(Admit(spec(2)))
        await ref.call(Reserve("all", spec(2), 1))
        await ref.call(Reserve("waits", spec(2), 1))
        with pytest.raises(CapacityExhausted, match="queue is full"):
            await ref.call(Admit(spec(0.5)))


async def test_nothing_goes_to_a_node_that_is_not_connected_or_not_ready():
    async with scheduler(inventory("a"), connected=False) as (ref, nursery):
        job, job_ref = await fake_job(nursery, "j")
        assert isinstance(await ref.call(Reserve("j", spec(), 1, job_ref)), Queued)
        (worker,) = await ref.call(ListWorkers())
        assert worker.state == "unreachable" and not worker.healthy
        await ref.cast(WorkerHealth("id-a", True))
        await settle()
        assert any(isinstance(m, Granted) for m in job.got)
        await ref.cast(NodesChanged((inventory("a", ready=False),)))
        (worker,) = await ref.call(ListWorkers())
        assert worker.state == "down" and worker.reason == "node is down/active"


async def test_readoptions_come_first_on_their_node():
    placement = Placement("a", "id-a", 0, 0.5, (0,), ("GPU-a-0",))
    async with scheduler(inventory("a"), connected=False) as (ref, nursery):
        await ref.cast(ExpectAdoptions((("old", "id-a"),)))
        with pytest.raises(WorkerUnavailable):
            await ref.call(Reserve("old", spec(0.5), 1, exact=placement))
        await ref.cast(WorkerHealth("id-a", True))
        job, job_ref = await fake_job(nursery, "new")
        assert isinstance(await ref.call(Reserve("new", spec(0.5), 1, job_ref)), Queued)  # not before "old"
        got = await ref.call(Reserve("old", spec(0.5), 1, exact=placement))
        assert got.device_indexes == (0,) and got.share == 0.5
        await settle()
        assert any(isinstance(m, Granted) for m in job.got)


OPS = st.lists(st.tuples(st.sampled_from(["reserve", "release"]), st.integers(0, 7),
                         st.sampled_from([0.01, 0.25, 0.5, 1.0, 2.0]), st.integers(-1, 1)), max_size=40)


@hsettings(deadline=None, max_examples=60)
@given(OPS)
def test_any_sequence_of_reserves_and_releases_keeps_the_books_right(ops):
    """Whatever jobs ask and give back: no device is ever promised more than whole; every job holds at most one
    reservation; releasing everything leaves every device free and the queue empty."""

    async def main():
        async with scheduler(inventory("a", 2), inventory("b", 1)) as (ref, nursery):
            jobs = {}
            for op, job, gpu, priority in ops:
                name = f"j{job}"
                if op == "reserve":
                    if name not in jobs:
                        jobs[name] = await fake_job(nursery, name)
                    try:
                        await ref.call(Reserve(name, spec(gpu, priority), 1, jobs[name][1]))
                    except CapacityExhausted:
                        pass  # already holds or waits
                else:
                    await ref.cast(Release(name))
                for worker in await ref.call(ListWorkers()):
                    assert all(d.used_share <= 1.0 + 1e-9 for d in worker.devices), worker
            for name in jobs:
                await ref.cast(Release(name))
            for worker in await ref.call(ListWorkers()):
                assert all(d.used_share == 0 for d in worker.devices) and worker.running_jobs == 0

    trio.run(main)


async def test_a_worker_that_connects_before_its_node_is_listed_is_not_forgotten():
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_actor, Scheduler(settings()))
        await ref.cast(WorkerHealth("id-a", True))  # the worker actor connected at once...
        await ref.cast(NodesChanged((inventory("a"),)))  # ...before the cluster's node list came
        (worker,) = await ref.call(ListWorkers())
        assert worker.healthy and worker.state == "ready"
        assert isinstance(await ref.call(Reserve("j", spec(), 1)), Reservation)
        nursery.cancel_scope.cancel()


async def test_a_readopted_share_is_counted_before_waiting_jobs_are_placed():
    """Found in review: the re-adoption's drain ran before its own share was held, so a waiting job could get
    the same device's room (1.2 of one device promised)."""
    placement = Placement("a", "id-a", 0, 0.6, (0,), ("GPU-a-0",))
    async with scheduler(inventory("a")) as (ref, nursery):
        await ref.cast(ExpectAdoptions((("old", "id-a"),)))
        job, job_ref = await fake_job(nursery, "new")
        assert isinstance(await ref.call(Reserve("new", spec(0.6), 1, job_ref)), Queued)
        await ref.call(Reserve("old", spec(0.6), 1, exact=placement))
        await settle()
        (worker,) = await ref.call(ListWorkers())
        assert worker.devices[0].used_share == 0.6 and not any(isinstance(m, Granted) for m in job.got)


async def test_a_higher_priority_job_that_fits_does_not_wait_behind_a_head_that_does_not():
    async with scheduler(inventory("a")) as (ref, nursery):
        await ref.call(Reserve("half", spec(0.5), 1))
        big, big_ref = await fake_job(nursery, "big")
        urgent, urgent_ref = await fake_job(nursery, "urgent")
        assert isinstance(await ref.call(Reserve("big", spec(1.0), 1, big_ref)), Queued)
        assert isinstance(await ref.call(Reserve("urgent", spec(0.5, priority=9), 1, urgent_ref)), Queued)
        await settle()
        assert any(isinstance(m, Granted) for m in urgent.got)  # placed at once: it is the head and fits

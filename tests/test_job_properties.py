"""Cancels, kills and shutdowns at random moments of random jobs: nothing leaks, one terminal state per job."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from cumulus.app import open_supervisor
from cumulus.errors import CumulusError
from cumulus.jobs import JobState
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings as supervisor_settings
from tests.test_job_lifecycle import spec

job = st.fixed_dictionaries({
    "gpu": st.sampled_from([0.1, 0.25, 0.5, 0.6, 1.0]),
    "runtime": st.sampled_from([0.0, 0.3, 1.0, 5.0]),
    "exit_code": st.sampled_from([0, 0, 1]),
    "submit_at": st.floats(0, 1),
    "cancel_at": st.one_of(st.none(), st.floats(0, 3)),
    "how": st.sampled_from(["api", "kill"]),
})


@settings(max_examples=1000, deadline=None)
@given(jobs=st.lists(job, min_size=1, max_size=5), shutdown_at=st.one_of(st.none(), st.floats(0, 4)))
def test_random_cancels_never_leak(jobs, shutdown_at):
    trio.run(_scenario, jobs, shutdown_at, clock=trio.testing.MockClock(autojump_threshold=0))


async def _scenario(jobs, shutdown_at):
    records = []
    async with trio.open_nursery() as world_nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], world_nursery)
        with trio.fail_after(10_000):  # autojump: any hang fails fast
            async with open_supervisor(supervisor_settings(), backends=world.backends(), serve_rpc=False) as sup:
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.05)
                with trio.CancelScope() as run_scope:
                    if shutdown_at is not None:
                        run_scope.deadline = trio.current_time() + shutdown_at
                    async with trio.open_nursery() as nursery:
                        for params in jobs:
                            nursery.start_soon(_one_job, sup, params, records)
                    for record in records:
                        await record.torn_down.wait()
                    for worker in await sup.list_workers():  # every share is back, while the tree still runs
                        assert all(device.used_share == 0 for device in worker.devices), worker
                # Whether shut down early or not, leaving open_supervisor tears everything down.
        for record in records:
            assert record.torn_down.is_set(), record.job_id
            assert record.teardown.leaked == ()
            terminal = [e.state async for e in record.events(replay_logs=False) if e.state and e.state.terminal]
            assert len(terminal) == 1 and terminal[0] is record.state
            if record.state is JobState.COMPLETED:
                assert record.result is not None
        assert world.partitions == {} and world.job_dirs_left() == set() and world.job_services() == {}
        assert world.running_jobs() == set()
        assert all(used <= 1.0 + 1e-9 for used in world.max_used.values())
        world_nursery.cancel_scope.cancel()


async def _one_job(sup, params, records):
    await trio.sleep(params["submit_at"])
    record = await sup.submit(spec(gpu=params["gpu"], runtime=params["runtime"], exit_code=params["exit_code"]))
    records.append(record)
    if params["cancel_at"] is None:
        await record.torn_down.wait()
        return
    await trio.sleep(params["cancel_at"])
    if params["how"] == "api":
        try:
            await sup.cancel(record.job_id)
        except CumulusError:
            pass
    else:
        jobs = sup.root.whereis("core").whereis("jobs")
        try:
            await jobs.terminate_child(record.job_id)
        except CumulusError:
            pass  # already gone

"""Random fault schedules on the in-memory fakes: cancels, actor kills, lost partitions, nodes cut off and back,
and supervisor shutdowns, at random moments of random jobs. After each schedule: nothing held anywhere, exactly
one terminal state per job, every completed job's result kept, every share back to zero.

10,000 schedules by default (about 4 minutes on 2 cores); CUMULUS_CHAOS_EXAMPLES=N for more or fewer. Every run,
CI's included, draws new schedules from a new seed (tests/conftest.py prints it; CUMULUS_HYPOTHESIS_SEED=N replays
it). A schedule that hangs ends the run at once, printing itself and the stuck tasks (tests/trio_watchdog.py).
Marker `chaos`.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cumulus.app import open_supervisor
from cumulus.errors import CumulusError
from cumulus.jobs import JobState
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings as supervisor_settings
from tests.test_job_lifecycle import spec
from tests.trio_watchdog import hang_watchdog

pytestmark = pytest.mark.chaos
EXAMPLES = int(os.environ.get("CUMULUS_CHAOS_EXAMPLES", "10000"))
COUNTS = {"schedules": 0, "faults": 0, "leaks": 0}

fault = st.fixed_dictionaries({
    "at": st.floats(0, 4),
    "kind": st.sampled_from(["cancel", "kill", "lose_partition", "cut_node", "restore_node"]),
    "target": st.integers(0, 7),
})
job = st.fixed_dictionaries({
    "gpu": st.sampled_from([0.2, 0.5, 0.7, 1.0]),
    "runtime": st.sampled_from([0.1, 0.5, 2.0]),
    "exit_code": st.sampled_from([0, 0, 0, 1]),
    "retries": st.sampled_from([0, 1]),
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(jobs=st.lists(job, min_size=1, max_size=8), faults=st.lists(fault, max_size=6),
       shutdown_at=st.one_of(st.none(), st.floats(0, 6)))
def test_random_fault_schedules_leave_nothing_behind(jobs, faults, shutdown_at):
    COUNTS["schedules"] += 1
    COUNTS["faults"] += len(faults) + (shutdown_at is not None)
    trio.run(_watched_schedule, jobs, faults, shutdown_at, clock=trio.testing.MockClock(autojump_threshold=0))


def CHAOS_SUMMARY() -> str:  # noqa: N802 - read by tests/conftest.py for the run's summary
    if not COUNTS["schedules"]:
        return ""
    return (f"chaos (fakes): {COUNTS['schedules']} schedules, {COUNTS['faults']} faults injected, "
            f"{COUNTS['leaks']} leaks found")


def teardown_module():
    print("\n" + CHAOS_SUMMARY())


async def _watched_schedule(jobs, faults, shutdown_at):
    # One schedule takes well under a second of wall-clock time; a stuck one ends the run with its schedule.
    async with hang_watchdog(120, f"schedule jobs={jobs} faults={faults} shutdown_at={shutdown_at}"):
        await _schedule(jobs, faults, shutdown_at)


async def _schedule(jobs, faults, shutdown_at):
    records = []
    async with trio.open_nursery() as world_nursery:
        world = FakeWorld([fake_node(1), fake_node(2)], world_nursery)
        with trio.fail_after(3_000):  # virtual seconds (autojump): a stuck job fails the example fast
            async with open_supervisor(supervisor_settings(), backends=world.backends(), serve_rpc=False) as sup:
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.05)
                with trio.CancelScope() as run_scope:
                    if shutdown_at is not None:
                        run_scope.deadline = trio.current_time() + shutdown_at
                    async with trio.open_nursery() as nursery:
                        for params in jobs:
                            records.append(await sup.submit(spec(**params, duration=30)))
                        for f in faults:
                            nursery.start_soon(_inject, sup, world, records, f)
                    for hostname in ("fw1", "fw2"):
                        world.restore(hostname)
                    for record in records:
                        await record.torn_down.wait()
                    for worker in await sup.list_workers():
                        assert all(d.used_share == 0 for d in worker.devices), worker
        leaks = [r.teardown.leaked for r in records if r.teardown and r.teardown.leaked]
        COUNTS["leaks"] += len(leaks)
        assert not leaks
        for record in records:
            assert record.torn_down.is_set()
            terminal = [e.state async for e in record.events(replay_logs=False) if e.state and e.state.terminal]
            assert terminal == [record.state]
            if record.state is JobState.COMPLETED:
                assert record.result is not None
        assert world.partitions == {} and world.job_dirs == set() and world.services == {}
        assert world.running == set()
        assert all(used <= 1.0 + 1e-9 for used in world.max_used.values())
        world_nursery.cancel_scope.cancel()


async def _inject(sup, world, records, f):
    await trio.sleep(f["at"])
    record = records[f["target"] % len(records)]
    hostname = f"fw{f['target'] % 2 + 1}"
    try:
        if f["kind"] == "cancel":
            await sup.cancel(record.job_id)
        elif f["kind"] == "kill":
            await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
        elif f["kind"] == "lose_partition":
            for partition in list(world.partitions.values()):
                if partition.job_id == record.job_id:
                    partition.lost_reason = "partition expired"
                    partition.lost.set()
        elif f["kind"] == "cut_node":
            world.cut(hostname)
        else:
            world.restore(hostname)
    except CumulusError:
        pass  # the job was already gone

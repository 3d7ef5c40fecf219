"""Random fault schedules on the in-memory fakes: cancels, actor kills, lost partitions, nodes cut off and back,
pauses and resumes, idle warm containers killed, method calls on class instances (some crashing the instance), and
supervisor shutdowns, at random moments of random jobs (some of them fake training loops that save checkpoints and
return at a pause request, or ignore it; some class instances, made again after they died). After each schedule: nothing held anywhere,
exactly one terminal state per job, every completed job's result kept, every share back to zero, every method call
ended exactly once, no warm container
that ran two jobs, no warm service left after the supervisor stopped; and each time a
pause returns with the job PAUSED, nothing of that job is held (no partition, service, job dir or reservation).

6,000 schedules by default (about 7 minutes on 2 cores in CI); CUMULUS_CHAOS_EXAMPLES=N for more or fewer. Every run,
CI's included, draws new schedules from a new seed (tests/conftest.py prints it; CUMULUS_HYPOTHESIS_SEED=N replays
it). A schedule that hangs ends the run at once, printing itself and the stuck tasks (tests/trio_watchdog.py).
Marker `chaos`.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cumulus.actors.scheduler import NodeJobs
from cumulus.app import open_supervisor
from cumulus.calls import CallEnd, CallKey, MethodCall
from cumulus.errors import CumulusError
from cumulus.jobs import JobState
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings as supervisor_settings
from tests.test_job_lifecycle import spec
from tests.trio_watchdog import hang_watchdog

pytestmark = pytest.mark.chaos
EXAMPLES = int(os.environ.get("CUMULUS_CHAOS_EXAMPLES", "6000"))
PLAIN = {"gpu": 0.2, "runtime": 0.1, "exit_code": 0, "retries": 0, "training": None, "instance": False}
TRAINING = {**PLAIN, "training": {"FAKE_STEPS": "20", "FAKE_SAVE_EVERY": "1", "FAKE_IGNORE_PAUSE": "0"}}
COUNTS = {"schedules": 0, "faults": 0, "leaks": 0, "pauses": 0, "resumes": 0, "calls": 0}

fault = st.fixed_dictionaries({
    "at": st.floats(0, 4),
    "kind": st.sampled_from(["cancel", "kill", "lose_partition", "cut_node", "restore_node", "pause", "pause_resume",
                             "resume", "kill_warm", "calls"]),
    "target": st.integers(0, 7),
    "grace": st.sampled_from([0.2, 1.0, 3.0]),  # a pause's grace period, and how long a pause_resume waits
})
# A training loop (tests/fakes/fake_cluster.py): FAKE_STEPS steps of 0.1 s, a checkpoint every FAKE_SAVE_EVERY.
training = st.one_of(st.none(), st.fixed_dictionaries({
    "FAKE_STEPS": st.sampled_from(["5", "20"]),
    "FAKE_SAVE_EVERY": st.sampled_from(["1", "4"]),
    "FAKE_IGNORE_PAUSE": st.sampled_from(["0", "0", "1"]),
}))
job = st.fixed_dictionaries({
    "gpu": st.sampled_from([0.2, 0.5, 0.7, 1.0]),
    "runtime": st.sampled_from([0.1, 0.5, 2.0]),
    "exit_code": st.sampled_from([0, 0, 0, 1]),
    "retries": st.sampled_from([0, 1]),
    "training": training,
    "instance": st.sampled_from([False, False, True]),  # a class instance: its ``calls`` faults call it
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
# Found once: a job paused, resumed, and its actor killed while paused; the resume at the end found no live actor.
@example(jobs=[PLAIN] * 5 + [TRAINING] + [PLAIN] * 2,
         faults=[{"at": 0.0, "kind": "cancel", "target": 0, "grace": 0.2}] * 3
         + [{"at": 0.0, "kind": "pause_resume", "target": 5, "grace": 0.2},
            {"at": 1.0, "kind": "kill", "target": 5, "grace": 0.2}],
         shutdown_at=None, end_paused="resume")
# Found once: a cancel that arrived as the job's attempt returned paused left the job torn down but PAUSED.
@example(jobs=[PLAIN, {**PLAIN, "training": {"FAKE_STEPS": "5", "FAKE_SAVE_EVERY": "1", "FAKE_IGNORE_PAUSE": "0"}}],
         faults=[{"at": 0.0, "kind": "cancel", "target": 0, "grace": 0.2},
                 {"at": 0.25, "kind": "cancel", "target": 1, "grace": 0.2},
                 {"at": 0.125, "kind": "pause", "target": 1, "grace": 0.2}],
         shutdown_at=None, end_paused="cancel")
# Found once: calls to an instance paused before it ran wait for its resume (the check waited for them first).
@example(jobs=[{**PLAIN, "instance": True}, PLAIN], faults=[{"at": 0.0, "kind": "pause", "target": 0, "grace": 0.2},
                                                           {"at": 2.0, "kind": "calls", "target": 0, "grace": 3.0}],
         shutdown_at=None, end_paused="resume")
@given(jobs=st.lists(job, min_size=1, max_size=8), faults=st.lists(fault, max_size=6),
       shutdown_at=st.one_of(st.none(), st.floats(0, 6)), end_paused=st.sampled_from(["resume", "cancel"]))
def test_random_fault_schedules_leave_nothing_behind(jobs, faults, shutdown_at, end_paused):
    COUNTS["schedules"] += 1
    COUNTS["faults"] += len(faults) + (shutdown_at is not None)
    trio.run(_watched_schedule, jobs, faults, shutdown_at, end_paused,
             clock=trio.testing.MockClock(autojump_threshold=0))


def CHAOS_SUMMARY() -> str:  # noqa: N802 - read by tests/conftest.py for the run's summary
    if not COUNTS["schedules"]:
        return ""
    return (f"chaos (fakes): {COUNTS['schedules']} schedules, {COUNTS['faults']} faults injected "
            f"({COUNTS['pauses']} jobs paused, {COUNTS['resumes']} resumed, {COUNTS['calls']} instance calls "
            f"ended), {COUNTS['leaks']} leaks found")


def teardown_module():
    print("\n" + CHAOS_SUMMARY())


async def _watched_schedule(jobs, faults, shutdown_at, end_paused):
    # One schedule takes well under a second of wall-clock time; a stuck one ends the run with its schedule.
    async with hang_watchdog(120, f"schedule jobs={jobs} faults={faults} shutdown_at={shutdown_at} "
                                  f"end_paused={end_paused}"):
        await _schedule(jobs, faults, shutdown_at, end_paused)


def _spec(params):
    """The job's spec: a plain fake job, a training loop (with the job's retries and duration), or a class
    instance (its retries are its max_restarts)."""
    params = dict(params)
    env = params.pop("training")
    if params.pop("instance", False):
        params.update(instance=True, max_restarts=params.pop("retries"), runtime=params["runtime"] * 10)
    return spec(**params, duration=30, env=env or {})


async def _schedule(jobs, faults, shutdown_at, end_paused):
    records = []
    resumes: dict[str, int] = {}  # job id -> resumes asked so far (a pause's check holds only without one)
    calls: list = []  # the waits for the replies of the calls sent to instances
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
                            records.append(await sup.submit(_spec(params)))
                        for f in faults:
                            nursery.start_soon(_inject, sup, world, records, f, resumes, calls)
                    for hostname in ("fw1", "fw2"):
                        world.restore(hostname)
                    for record in records:  # no pause comes any more: each paused job is resumed, or cancelled
                        await _end_pause(sup, record, end_paused)
                    for record in records:
                        await record.torn_down.wait()
                    for waiter in calls:  # every job has ended: each of its calls has its one reply
                        with trio.fail_after(1):
                            reply = await waiter()
                        assert reply.end in (CallEnd.RETURNED, CallEnd.INSTANCE_DIED), reply
                        COUNTS["calls"] += 1
                    for worker in await sup.list_workers():
                        assert all(d.used_share == 0 for d in worker.devices), worker
        leaks = [r.teardown.leaked for r in records if r.teardown and r.teardown.leaked]
        COUNTS["leaks"] += len(leaks)
        assert not leaks
        for record in records:
            terminal = await _terminal_states(record)
            if record.state is JobState.PAUSED:
                # Only a shutdown leaves a job PAUSED (every other one was resumed or cancelled): it has not ended
                # and holds nothing (checked below), and its checkpoints stay for the next supervisor.
                assert shutdown_at is not None and terminal == [] and not record.torn_down.is_set()
                assert record.checkpoints == 0 or record.job_id in world.checkpoint_store.jobs
                continue
            assert record.torn_down.is_set()
            assert terminal == [record.state]
            if record.state is JobState.COMPLETED:
                assert record.result is not None
        # The supervisor is gone: its pools removed their idle warm services and dirs too. No warm container ran
        # two jobs.
        assert world.partitions == {} and world.job_dirs == set() and world.job_services() == {}
        assert world.services == {} and world.running == set()
        assert all(used <= 1.0 + 1e-9 for used in world.max_used.values())
        world_nursery.cancel_scope.cancel()


async def _terminal_states(record) -> list[JobState]:
    """The terminal states in the job's events so far (a job left PAUSED has no teardown to end its events)."""
    seen = []
    with trio.move_on_after(0.001):
        async for event in record.events(replay_logs=False):
            if event.state is not None and event.state.terminal:
                seen.append(event.state)
    return seen


async def _end_pause(sup, record, end_paused) -> None:
    """Resume or cancel the job if it is PAUSED."""
    if record.state is not JobState.PAUSED:
        return
    if end_paused == "resume":
        await sup.resume(record.job_id)
    else:
        await sup.cancel(record.job_id)


async def _pause_and_check(sup, world, record, grace: float, resumes: dict[str, int]) -> None:
    """Pause the job; if it is PAUSED when the pause returns, nothing of it may be held: checked at once in the
    fake world, and in the Scheduler's reservations unless a resume of the job was asked meanwhile."""
    job_id = record.job_id
    await sup.pause(job_id, grace=grace)
    if record.state is not JobState.PAUSED:
        return  # it ended first (or a resume came before this task ran again)
    COUNTS["pauses"] += 1
    assert not [p for p in world.partitions.values() if p.job_id == job_id], world.partitions
    assert not [c for c in world.services.values() if c.job_id == job_id], world.services
    assert not [d for d in world.job_dirs if d[1] == job_id], world.job_dirs
    asked = resumes.get(job_id, 0)
    scheduler = sup.root.whereis("core").whereis("scheduler")
    held = [node.hostname for node in world.nodes if job_id in await scheduler.call(NodeJobs(node.id))]
    if resumes.get(job_id, 0) == asked and record.state is JobState.PAUSED:
        assert held == [], f"paused {job_id} holds a reservation on {held}"


async def _inject(sup, world, records, f, resumes, calls):
    await trio.sleep(f["at"])
    record = records[f["target"] % len(records)]
    hostname = f"fw{f['target'] % 2 + 1}"
    try:
        match f["kind"]:
            case "pause":
                await _pause_and_check(sup, world, record, f["grace"], resumes)
            case "pause_resume":
                await _pause_and_check(sup, world, record, f["grace"], resumes)
                await trio.sleep(f["grace"])
                await _resume(sup, record, resumes)
            case "resume":
                await _resume(sup, record, resumes)
            case "cancel":
                await sup.cancel(record.job_id, until_stopped=f["grace"] > 0.5)
            case "kill_warm":  # `docker kill` of an idle warm container on the node
                for container in list(world.services.values()):
                    if container.warm_start is not None and not container.warm_start.is_set() \
                            and container.node_id == world.nodes[f["target"] % 2].id:
                        container.killed.set()
                        break
            case "kill":
                await sup.root.whereis("core").whereis("jobs").terminate_child(record.job_id)
            case "lose_partition":
                for partition in list(world.partitions.values()):
                    if partition.job_id == record.job_id:
                        partition.lost_reason = "partition expired"
                        partition.lost.set()
            case "calls":  # three calls: quick ones, slow ones, or one that crashes the instance first
                method = {0.2: "work", 1.0: "slow", 3.0: "crash"}[f["grace"]]
                instances = [r for r in records if r.spec.instance]
                record = instances[f["target"] % len(instances)] if instances else record
                for i in range(3):  # each must end exactly once: checked once every job has ended
                    key = CallKey(id(f), i)
                    calls.append(await sup.send_call(MethodCall(record.job_id, method if i == 0 else "work",
                                                                b"x", key)))
            case "cut_node":
                world.cut(hostname)
            case _:
                world.restore(hostname)
    except CumulusError:
        pass  # the job was already gone, or not PAUSED (a resume), or ended (a pause)


async def _resume(sup, record, resumes: dict[str, int]) -> None:
    resumes[record.job_id] = resumes.get(record.job_id, 0) + 1
    await sup.resume(record.job_id)  # WrongJobState unless it is PAUSED
    COUNTS["resumes"] += 1

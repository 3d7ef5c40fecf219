"""OTP-style supervision: restart types, strategies, intensity, ordered start and reverse-order stop."""

from __future__ import annotations

import functools
import math
from contextlib import asynccontextmanager

import pytest
import trio

from cumulus.actors import Actor, ActorDied
from cumulus.errors import NotFound, SupervisorGaveUp
from cumulus.supervisor import ChildSpec, DynamicSupervisor, Restart, Strategy, Supervisor
from tests.races import fail_as_cancelled


class Recorder:
    """Shared log of lifecycle events, so tests can assert on order."""

    def __init__(self) -> None:
        self.events: list[str] = []


class Worker(Actor):
    def __init__(self, name: str, log: Recorder, start_delay: float = 0.0) -> None:
        super().__init__(name)
        self.log = log
        self.start_delay = start_delay

    async def on_start(self):
        await trio.sleep(self.start_delay)
        await self.owner.own(self._lifetime(), what="lifetime")

    @asynccontextmanager
    async def _lifetime(self):
        self.log.events.append(f"start {self.name}")
        try:
            yield
        finally:
            await trio.sleep(0.5)  # a release that takes time: must be shielded when the tree is cancelled
            self.log.events.append(f"stop {self.name}")

    async def handle(self, message):
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.stop()
        return self.name


def worker(name: str, log: Recorder, restart: Restart = Restart.PERMANENT, delay: float = 0.0) -> ChildSpec:
    return ChildSpec.actor(name, lambda: Worker(name, log, delay), restart)


async def crash(sup: Supervisor, name: str) -> None:
    with pytest.raises(RuntimeError):
        await sup.whereis(name).call("crash")


async def settle() -> None:
    await trio.sleep(5)  # autojump clock: lets restarts (0.5 s releases) finish


async def test_children_start_in_order_each_ready_before_next_and_stop_in_reverse(autojump_clock):
    log = Recorder()
    sup = Supervisor([worker("a", log, delay=3), worker("b", log, delay=1), worker("c", log)], name="root")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert log.events == ["start a", "start b", "start c"]  # a took longest yet came first
        assert [name for name, _ in sup.which_children()] == ["a", "b", "c"]
        nursery.cancel_scope.cancel()
    assert log.events[3:] == ["stop c", "stop b", "stop a"]


async def test_one_for_one_restarts_only_the_crashed_permanent_child(autojump_clock):
    log = Recorder()
    sup = Supervisor([worker("a", log), worker("b", log)], strategy=Strategy.ONE_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        old_a, old_b = sup.whereis("a"), sup.whereis("b")
        await crash(sup, "a")
        await settle()
        assert sup.whereis("a") is not old_a and sup.whereis("a").alive
        assert sup.whereis("b") is old_b
        with pytest.raises(ActorDied):
            await old_a.call("hello")  # the old incarnation is gone for good
        assert await sup.whereis("a").call("hello") == "a"
        nursery.cancel_scope.cancel()
    assert log.events == ["start a", "start b", "stop a", "start a", "stop b", "stop a"]


async def test_one_for_all_restarts_every_child_in_order(autojump_clock):
    log = Recorder()
    sup = Supervisor([worker("a", log), worker("b", log), worker("c", log)], strategy=Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await crash(sup, "b")
        await settle()
        assert [name for name, _ in sup.which_children()] == ["a", "b", "c"]
        nursery.cancel_scope.cancel()
    assert log.events[:9] == [
        "start a", "start b", "start c",
        "stop b",  # the crash released b's resources
        "stop c", "stop a",  # the others stop, newest first
        "start a", "start b", "start c",
    ]


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        (Restart.PERMANENT, "crash", True),
        (Restart.PERMANENT, "exit", True),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TEMPORARY, "crash", False),
        (Restart.TEMPORARY, "exit", False),
    ],
)
async def test_restart_types(autojump_clock, restart, how, restarted):
    log = Recorder()
    sup = Supervisor([worker("a", log, restart)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        if how == "crash":
            await crash(sup, "a")
        else:
            assert await sup.whereis("a").call("exit") == "a"
        await settle()
        assert (sup.whereis("a") is not None) == restarted
        nursery.cancel_scope.cancel()


async def test_exceeding_restart_intensity_stops_all_children_and_escalates(autojump_clock):
    log = Recorder()
    sup = Supervisor([worker("a", log), worker("b", log)], max_restarts=2, max_seconds=10, name="jobs")
    with pytest.RaisesGroup(pytest.RaisesExc(SupervisorGaveUp, match="jobs")) as gave_up:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for _ in range(3):
                await crash(sup, "b")
                await settle()
            await trio.sleep_forever()
    assert isinstance(gave_up.value.exceptions[0].__cause__, RuntimeError)
    assert log.events[-2:] == ["stop b", "stop a"]  # b's crash, then a stopped on giving up
    assert sup.which_children() == []


async def test_restarts_outside_the_window_do_not_count(autojump_clock):
    log = Recorder()
    sup = Supervisor([worker("a", log)], max_restarts=1, max_seconds=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(4):
            await crash(sup, "a")
            await trio.sleep(6)  # each restart ages out before the next crash
        assert sup.whereis("a").alive
        nursery.cancel_scope.cancel()


async def test_cancellation_is_not_a_crash(autojump_clock):
    """Cancelling the tree never restarts anything and never counts towards intensity."""
    log = Recorder()
    sup = Supervisor([worker("a", log)], max_restarts=0)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            scope.cancel()
    assert log.events == ["start a", "stop a"]
    assert sup.restart_count == 0


async def test_child_releases_its_resource_while_parent_is_cancelled(autojump_clock):
    """The release takes 0.5 s of checkpoints; it completes although the whole tree is being cancelled."""
    log = Recorder()
    inner = lambda: Supervisor([worker("leaf", log)], name="inner")  # noqa: E731
    root = Supervisor([ChildSpec.supervisor("inner", inner), worker("sibling", log)], name="root")
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(root.run)
            await trio.sleep_forever()
    assert log.events == ["start leaf", "start sibling", "stop sibling", "stop leaf"]


async def test_dynamic_supervisor_starts_and_terminates_children(autojump_clock):
    log = Recorder()
    jobs = DynamicSupervisor(name="jobs")
    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.run)
        ref1 = await jobs.start_actor("job-1", lambda: Worker("job-1", log))
        await jobs.start_actor("job-2", lambda: Worker("job-2", log))
        with pytest.raises(ValueError, match="already"):
            await jobs.start_actor("job-2", lambda: Worker("job-2", log))
        await jobs.terminate_child("job-1")
        assert log.events[-1] == "stop job-1" and not ref1.alive
        with pytest.raises(NotFound):
            await jobs.terminate_child("job-1")
        await crash(jobs, "job-2")  # temporary: not restarted
        await settle()
        assert jobs.which_children() == []
        await jobs.start_actor("job-3", lambda: Worker("job-3", log))
        nursery.cancel_scope.cancel()
    assert log.events[-1] == "stop job-3"


async def test_child_that_fails_to_start_fails_the_supervisor_start(autojump_clock):
    class Broken(Worker):
        async def on_start(self):
            raise OSError("docker socket missing")

    log = Recorder()
    sup = Supervisor([worker("a", log), ChildSpec.actor("broken", lambda: Broken("broken", log))])
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match="docker socket"):
            await nursery.start(sup.run)
    assert log.events == ["start a", "stop a"]  # what had started is stopped again


async def test_child_that_crashes_while_being_stopped_is_stopped(autojump_clock):
    """A crash racing with the stop (the child raises a group of the stop's Cancelled and its own error): the
    stop returns, the error is logged as the child's, and the supervisor goes on. Found by the fakes chaos test."""

    fails_while_stopping = functools.partial(fail_as_cancelled, "ssh fw1: connection lost")

    jobs = DynamicSupervisor(name="jobs")
    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.run)
        await jobs.start_child(ChildSpec("racer", fails_while_stopping, Restart.TEMPORARY))
        stopped = trio.Event()

        async def stop():
            await jobs.terminate_child("racer")
            stopped.set()

        nursery.start_soon(stop)
        with trio.move_on_after(5):
            await stopped.wait()
        if not stopped.is_set():
            for child in jobs._children:  # the stop is shielded: unblock it, so that the test fails, not hangs
                child.done.set()
            pytest.fail("terminate_child never returned: the child's task ended without marking it done")
        assert jobs.which_children() == []
        await jobs.start_child(ChildSpec("racer", fails_while_stopping, Restart.TEMPORARY))
        nursery.cancel_scope.cancel()


# ---- shutdown bound (OTP's `shutdown` in the child spec) ----------------------------------------------------------

STUCK_FOR = 1000.0  # how long a stuck child's shielded cleanup takes, in (autojumped) seconds


def stuck(name: str, log: Recorder, shutdown: float, restart: Restart = Restart.PERMANENT) -> ChildSpec:
    """A plain child whose cleanup ignores cancellation (a shielded scope) for STUCK_FOR seconds."""

    async def start(*, task_status=trio.TASK_STATUS_IGNORED):
        log.events.append(f"start {name}")
        task_status.started(name)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(STUCK_FOR)
            log.events.append(f"stop {name} at {trio.current_time():g}")

    return ChildSpec(name, start, restart, shutdown=shutdown)


def timed(log: Recorder, event: str) -> float:
    """The time in ``"<event> at <t>"``."""
    [entry] = [e for e in log.events if e.startswith(f"{event} at ")]
    return float(entry.rsplit(" ", 1)[1])


class TimedWorker(Worker):
    @asynccontextmanager
    async def _lifetime(self):
        self.log.events.append(f"start {self.name}")
        try:
            yield
        finally:
            await trio.sleep(0.5)
            self.log.events.append(f"stop {self.name} at {trio.current_time():g}")


async def test_a_child_stuck_past_its_shutdown_is_abandoned_and_older_siblings_still_stop(autojump_clock, caplog):
    """Without a bound, the stuck child kept "a" running for STUCK_FOR seconds; with one, the stop moves on to "a"
    after 2 s, and run() leaves only when the stuck task has ended."""
    log = Recorder()
    sup = Supervisor([ChildSpec.actor("a", lambda: TimedWorker("a", log)), stuck("stuck", log, shutdown=2),
                      ChildSpec.actor("c", lambda: TimedWorker("c", log))], name="root")
    seen_overdue = []

    async def watch():
        await trio.sleep(3)  # after c's stop (0.5 s) and the stuck child's bound (2 s)
        seen_overdue.extend(sup.overdue_children())

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            t0 = trio.current_time()
            outer.start_soon(watch)
            nursery.cancel_scope.cancel()
    assert timed(log, "stop c") == pytest.approx(t0 + 0.5)
    assert timed(log, "stop a") == pytest.approx(t0 + 0.5 + 2 + 0.5)  # not held up by the stuck child
    assert timed(log, "stop stuck") == pytest.approx(t0 + 0.5 + STUCK_FOR)  # ... which run() still waited for
    assert [(o.name, o.ref, o.shutdown, o.since) for o in seen_overdue] == [("stuck", "stuck", 2, t0 + 2.5)]
    assert sup.overdue_children() == []  # it ended at last
    messages = [r.getMessage() for r in caplog.records if r.name == "cumulus.supervisor"]
    assert any("child stuck did not stop within its shutdown bound of 2 s" in m for m in messages)
    assert any("waiting for them to end before exiting" in m and "'stuck'" in m for m in messages)
    assert any("overdue child stuck ended at last" in m for m in messages)


async def test_terminate_child_returns_after_the_shutdown_bound(autojump_clock):
    log = Recorder()
    jobs = DynamicSupervisor(name="jobs")
    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.run)
        await jobs.start_child(stuck("job-1", log, shutdown=5, restart=Restart.TEMPORARY))
        t0 = trio.current_time()
        await jobs.terminate_child("job-1")
        assert trio.current_time() - t0 == pytest.approx(5)
        assert jobs.whereis("job-1") is None and jobs.which_children() == []
        assert [o.name for o in jobs.overdue_children()] == ["job-1"]
        # it counts as stopped: a new incarnation may start beside the old one
        await jobs.start_child(stuck("job-1", log, shutdown=5, restart=Restart.TEMPORARY))
        assert jobs.whereis("job-1") == "job-1"
        await trio.sleep(STUCK_FOR)  # the first incarnation's cleanup ends
        assert jobs.overdue_children() == []
        assert sum(e.startswith("stop job-1") for e in log.events) == 1
        nursery.cancel_scope.cancel()
    assert sum(e.startswith("stop job-1") for e in log.events) == 2


async def test_a_child_that_stops_within_its_bound_is_waited_for_and_not_overdue(autojump_clock, caplog):
    log = Recorder()
    sup = Supervisor([ChildSpec.actor("a", lambda: TimedWorker("a", log), shutdown=0.6),
                      ChildSpec.actor("b", lambda: TimedWorker("b", log), shutdown=0.6)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert timed(log, "stop b") == pytest.approx(t0 + 0.5)
    assert timed(log, "stop a") == pytest.approx(t0 + 1.0)
    assert sup.overdue_children() == []
    assert not [r for r in caplog.records if r.name == "cumulus.supervisor" and r.levelname == "ERROR"]


async def test_one_for_all_restart_moves_on_after_the_shutdown_bound(autojump_clock):
    log = Recorder()
    sup = Supervisor([stuck("stuck", log, shutdown=1), ChildSpec.actor("b", lambda: TimedWorker("b", log))],
                     strategy=Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await crash(sup, "b")
        await settle()  # b's release (0.5 s), then the stuck child's bound (1 s), then both start again
        assert [name for name, _ in sup.which_children()] == ["stuck", "b"]
        assert log.events.count("start stuck") == 2 and log.events.count("start b") == 2
        assert [o.name for o in sup.overdue_children()] == ["stuck"]  # the old incarnation, still running
        nursery.cancel_scope.cancel()
    assert sup.overdue_children() == []


def test_shutdown_defaults_and_validation():
    from cumulus.supervisor import DEFAULT_SHUTDOWN

    assert ChildSpec.actor("a", lambda: Worker("a", Recorder())).shutdown == DEFAULT_SHUTDOWN
    assert ChildSpec("p", fail_as_cancelled).shutdown == DEFAULT_SHUTDOWN
    assert ChildSpec.supervisor("s", Supervisor).shutdown == math.inf  # as OTP's `infinity` for supervisors
    assert ChildSpec.supervisor("s", Supervisor, shutdown=30).shutdown == 30
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="shutdown must be > 0"):
            ChildSpec("p", fail_as_cancelled, shutdown=bad)

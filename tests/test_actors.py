"""The actor runtime: call/cast, errors reaching callers, and no call ever hanging on a dead actor."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from cumulus.actors import Actor, ActorDied, ResourceOwner, run_actor
from cumulus.errors import InvalidRequest
from tests.races import fail_as_cancelled


class Counter(Actor):
    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.casts: list[object] = []

    async def handle(self, message):
        match message:
            case ("add", n):
                self.total += n
                return self.total
            case ("note", x):
                self.casts.append(x)
            case "reject":
                raise InvalidRequest("share must be in (0, 1]")
            case "boom":
                raise ValueError("boom")
            case ("sleep", seconds):
                await trio.sleep(seconds)
                return "slept"
            case "stop":
                self.stop()
                return "stopping"


async def test_call_returns_the_handlers_answer_and_cast_is_delivered(nursery):
    actor = Counter()
    ref = await nursery.start(run_actor, actor)
    assert await ref.call(("add", 2)) == 2
    await ref.cast(("note", "x"))
    assert await ref.call(("add", 3)) == 5  # mailbox order: the cast was handled before this call
    assert actor.casts == ["x"]


async def test_rejection_reaches_caller_and_actor_keeps_running(nursery):
    ref = await nursery.start(run_actor, Counter())
    with pytest.raises(InvalidRequest, match="share"):
        await ref.call("reject")
    assert ref.alive
    assert await ref.call(("add", 1)) == 1


async def test_handler_crash_reaches_caller_then_actor_is_dead():
    actor_exit: list[BaseException] = []

    async def run_and_record(*, task_status):
        try:
            await run_actor(Counter(), task_status=task_status)
        except ValueError as crash:  # the actor's own task ends with the crash (a supervisor would decide)
            actor_exit.append(crash)

    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_and_record)
        with pytest.raises(ValueError, match="boom"):
            await ref.call("boom")
    assert [str(e) for e in actor_exit] == ["boom"]
    with pytest.raises(ActorDied) as died:
        await ref.call(("add", 1))
    assert isinstance(died.value.reason, ValueError)


async def test_crash_mid_call_fails_every_pending_and_future_caller(autojump_clock):
    """A call waiting in the mailbox behind a crashing one gets ActorDied, promptly, never a hang."""
    outcomes: dict[str, object] = {}

    async def caller(ref, tag, message):
        try:
            outcomes[tag] = await ref.call(message)
        except Exception as error:
            outcomes[tag] = type(error)

    with pytest.RaisesGroup(ValueError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(run_actor, Counter())
            async with trio.open_nursery() as callers:
                callers.start_soon(caller, ref, "slow", ("sleep", 5))
                await trio.sleep(0.1)
                callers.start_soon(caller, ref, "boom", "boom")
                await trio.sleep(0.1)
                callers.start_soon(caller, ref, "queued", ("add", 1))
                with trio.fail_after(60):  # autojump clock: a hang would jump past this at once
                    await trio.sleep(10)
    assert outcomes == {"slow": "slept", "boom": ValueError, "queued": ActorDied}
    with pytest.raises(ActorDied):
        await ref.call(("add", 1))
    with pytest.raises(ActorDied):
        await ref.cast(("note", 1))


async def test_cancelled_actor_fails_the_call_it_was_handling(autojump_clock):
    async with trio.open_nursery() as nursery:
        actor_scope = trio.CancelScope()

        async def run_in_scope(*, task_status):
            with actor_scope:
                await run_actor(Counter(), task_status=task_status)

        ref = await nursery.start(run_in_scope)

        async def cancel_soon():
            await trio.sleep(1)
            actor_scope.cancel()

        nursery.start_soon(cancel_soon)
        with trio.fail_after(10):
            with pytest.raises(ActorDied) as died:
                await ref.call(("sleep", 1000))
    assert died.value.reason is None  # cancelled, not crashed


async def test_full_mailbox_senders_get_actor_died_when_it_stops(autojump_clock):
    class Tiny(Counter):
        mailbox_size = 1

    results = []

    async def caller(ref, message):
        try:
            results.append(await ref.call(message))
        except ActorDied:
            results.append("died")

    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_actor, Tiny())
        async with trio.open_nursery() as callers:
            callers.start_soon(caller, ref, ("sleep", 1))
            await trio.sleep(0.01)
            callers.start_soon(caller, ref, "stop")  # fills the one-slot mailbox
            await trio.sleep(0.01)
            for _ in range(3):  # these wait on the full mailbox
                callers.start_soon(caller, ref, ("add", 1))
            with trio.fail_after(30):
                await ref.wait_stopped()
    assert sorted(results[:2]) == ["slept", "stopping"]  # two callers: their answers may wake them in any order
    assert sorted(results[2:]) == ["died"] * 3


async def test_stop_ends_actor_normally_and_releases_owned_resources_in_reverse():
    events = []

    @asynccontextmanager
    async def resource(name):
        events.append(f"acquire {name}")
        try:
            yield name
        finally:
            events.append(f"release {name}")

    class Owner(Counter):
        async def on_start(self):
            await self.owner.own(resource("partition"), what="partition")
            await self.owner.own(resource("service"), what="service")

    async with trio.open_nursery() as nursery:
        ref = await nursery.start(run_actor, Owner())
        assert await ref.call("stop") == "stopping"
        assert await ref.wait_stopped() is None
    assert events == ["acquire partition", "acquire service", "release service", "release partition"]


async def test_cancelled_owner_still_releases_under_a_shield(autojump_clock):
    released = []

    @asynccontextmanager
    async def slow_release():
        try:
            yield
        finally:
            await trio.sleep(2)  # would raise Cancelled at once if the release were not shielded
            released.append(True)

    owner = ResourceOwner("test")
    with trio.CancelScope() as scope:
        async with owner:
            await owner.own(slow_release(), what="slow")
            scope.cancel()
            await trio.sleep_forever()
    assert released == [True]
    assert owner.leaks == [] and owner.released == ["slow"]


async def test_failed_and_stuck_releases_are_recorded_as_leaks(autojump_clock):
    @asynccontextmanager
    async def failing():
        yield
        raise OSError("ssh connection lost")

    @asynccontextmanager
    async def stuck():
        yield
        await trio.sleep_forever()

    owner = ResourceOwner("job-1")
    async with owner:
        await owner.own(failing(), what="partition")
        await owner.own(stuck(), what="service", release_timeout=3)
    assert [(leak.what, leak.reason) for leak in owner.leaks] == [
        ("service", "release did not finish within 3 s"),
        ("partition", "OSError: ssh connection lost"),
    ]
    assert await owner.release("partition") is True  # idempotent: nothing held any more



@pytest.mark.parametrize("same_task", [False, True])
async def test_release_that_fails_as_its_deadline_cancels_it_is_a_leak_not_a_crash(autojump_clock, same_task):
    """The release's own nursery raises while the deadline cancels it (a group of Cancelled and the error): the
    owner records a leak and goes on releasing the rest; nothing escapes its exit."""

    @asynccontextmanager
    async def racing():
        yield
        await fail_as_cancelled("ssh connection lost")

    @asynccontextmanager
    async def plain():
        yield

    owner = ResourceOwner("job-1")
    async with owner:
        # held in the test's own task: were the error to escape, the test fails instead of waiting on a holder
        await owner.own(plain(), what="partition", same_task=True)
        await owner.own(racing(), what="service", release_timeout=3, same_task=same_task)
    assert owner.released == ["partition"]
    assert [leak.what for leak in owner.leaks] == ["service", "service"]
    assert {leak.reason for leak in owner.leaks} == {"release did not finish within 3 s",
                                                     "OSError: ssh connection lost"}


async def test_on_start_failure_releases_what_was_acquired():
    events = []

    @asynccontextmanager
    async def resource():
        events.append("acquire")
        try:
            yield
        finally:
            events.append("release")

    class Fails(Counter):
        async def on_start(self):
            await self.owner.own(resource(), what="r")
            raise RuntimeError("image missing")

    async with trio.open_nursery() as nursery:
        with pytest.raises(RuntimeError, match="image missing"):
            await nursery.start(run_actor, Fails())
    assert events == ["acquire", "release"]


async def test_background_task_crash_crashes_the_actor():
    class Background(Counter):
        async def on_start(self):
            self.start_soon(self.watch)

        async def watch(self):
            await trio.sleep(0.01)
            raise ConnectionError("docker went away")

    with pytest.RaisesGroup(ConnectionError):
        async with trio.open_nursery() as nursery:
            ref = await nursery.start(run_actor, Background())
            await trio.sleep(1)
    assert not ref.alive


async def test_own_together_is_all_or_nothing_and_keeps_the_given_order(autojump_clock):
    events = []

    @asynccontextmanager
    async def resource(name, delay, fail=False):
        await trio.sleep(delay)
        if fail:
            raise OSError(f"{name} failed")
        events.append(f"acquire {name}")
        try:
            yield name
        finally:
            events.append(f"release {name}")

    owner = ResourceOwner("job")
    async with owner:
        assert await owner.own_together([(resource("partition", 2), "partition"), (resource("files", 1), "files")]) \
            == ["partition", "files"]
        with pytest.raises(OSError, match="b failed"):
            await owner.own_together([(resource("a", 1), "a"), (resource("b", 2, fail=True), "b")])
        assert events[-1] == "release a"  # the half that succeeded was released at once
    assert events[-2:] == ["release files", "release partition"]  # nested order, whatever finished first


async def test_same_task_resources_keep_the_order_shield_and_bound_of_the_others(autojump_clock):
    """``own(..., same_task=True)`` holds without a task of its own but is released exactly like the others:
    newest first among all resources, shielded from the owner's cancellation, bounded, failures recorded."""
    order = []

    def resource(name, release_takes=0.0, fails=False):
        @asynccontextmanager
        async def manager():
            order.append(f"+{name}")
            try:
                yield name
            finally:
                await trio.sleep(release_takes)  # Cancelled at once if not shielded
                order.append(f"-{name}")
                if fails:
                    raise RuntimeError(f"{name} would not go")
        return manager()

    owner = ResourceOwner("test")
    with trio.CancelScope() as scope:
        async with owner:
            assert await owner.own(resource("a"), what="a") == "a"
            assert await owner.own(resource("b", release_takes=1), what="b", same_task=True) == "b"
            await owner.own(resource("c"), what="c")
            await owner.own(resource("d", fails=True), what="d", same_task=True)
            await owner.own(resource("e", release_takes=100), what="e", same_task=True,
                            release_timeout=5)
            scope.cancel()
            await trio.sleep_forever()
    assert order == ["+a", "+b", "+c", "+d", "+e", "-d", "-c", "-b", "-a"]  # e never finished releasing
    assert owner.released == ["c", "b", "a"]
    assert [(leak.what, leak.reason) for leak in owner.leaks] == [
        ("e", "release did not finish within 5 s"), ("d", "RuntimeError: d would not go")]

"""Class instances' method calls in the supervisor, on in-memory fakes of the Swarm and the workers (the fake
instance answers with the call's own args): calls queue until the instance serves and run in the order sent, each
ends exactly once, cancel and job end answer every call, a crashed instance is made again ``max_restarts`` times
and its queued calls are served by the new one, and a lost node ends the calls in flight at once."""

from __future__ import annotations

import msgpack
import pytest
import trio

from cumulus.calls import CallEnd, CallKey, MethodCall
from cumulus.errors import InvalidRequest, NotFound
from cumulus.identity import Caller
from cumulus.jobs import FailureReason, JobState
from tests.test_job_lifecycle import assert_nothing_left, fake_cluster, spec

_keys = iter(range(1, 1_000_000))


def instance_spec(**kw):
    return spec(runtime=10_000, instance=True, **kw)


async def send(sup, job_id: str, method: str = "work", args: bytes = b"", **kw):
    key = CallKey(stream=1, call_id=next(_keys))
    waiter = await sup.send_call(MethodCall(job_id, method, args or str(key.call_id).encode(), key), **kw)
    return key, waiter


def value(reply) -> bytes:
    assert reply.end is CallEnd.RETURNED, reply
    return msgpack.unpackb(reply.envelope, raw=False)["value"]


async def test_calls_wait_for_the_instance_and_run_in_the_order_sent(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        record = await sup.submit(instance_spec())
        waiters = [await send(sup, record.job_id, args=f"{i}".encode()) for i in range(50)]  # before it serves
        replies = [await waiter() for _, waiter in waiters]
        assert [value(r) for r in replies] == [f"{i}".encode() for i in range(50)]
        assert record.state is JobState.RUNNING and world.instance_calls[record.job_id] == ["work"] * 50
        _, failing = await send(sup, record.job_id, "fail")
        reply = await failing()
        assert reply.end is CallEnd.RETURNED and msgpack.unpackb(reply.envelope)["ok"] is False
        assert (record.calls.calls, record.calls.failed) == (51, 1)
        assert {m: (s.calls, s.failed) for m, s in record.calls.methods.items()} == {"work": (50, 0), "fail": (1, 1)}
        await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [record])


async def test_only_the_owner_calls_an_instance_and_only_an_instance_has_methods(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        alice, bob = Caller("alice"), Caller("bob")
        instance = await sup.submit(instance_spec(), caller=alice)
        function = await sup.submit(spec(runtime=100), caller=alice)
        with pytest.raises(NotFound):
            await send(sup, instance.job_id, caller=bob)
        with pytest.raises(InvalidRequest, match="not a class instance"):
            await send(sup, function.job_id, caller=alice)
        _, waiter = await send(sup, instance.job_id, caller=alice)
        assert value(await waiter())
        for record in (instance, function):
            await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [instance, function])


async def test_cancel_a_queued_call_and_cancel_the_instance(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        record = await sup.submit(instance_spec())
        first_key, first = await send(sup, record.job_id, "slow")
        key, queued = await send(sup, record.job_id)
        await sup.cancel_call(record.job_id, key)
        assert (await queued()).end is CallEnd.CANCELLED
        await sup.cancel_call(record.job_id, key)  # again: nothing happens
        assert value(await first())
        _, running = await send(sup, record.job_id, "slow")
        _, behind = await send(sup, record.job_id)
        await trio.sleep(0.5)
        await sup.cancel(record.job_id)
        for waiter in (running, behind):
            reply = await waiter()
            assert reply.end is CallEnd.INSTANCE_DIED and "CANCELLED" in reply.message, reply
        _, later = await send(sup, record.job_id)
        assert (await later()).end is CallEnd.INSTANCE_DIED
        assert world.instance_calls[record.job_id] == ["slow"]
        await assert_nothing_left(sup, world, [record])


async def test_a_crashed_instance_is_made_again_and_serves_the_queued_calls(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        record = await sup.submit(instance_spec(max_restarts=1))
        assert value(await (await send(sup, record.job_id))[1]())
        _, crash = await send(sup, record.job_id, "crash")
        _, along = await send(sup, record.job_id, args=b"along")  # sent with it: it may have run, never sent again
        assert (await crash()).end is CallEnd.INSTANCE_DIED
        assert (await along()).end is CallEnd.INSTANCE_DIED
        _, after = await send(sup, record.job_id, args=b"after")  # queued until the new instance serves
        assert value(await after()) == b"after" and record.attempt == 2
        _, crash_again = await send(sup, record.job_id, "crash")
        assert (await crash_again()).end is CallEnd.INSTANCE_DIED
        await record.torn_down.wait()  # no restart left
        assert record.state is JobState.FAILED
        _, later = await send(sup, record.job_id)
        assert (await later()).end is CallEnd.INSTANCE_DIED
        await assert_nothing_left(sup, world, [record])


async def test_a_lost_node_ends_its_calls_at_once(autojump_clock):
    async with fake_cluster(workers=1, **{"lease.ttl": 10}) as (sup, world):
        record = await sup.submit(instance_spec())
        assert value(await (await send(sup, record.job_id))[1]())
        _, running = await send(sup, record.job_id, "slow")
        await trio.sleep(0.2)
        world.cut(record.placement.worker)
        started = trio.current_time()
        reply = await running()
        assert reply.end is CallEnd.INSTANCE_DIED and trio.current_time() - started < 10
        await record.torn_down.wait()
        assert record.failure is FailureReason.NODE_LOST  # no restarts asked for
        world.restore(record.placement.worker)


async def test_a_caller_that_goes_away_withdraws_its_call(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        record = await sup.submit(instance_spec())
        _, busy = await send(sup, record.job_id, "slow")
        _, gone = await send(sup, record.job_id)
        with trio.move_on_after(0.1):
            await gone()  # cancelled: the call is withdrawn
        assert value(await busy())
        await trio.sleep(0.5)
        assert world.instance_calls[record.job_id] == ["slow"]
        await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [record])

"""The supervisor's side of a job's own calls on class instances (cumulus/actors/job_calls.py), on the in-memory
fakes: a fake channel stands for the job's ``calls.sock`` (tests/test_jobapi_calls.py runs the job's side for
real, tests/cluster/test_cluster_instances.py the whole path); the calls go through the real CallRouter to a fake
instance, which answers with the call's own args.

What must hold: a call is made as the job's owner (another user's instance is NOT_FOUND, a function job refused),
each call ends with exactly one reply frame, bad calls are refused in their reply and bad frames close the link,
a cancel frame withdraws its call, and a link that breaks withdraws the calls still waiting on it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import msgpack
import trio

from cumulus.actors.call_routing import CallRouter
from cumulus.actors.job_calls import CALLS_SOCKET_NAME, JobCalls
from cumulus.calls import CallEnd
from cumulus.identity import Caller
from cumulus.resources.instance_channel import InstanceChannelLost
from tests.test_instance_calls import instance_spec
from tests.test_job_lifecycle import assert_nothing_left, fake_cluster, spec

MAX_ARGS = 1000


class FakeJobSocket:
    """The job's end of its calls socket, in memory: the test writes call frames and reads replies."""

    def __init__(self) -> None:
        self.to_supervisor, self._from_job = trio.open_memory_channel[bytes](100)
        self._to_job, self.replies_in = trio.open_memory_channel[bytes](100)
        self.opened: list[tuple[str, str]] = []
        self.closed = trio.Event()

    @asynccontextmanager
    async def open_instance_channel(self, output_dir: str, *, max_frame: int, socket: str) -> AsyncIterator[Any]:
        self.opened.append((output_dir, socket))
        try:
            yield self
        finally:
            self.closed.set()

    async def send(self, frames: list[bytes]) -> None:  # the supervisor's replies
        for frame in frames:
            await self._to_job.send(frame)

    async def receive(self) -> bytes:  # the job's frames; the job closing its end breaks the channel
        try:
            return await self._from_job.receive()
        except trio.EndOfChannel:
            raise InstanceChannelLost("the job closed its calls socket") from None

    async def call(self, call_id: int, job_id: str, method: str = "work", args: bytes = b"x") -> None:
        await self.to_supervisor.send(msgpack.packb({"id": call_id, "job_id": job_id, "method": method,
                                                     "args": args}, use_bin_type=True))

    async def reply(self) -> dict[str, Any]:
        with trio.fail_after(60):
            return msgpack.unpackb(await self.replies_in.receive(), raw=False)


@asynccontextmanager
async def job_calls(sup: Any, owner: str) -> AsyncIterator[FakeJobSocket]:
    """A job of ``owner`` whose calls socket said it is ready, served until the block ends."""
    core = sup.root.whereis("core")
    socket = FakeJobSocket()
    calls = JobCalls(socket, "/jobs/j1/output", CallRouter(core.whereis("cluster"), core.whereis("jobs")), owner,
                     max_args=MAX_ARGS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(calls.run)
        calls.ready()
        yield socket
        nursery.cancel_scope.cancel()


def returned(reply: dict[str, Any]) -> bytes:
    assert reply["end"] == CallEnd.RETURNED.value, reply
    return msgpack.unpackb(reply["envelope"], raw=False)["value"]


async def test_a_jobs_calls_reach_its_owners_instance_and_each_ends_with_one_reply(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        instance = await sup.submit(instance_spec(), caller=Caller("alice"))
        async with job_calls(sup, "alice") as job:
            for i in range(1, 21):
                await job.call(i, instance.job_id, args=f"{i}".encode())
            replies = [await job.reply() for _ in range(20)]
            assert job.opened == [("/jobs/j1/output", CALLS_SOCKET_NAME)]
        assert [(r["id"], returned(r)) for r in replies] == [(i, f"{i}".encode()) for i in range(1, 21)]
        assert instance.calls.calls == 20
        await sup.cancel(instance.job_id)
        await assert_nothing_left(sup, world, [instance])


async def test_calls_that_cannot_be_made_are_refused_in_their_reply_and_the_link_goes_on(autojump_clock):
    async with fake_cluster(workers=3) as (sup, world):
        alices = await sup.submit(instance_spec(), caller=Caller("alice"))
        function = await sup.submit(spec(runtime=100), caller=Caller("bob"))
        bobs = await sup.submit(instance_spec(), caller=Caller("bob"))
        async with job_calls(sup, "bob") as job:
            cases = [(alices.job_id, "work", b"x", "NotFound", alices.job_id),
                     (function.job_id, "work", b"x", "InvalidRequest", "not a class instance"),
                     (bobs.job_id, "_secret", b"x", "InvalidRequest", "private"),
                     (bobs.job_id, "work", b"x" * (MAX_ARGS + 1), "PackageTooLarge", "jobs.max_package_mb"),
                     ("", "work", b"x", "InvalidRequest", "job id")]
            for i, (job_id, method, args, error, words) in enumerate(cases, 1):
                await job.call(i, job_id, method, args)
                reply = await job.reply()
                assert (reply["id"], reply["end"], reply["error"]) == (i, CallEnd.REFUSED.value, error), reply
                assert words in reply["message"], reply
            await job.call(99, bobs.job_id)
            assert returned(await job.reply()) == b"x"
        assert alices.calls.calls == 0
        for record in (alices, function, bobs):
            await sup.cancel(record.job_id)
        await assert_nothing_left(sup, world, [alices, function, bobs])


async def test_a_cancel_frame_withdraws_its_call(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        instance = await sup.submit(instance_spec())
        async with job_calls(sup, "") as job:
            await job.call(1, instance.job_id, "slow")
            await job.call(2, instance.job_id)  # queued behind the slow one
            await job.to_supervisor.send(msgpack.packb({"cancel": 2}))
            first, second = sorted([await job.reply(), await job.reply()], key=lambda reply: reply["id"])
        assert (second["id"], second["end"]) == (2, CallEnd.CANCELLED.value), second
        assert first["id"] == 1 and returned(first)
        assert world.instance_calls[instance.job_id] == ["slow"]
        await sup.cancel(instance.job_id)
        await assert_nothing_left(sup, world, [instance])


async def test_a_link_that_breaks_withdraws_its_waiting_calls_and_a_bad_frame_breaks_it(autojump_clock):
    async with fake_cluster(workers=1) as (sup, world):
        instance = await sup.submit(instance_spec())
        async with job_calls(sup, "") as job:
            await job.call(1, instance.job_id, "one")  # both wait at its actor: it is not constructed yet
            await job.call(2, instance.job_id, "two")
            await trio.sleep(0.01)
            assert not world.instance_calls.get(instance.job_id)
            await job.to_supervisor.send(b"\xc1")  # not msgpack: the link is closed
            with trio.fail_after(60):
                await job.closed.wait()
        async with job_calls(sup, "") as again:  # the job made its socket again
            await again.call(1, instance.job_id, "three")
            assert returned(await again.reply()) == b"x"
        assert world.instance_calls[instance.job_id] == ["three"]  # the first link's calls were withdrawn
        await sup.cancel(instance.job_id)
        await assert_nothing_left(sup, world, [instance])


async def test_the_job_closing_its_socket_ends_the_link_and_a_ready_line_opens_it_again(autojump_clock):
    """The job ends (or its calls socket goes) while a call waits: the link ends without failing the attempt's
    serving, the waiting call is withdrawn, and the next ready line opens a new link."""
    async with fake_cluster(workers=1) as (sup, world):
        instance = await sup.submit(instance_spec())
        async with job_calls(sup, "") as job:
            await job.call(1, instance.job_id, "one")  # waits at its actor: it is not constructed yet
            await trio.sleep(0.01)
            await job.to_supervisor.aclose()
            with trio.fail_after(60):
                await job.closed.wait()
        async with job_calls(sup, "") as again:
            await again.call(1, instance.job_id, "two")
            assert returned(await again.reply()) == b"x"
        assert world.instance_calls[instance.job_id] == ["two"]
        await sup.cancel(instance.job_id)
        await assert_nothing_left(sup, world, [instance])

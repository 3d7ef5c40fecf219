"""Routing a method call to its class instance: :class:`CallRouter`, the one place that decides whether a caller
may call an instance and hands the call to the instance's JobActor.

Both front doors use it: the gRPC ``CallInstance`` stream (through :class:`cumulus.instance_api.InstanceCallsApi`)
and a job calling an instance whose handle it was given (:mod:`cumulus.actors.job_calls`). The router asks the
ClusterActor for the record (``GetJob`` checks that the caller may see the job) and finds the live JobActor under
the jobs' supervisor; the JobActor queues the call and answers when it ends (:mod:`cumulus.actors.instance_calls`).
Nothing here waits for the instance: :meth:`CallRouter.send_call` returns once the call is in the actor's mailbox,
so calls sent one after another are queued in that order.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

from cumulus.actors.base import ActorRef
from cumulus.actors.cluster_messages import GetJob
from cumulus.calls import CallKey, CallReply, CancelCall, MethodCall
from cumulus.errors import ActorDied, InvalidRequest
from cumulus.identity import Caller


@dataclass(frozen=True)
class CallRouter:
    """``cluster``: the ClusterActor (ownership); ``jobs``: the jobs' supervisor (``whereis(job_id)``)."""

    cluster: ActorRef
    jobs: Any

    async def _instance_actor(self, job_id: str, caller: Caller) -> tuple[Any, ActorRef | None]:
        """The instance's record and its live JobActor (None once it has ended). NotFound if the caller may not
        see the job; InvalidRequest if it is a function job."""
        record = await self.cluster.call(GetJob(job_id, caller))
        if not record.spec.instance:
            raise InvalidRequest(f"job {job_id} runs a function, not a class instance: only the handle that "
                                 "Model.remote(...) returns has methods to call")
        return record, None if record.state.terminal else self.jobs.whereis(job_id)

    async def send_call(self, call: MethodCall, *, caller: Caller) -> Callable[[], Awaitable[CallReply]]:
        """Queue ``call`` at its instance; returns, once queued, the wait for its :class:`CallReply` (which never
        raises). Cancelling that wait (the caller went away) withdraws the call. Raises NotFound or
        InvalidRequest as :meth:`_instance_actor` says."""
        record, actor = await self._instance_actor(call.job_id, caller)
        ended = CallReply.died(f"instance {call.job_id} has ended ({record.state.value}"
                               f"{': ' + record.reason if record.reason else ''})")
        try:
            if actor is None:
                raise ActorDied(call.job_id)
            answer = await actor.ask(call)
        except ActorDied:
            async def already_ended() -> CallReply:
                return ended

            return already_ended

        async def reply() -> CallReply:
            try:
                return await answer()
            except ActorDied:
                return ended
            except trio.Cancelled:
                with suppress(ActorDied, trio.WouldBlock):
                    actor.cast_nowait(CancelCall(call.job_id, call.key))
                raise

        return reply

    async def cancel_call(self, job_id: str, key: CallKey, *, caller: Caller) -> None:
        """Withdraw a call (it ends CANCELLED unless it has ended); nothing happens for one that has."""
        _, actor = await self._instance_actor(job_id, caller)
        if actor is not None:
            with suppress(ActorDied):
                await actor.cast(CancelCall(job_id, key))


__all__ = ["CallRouter"]

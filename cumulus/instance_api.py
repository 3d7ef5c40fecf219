"""The supervisor API's method calls on class instances (a part of :class:`cumulus.app.SupervisorApi`).

A call goes to the instance's JobActor, which queues it and answers when it ends
(:mod:`cumulus.actors.instance_calls`); the API checks first that the caller may see the job and that it is an
instance. Nothing here waits for the instance: :meth:`InstanceCallsApi.send_call` returns once the call is in the
actor's mailbox, so calls sent one after another are queued in that order.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Awaitable, Callable

import trio

from cumulus.calls import CallKey, CallReply, CancelCall, MethodCall
from cumulus.errors import ActorDied, InvalidRequest
from cumulus.identity import LOCAL_ADMIN, Caller


class InstanceCallsApi:
    """``send_call`` and ``cancel_call``; needs the API's ``get`` (ownership) and ``_core`` (the actor tree)."""

    get: Callable[..., Awaitable[Any]]
    _core: Callable[[str], Any]

    async def _instance_actor(self, job_id: str, caller: Caller) -> tuple[Any, Any]:
        """The instance's record and its live JobActor (None once it has ended). NotFound if the caller may not
        see the job; InvalidRequest if it is a function job."""
        record = await self.get(job_id, caller=caller)
        if not record.spec.instance:
            raise InvalidRequest(f"job {job_id} runs a function, not a class instance: only the handle that "
                                 "Model.remote(...) returns has methods to call")
        jobs = self._core("jobs")
        return record, None if record.state.terminal else jobs.whereis(job_id)

    async def send_call(self, call: MethodCall, *, caller: Caller = LOCAL_ADMIN
                        ) -> Callable[[], Awaitable[CallReply]]:
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

    async def cancel_call(self, job_id: str, key: CallKey, *, caller: Caller = LOCAL_ADMIN) -> None:
        """Withdraw a call (it ends CANCELLED unless it has ended); nothing happens for one that has."""
        _, actor = await self._instance_actor(job_id, caller)
        if actor is not None:
            with suppress(ActorDied):
                await actor.cast(CancelCall(job_id, key))


__all__ = ["InstanceCallsApi"]

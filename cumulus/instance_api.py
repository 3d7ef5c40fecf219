"""The supervisor API's method calls on class instances (a part of :class:`cumulus.app.SupervisorApi`): the gRPC
front door's way to :class:`cumulus.actors.call_routing.CallRouter`, which decides and routes."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from cumulus.actors.call_routing import CallRouter
from cumulus.calls import CallKey, CallReply, MethodCall
from cumulus.identity import LOCAL_ADMIN, Caller


class InstanceCallsApi:
    """``send_call`` and ``cancel_call``; needs the API's ``_core`` (the actor tree)."""

    _core: Callable[[str], Any]

    def _router(self) -> CallRouter:
        return CallRouter(self._core("cluster"), self._core("jobs"))

    async def send_call(self, call: MethodCall, *, caller: Caller = LOCAL_ADMIN
                        ) -> Callable[[], Awaitable[CallReply]]:
        """:meth:`CallRouter.send_call`: returns once the call is queued at its instance, with the wait for its
        end. Raises NotFound or InvalidRequest."""
        return await self._router().send_call(call, caller=caller)

    async def cancel_call(self, job_id: str, key: CallKey, *, caller: Caller = LOCAL_ADMIN) -> None:
        """Withdraw a call (it ends CANCELLED unless it has ended); nothing happens for one that has."""
        await self._router().cancel_call(job_id, key, caller=caller)


__all__ = ["InstanceCallsApi"]

"""The ``CallInstance`` stream: method calls on class instances, in over one gRPC stream, replies out on it.

Runs on the asyncio loop (grpc.aio). Requests are read in order and each is handed to the supervisor's API
(:meth:`cumulus.app.SupervisorApi.send_call`) before the next is read, so calls to one instance run in the order
the client sent them; the API answers once the call is queued at the instance's JobActor, with a waiter for its
end. Every call then ends with exactly one :class:`~cumulus.rpc.generated.v1.cumulus_pb2.InstanceReply`, written
as it ends. A request that cannot be a call (an empty or bad job id or method, arguments over the package limit)
is refused in its own reply; the stream goes on. When the client closes its side, the stream ends after the last
reply; when it goes away, its calls still waiting are withdrawn (the API's waiter does that on cancellation).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from cumulus.asyncio_bridge import call_trio
from cumulus.calls import CallEnd, CallKey, CallReply, MethodCall, check_method_name
from cumulus.errors import CumulusError, InvalidRequest, PackageTooLarge
from cumulus.identity import Caller
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.status import status_for

log = logging.getLogger(__name__)

_streams = itertools.count(1)
_END = object()

CALL_ENDS = {
    CallEnd.RETURNED: pb.CALL_RETURNED,
    CallEnd.INSTANCE_DIED: pb.CALL_INSTANCE_DIED,
    CallEnd.CANCELLED: pb.CALL_CANCELLED,
    CallEnd.REFUSED: pb.CALL_REFUSED,
}


def reply_to_pb(call_id: int, reply: CallReply) -> pb.InstanceReply:
    code = status_for(reply.error).value[0] if reply.error is not None else 0
    return pb.InstanceReply(call_id=call_id, end=CALL_ENDS[reply.end], envelope=reply.envelope,
                            message=reply.message, code=code)


def _checked(request: pb.InstanceCall, stream: int, max_job_id_len: int, max_args: int) -> MethodCall:
    job_id = request.job_id
    if not job_id or len(job_id) > max_job_id_len or any(not c.isprintable() for c in job_id):
        raise InvalidRequest(f"job_id {job_id[:40]!r} is not an instance's job id")
    why = check_method_name(request.method)
    if why:
        raise InvalidRequest(why)
    if len(request.args) > max_args:
        raise PackageTooLarge(f"the arguments of {request.method}() are {len(request.args)} bytes, over the "
                              f"limit of {max_args} (jobs.max_package_mb): pass big data by reference instead")
    return MethodCall(job_id, request.method, request.args, CallKey(stream, request.call_id))


async def serve_instance_calls(api: Any, requests: AsyncIterator[pb.InstanceCall], caller: Caller,
                               max_job_id_len: int) -> AsyncIterator[pb.InstanceReply]:
    """The replies to the calls read from ``requests`` (see the module's docstring)."""
    stream = next(_streams)
    max_args = api.settings.jobs.max_package_mb * 2**20
    replies: asyncio.Queue[Any] = asyncio.Queue()
    waiting: set[asyncio.Task[None]] = set()

    async def finish(call_id: int, waiter: Callable[[], Awaitable[CallReply]]) -> None:
        replies.put_nowait(reply_to_pb(call_id, await call_trio(waiter)))

    async def read() -> None:
        try:
            async for request in requests:
                try:
                    if request.cancel:
                        await call_trio(functools.partial(api.cancel_call, request.job_id,
                                                          CallKey(stream, request.call_id), caller=caller))
                        continue
                    call = _checked(request, stream, max_job_id_len, max_args)
                    waiter = await call_trio(functools.partial(api.send_call, call, caller=caller))
                except CumulusError as error:
                    replies.put_nowait(reply_to_pb(request.call_id, CallReply.refused(error)))
                    continue
                task = asyncio.ensure_future(finish(request.call_id, waiter))
                waiting.add(task)
                task.add_done_callback(waiting.discard)
            while waiting:  # the client sent its last call: the stream ends after its last reply
                await asyncio.wait(set(waiting))
        finally:
            replies.put_nowait(_END)

    reader = asyncio.ensure_future(read())
    try:
        while (reply := await replies.get()) is not _END:
            yield reply
        await reader  # its error, if any
    finally:
        for task in (reader, *waiting):
            task.cancel()


__all__ = ["CALL_ENDS", "reply_to_pb", "serve_instance_calls"]

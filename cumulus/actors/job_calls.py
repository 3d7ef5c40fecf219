"""Calls a job makes on class instances: a handle passed into a job (or ``cumulus.instance(id)`` there) works.

A job has no network, and its container holds no token. The in-job ``cumulus`` package
(``worker_image/image/jobapi/cumulus/_calls.py`` documents the protocol) listens on ``<output dir>/calls.sock`` the
first time the job makes a handle, and says so on stderr with :data:`CALLS_READY_LINE`. The log relay sees that
line and calls :meth:`JobCalls.ready`; :meth:`JobCalls.run` then opens a channel to that socket through the node's
SSH connection (as for an instance's own socket) and serves it while the attempt runs:

* each call frame ``{"id", "job_id", "method", "args"}`` goes to :class:`~cumulus.actors.call_routing.CallRouter`
  **as the job's owner**: the job may call the instances its owner may call, and no other; one that cannot be a
  call (bad id or method, arguments over ``jobs.max_package_mb``) or that the router refuses (``NotFound``,
  ``InvalidRequest``) is answered ``refused``;
* a cancel frame ``{"cancel": id}`` withdraws that call;
* every call ends with one reply frame ``{"id", "end", "envelope" | "message", "error"}`` (``end``: a
  :class:`~cumulus.calls.CallEnd` value), written as it ends;
* when the channel breaks, the calls still waiting are withdrawn (the job raises SupervisorUnavailable for them);
  a new ready line (the job made its socket again) opens it again.

The supervisor never unpickles the arguments nor the envelopes; the instance's JobActor counts the calls.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any, Awaitable, Callable

import msgpack
import trio

from cumulus.actors.call_routing import CallRouter
from cumulus.calls import CallEnd, CallKey, CallReply, MethodCall, check_method_name
from cumulus.errors import CumulusError, InvalidRequest, PackageTooLarge
from cumulus.identity import Caller
from cumulus.resources.instance_channel import InstanceChannelLost, InstanceNotServing

log = logging.getLogger(__name__)

CALLS_SOCKET_NAME = "calls.sock"
#: The in-job package's stderr line once its socket serves (relayed to the job's log like any line).
CALLS_READY_LINE = re.compile(r"^\[cumulus\] calls socket ready$")
MAX_JOB_ID_LEN = 128
FRAME_ROOM = 64 * 1024  # a call frame's keys and names around its arguments
#: A job's own calls keys are negative: a gRPC stream's are positive, and both kinds meet at one instance.
_streams = itertools.count(-1, -1)


class JobCalls:
    """The calls of one attempt's job, made as its ``owner``. :meth:`ready` (from the log relay) asks :meth:`run`
    (in the attempt's nursery, cancelled with it) to open the channel."""

    def __init__(self, node: Any, output_dir: str, router: CallRouter | None, owner: str, *,
                 max_args: int) -> None:
        self.node, self.output_dir, self.router, self.caller = node, output_dir, router, Caller(owner)
        self.max_args, self.max_frame = max_args, max_args + FRAME_ROOM
        self._wake = trio.Event()

    @classmethod
    def of_attempt(cls, attempt: Any, output_dir: str) -> JobCalls:
        """The calls of ``attempt``'s job (an :class:`~cumulus.actors.attempt.Attempt` whose files are made). An
        adopted one opens the channel at once if the job serves one: its ready line went to the supervisor
        before."""
        calls = cls(attempt.node, output_dir, attempt.ctx.router, attempt.record.spec.owner,
                    max_args=attempt.ctx.settings.jobs.max_package_mb * 2**20)
        if attempt.adopted:
            calls.ready()
        return calls

    def ready(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Serve the job's socket each time it says it is ready, until cancelled (never raises otherwise)."""
        if self.router is None:
            return
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                async with self.node.open_instance_channel(self.output_dir, max_frame=self.max_frame,
                                                           socket=CALLS_SOCKET_NAME) as channel:
                    await _Link(self, channel, next(_streams)).serve()
            except InstanceNotServing:  # an adopted job that never made a handle
                pass
            except CumulusError as error:  # the job ended, or the channel broke: its calls were withdrawn
                log.info("the job's calls channel: %s", error)


class _Link:
    """One open channel: reads call and cancel frames, writes each reply as its call ends."""

    def __init__(self, calls: JobCalls, channel: Any, stream: int) -> None:
        self.calls, self.channel, self.stream = calls, channel, stream
        self.waiting: dict[int, str] = {}  # call id -> the instance it went to
        self._send_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def serve(self) -> None:
        """Until the channel breaks or the job sends a frame that is not a call; raises nothing else."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    frame = msgpack.unpackb(await self.channel.receive(), raw=False)
                    if not isinstance(frame, dict):
                        raise InvalidRequest(f"a frame that is not a map: {type(frame).__name__}")
                    if "cancel" in frame:
                        await self._cancel(frame["cancel"])
                    else:
                        await self._call(frame, nursery)
            except InstanceChannelLost as lost:  # the job ended, or made its socket again
                log.info("the job's calls channel: %s", lost)
            except (ValueError, msgpack.UnpackException, InvalidRequest) as error:
                log.warning("the job sent a frame that is not a call: %s; its calls channel is closed", error)
            finally:
                nursery.cancel_scope.cancel()  # the waits end: their calls are withdrawn

    async def _call(self, frame: dict[str, Any], nursery: trio.Nursery) -> None:
        call_id = frame.get("id")
        if not isinstance(call_id, int) or isinstance(call_id, bool) or call_id in self.waiting:
            raise InvalidRequest(f"a call frame without a new int id: {call_id!r}")
        try:
            call = self._checked(frame, call_id)
            wait = await self.calls.router.send_call(call, caller=self.calls.caller)  # type: ignore[union-attr]
        except CumulusError as refused:  # not a call, not the owner's instance, or the cluster is going away
            await self._reply(call_id, CallReply.refused(refused))
            return
        self.waiting[call_id] = call.job_id
        nursery.start_soon(self._answer, call_id, wait)

    def _checked(self, frame: dict[str, Any], call_id: int) -> MethodCall:
        job_id, method, args = frame.get("job_id"), frame.get("method"), frame.get("args")
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LEN or not job_id.isprintable():
            raise InvalidRequest(f"job_id {str(job_id)[:40]!r} is not an instance's job id")
        if not isinstance(method, str) or (why := check_method_name(method)):
            raise InvalidRequest(why if isinstance(method, str) else f"{method!r} is not a method name")
        if not isinstance(args, bytes):
            raise InvalidRequest(f"the arguments of {method}() are not bytes")
        if len(args) > self.calls.max_args:
            raise PackageTooLarge(f"the arguments of {method}() are {len(args)} bytes, over the limit of "
                                  f"{self.calls.max_args} (jobs.max_package_mb): pass big data by reference instead")
        return MethodCall(job_id, method, args, CallKey(self.stream, call_id))

    async def _answer(self, call_id: int, wait: Callable[[], Awaitable[CallReply]]) -> None:
        reply = await wait()
        self.waiting.pop(call_id, None)
        await self._reply(call_id, reply)

    async def _cancel(self, call_id: Any) -> None:
        job_id = self.waiting.get(call_id) if isinstance(call_id, int) else None
        if job_id is not None:
            try:
                await self.calls.router.cancel_call(  # type: ignore[union-attr]
                    job_id, CallKey(self.stream, call_id), caller=self.calls.caller)
            except CumulusError:  # the instance is gone: its reply says so
                pass

    async def _reply(self, call_id: int, reply: CallReply) -> None:
        frame: dict[str, Any] = {"id": call_id, "end": reply.end.value}
        if reply.end is CallEnd.RETURNED:
            frame["envelope"] = reply.envelope
        else:
            frame["message"] = reply.message
        if reply.error is not None:
            frame["error"] = type(reply.error).__name__
        try:
            async with self._send_lock:
                await self.channel.send([msgpack.packb(frame, use_bin_type=True)])
        except InstanceChannelLost:  # the reading side sees it too and ends the link
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()


__all__ = ["CALLS_READY_LINE", "CALLS_SOCKET_NAME", "JobCalls"]

"""A class instance's method calls in the supervisor: queued, sent in order, each answered exactly once.

:class:`InstanceCalls` belongs to the instance's JobActor, and only that actor's tasks touch it: its handler
takes calls (:meth:`InstanceCalls.take`, answering later through the call's
:class:`~cumulus.actors.base.DeferredReply`) and cancels them; the running attempt serves them
(:func:`serve_instance`) over a channel to the instance's socket on its node
(:mod:`cumulus.resources.instance_channel`), opened through the node's SSH connection.

Calls wait in one FIFO queue until an instance serves (it is still being placed or constructed, or it is being
made again after it died) and are written to it in that order, as many at once as are waiting; the instance runs
them one at a time in that order. A call in flight when the channel breaks (the instance died, its node was
lost) may or may not have run: it ends INSTANCE_DIED, never sent again. Queued calls outlive an attempt (a
restart serves them); when the job ends, every call left, and every later one, ends INSTANCE_DIED.
The supervisor never unpickles a call's arguments or a reply's value; it reads the envelope's ``ok`` only, for
the call counts.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from cumulus.actors.base import DeferredReply
from cumulus.calls import CallEnd, CallKey, CallReply, MethodCall
from cumulus.errors import CumulusError, InvalidRequest, QuotaExceeded
from cumulus.resources.instance_channel import InstanceChannelLost, InstanceNotServing

log = logging.getLogger(__name__)

MAX_WAITING_CALLS = 10_000  # queued and in flight, per instance: past this a call is refused (RESOURCE_EXHAUSTED)
CONNECT_RETRY_SECONDS = (0.005, 0.1)  # the first wait for the instance's socket, and the longest


@dataclass(slots=True)
class _Call:
    call: MethodCall
    reply: DeferredReply
    wire_id: int = 0  # its id on the channel, once sent
    sent_at: float = 0.0


class InstanceCalls:
    """The calls of one instance (see the module's docstring). ``record`` is its job's record (call counts)."""

    def __init__(self, record: Any, max_reply_bytes: int) -> None:
        self.record = record
        self.max_frame = max_reply_bytes + 4096  # the envelope and its frame's keys
        self._queued: deque[_Call] = deque()
        self._sent: dict[int, _Call] = {}
        self._by_key: dict[CallKey, _Call] = {}
        self._wire_ids = itertools.count(1)
        self._waiting = trio.Event()  # set while calls are queued (the sender waits on it)
        self._ended: str | None = None

    @property
    def waiting(self) -> int:
        return len(self._by_key)

    def take(self, call: MethodCall, reply: DeferredReply) -> None:
        """Queue ``call``; ``reply`` is answered with its :class:`CallReply` when it ends."""
        if self._ended is not None:
            reply.answer(CallReply.died(self._ended))
        elif call.key in self._by_key:
            reply.answer(CallReply.refused(InvalidRequest(f"call id {call.key.call_id} is already in use on this "
                                                          "stream; give each call its own id")))
        elif len(self._by_key) >= MAX_WAITING_CALLS:
            reply.answer(CallReply.refused(QuotaExceeded(
                f"instance {self.record.job_id} has {MAX_WAITING_CALLS} calls waiting already: wait for some "
                "to return before sending more", retry_after=1.0)))
        else:
            entry = self._by_key[call.key] = _Call(call, reply)
            self._queued.append(entry)
            self._waiting.set()

    def cancel(self, key: CallKey) -> None:
        """The call ends CANCELLED now, unless it has ended; one already sent may still run (its reply is
        dropped)."""
        entry = self._by_key.pop(key, None)
        if entry is None:
            return
        if not entry.wire_id:
            self._queued.remove(entry)
        entry.reply.answer(CallReply(CallEnd.CANCELLED, message="cancelled by its caller"))

    def lost(self, why: str) -> None:
        """The channel broke, or the attempt ended: every call in flight ends INSTANCE_DIED (it may have run)."""
        for entry in self._sent.values():
            self._end(entry, CallReply.died(f"the instance ended or was lost while it ran the call: {why}"))
        self._sent.clear()

    def close(self, why: str) -> None:
        """The instance's job ended: every call left, and every later one, ends INSTANCE_DIED with ``why``."""
        self._ended = why
        self.lost(why)
        for entry in self._queued:
            self._end(entry, CallReply.died(why))
        self._queued.clear()

    def _end(self, entry: _Call, reply: CallReply) -> None:
        self._by_key.pop(entry.call.key, None)
        entry.reply.answer(reply)  # a cancelled call was answered already: this one is dropped

    async def serve(self, channel: Any) -> None:
        """Send the queued calls over ``channel`` and answer them as their replies come, until the channel breaks
        (InstanceChannelLost: the calls in flight end INSTANCE_DIED) or this is cancelled (the attempt ended: its
        JobActor ends them, with the attempt's outcome)."""
        broken: list[InstanceChannelLost] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_queued, channel, broken, nursery.cancel_scope)
            try:
                while True:
                    self._returned(await channel.receive())
            except InstanceChannelLost as error:
                broken.append(error)
            nursery.cancel_scope.cancel()
        if broken:
            self.lost(str(broken[0]))
            raise broken[0]

    async def _send_queued(self, channel: Any, broken: list[InstanceChannelLost], serving: trio.CancelScope) -> None:
        while True:
            await self._waiting.wait()
            frames = []
            now = trio.current_time()
            while self._queued:
                entry = self._queued.popleft()
                entry.wire_id, entry.sent_at = next(self._wire_ids), now
                self._sent[entry.wire_id] = entry
                frames.append(msgpack.packb({"id": entry.wire_id, "method": entry.call.method,
                                             "args": entry.call.args}, use_bin_type=True))
            self._waiting = trio.Event()
            try:
                await channel.send(frames)
            except InstanceChannelLost as error:
                broken.append(error)
                serving.cancel()
                return

    def _returned(self, frame: bytes) -> None:
        try:
            reply = msgpack.unpackb(frame, raw=False)
            wire_id, envelope = reply["id"], reply["envelope"]
            ok = msgpack.unpackb(envelope, raw=False).get("ok") is True
        except Exception as error:  # noqa: BLE001 - whatever the instance sent, it is no reply
            raise InstanceChannelLost(f"the instance sent a frame that is no reply ({type(error).__name__})") \
                from error
        entry = self._sent.pop(wire_id, None) if isinstance(wire_id, int) else None
        if entry is None:
            return  # not a call in flight: it was cancelled, or the instance made it up
        self.record.calls.count(entry.call.method, failed=not ok, seconds=trio.current_time() - entry.sent_at)
        self._end(entry, CallReply(CallEnd.RETURNED, envelope=bytes(envelope)))


async def serve_instance(node: Any, output_dir: str, calls: InstanceCalls) -> None:
    """Serve ``calls`` to the instance in the job whose output dir on ``node`` is ``output_dir``, for as long as
    the attempt runs (it cancels this): wait for the instance's socket (it appears once the instance is
    constructed), and open the channel again if it breaks while the container still runs."""
    delay, ready = CONNECT_RETRY_SECONDS[0], False
    while True:
        try:
            async with node.open_instance_channel(output_dir, max_frame=calls.max_frame) as channel:
                if not ready:
                    calls.record.add_message("instance ready: serving its calls")
                    ready = True
                delay = CONNECT_RETRY_SECONDS[0]
                await calls.serve(channel)
        except InstanceNotServing:
            pass
        except CumulusError as error:  # the channel broke: the attempt ends too if the instance did
            log.info("%s: channel to its instance: %s", calls.record.job_id, error)
        await trio.sleep(delay)
        delay = min(delay * 2, CONNECT_RETRY_SECONDS[1])


__all__ = ["CONNECT_RETRY_SECONDS", "InstanceCalls", "MAX_WAITING_CALLS", "serve_instance"]

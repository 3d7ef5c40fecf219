"""FakeInstance: the method calls of one class instance in FakeSupervisorApi (the supervisor's ``send_call`` and
``cancel_call`` side, faked).

The instance itself is real: the fake runs an instance job with the real job runner like any job
(``worker_image/image/runner.py``, which constructs the class and serves its methods on
``$CUMULUS_OUTPUT_DIR/instance.sock``, the protocol of ``runner_instance.py``'s docstring). What is fake is the
supervisor's part: calls wait in one FIFO queue until the socket is there, and are then sent ONE AT A TIME (the next
only after the reply to the last), so a call still queued here can be withdrawn (``cancel_call``: it ends
CANCELLED). When the job ends, every call not returned, and every later one, ends INSTANCE_DIED with a message.
Replies carry the runner's envelope untouched (the client decodes it); the counts per method go to the record's
:class:`~cumulus.calls.CallStats`, as the real JobActor keeps them.
"""

from __future__ import annotations

import itertools
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import msgpack
import trio

from cumulus.calls import CallEnd, CallKey, CallReply, MethodCall
from cumulus.jobformat.envelope import decode_envelope
from cumulus.jobs import JobRecord

HEADER = struct.Struct(">I")
SOCKET_NAME = "instance.sock"


@dataclass
class FakeCall:
    call: MethodCall
    done: trio.Event = field(default_factory=trio.Event)
    reply: CallReply | None = None
    started: bool = False  # sent to the instance: no longer withdrawn by a cancel

    def end(self, reply: CallReply) -> None:
        if self.reply is None:
            self.reply = reply
            self.done.set()


class FakeInstance:
    """One instance job's calls (see the module's docstring)."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.calls: dict[CallKey, FakeCall] = {}
        self.sent: list[str] = []  # the methods sent to the instance, in order (for assertions)
        self.dead: str | None = None
        self._queue_in, self._queue_out = trio.open_memory_channel[FakeCall](float("inf"))
        self._ids = itertools.count(1)

    def send(self, call: MethodCall) -> Callable[[], Awaitable[CallReply]]:
        """Queue ``call``; the wait for its reply (never raises; cancelling it withdraws a call not sent yet)."""
        entry = FakeCall(call)
        if self.dead is not None:
            entry.end(CallReply.died(self.dead))
        else:
            self.calls[call.key] = entry
            self._queue_in.send_nowait(entry)

        async def reply() -> CallReply:
            try:
                await entry.done.wait()
            except trio.Cancelled:  # the caller's stream went away
                if not entry.started:
                    entry.end(CallReply(CallEnd.CANCELLED, message="withdrawn: its caller went away"))
                raise
            finally:
                if entry.done.is_set():
                    self.calls.pop(call.key, None)
            assert entry.reply is not None
            return entry.reply

        return reply

    def cancel(self, key: CallKey) -> None:
        entry = self.calls.get(key)
        if entry is not None and not entry.started:
            entry.end(CallReply(CallEnd.CANCELLED, message=f"cancelled by its caller before "
                                                           f"{entry.call.method}() started"))

    def die(self, why: str) -> None:
        """The job ended: every call not returned, and every later one, ends INSTANCE_DIED."""
        self.dead = why
        for entry in list(self.calls.values()):
            entry.end(CallReply.died(why))

    async def serve(self, output_dir: Path) -> None:
        """Send the queued calls to the runner's socket, one at a time, until cancelled (the job's process ended)
        or the instance closes the socket."""
        path = output_dir / SOCKET_NAME
        while not path.exists():  # the runner renames it into place once the instance exists
            await trio.sleep(0.01)
        try:
            await self._serve(await trio.open_unix_socket(str(path)))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the instance is gone: die() ends the calls left when the job ends

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            async for entry in self._queue_out:
                if entry.reply is not None:  # withdrawn while it waited
                    continue
                entry.started = True
                started = time.monotonic()
                request = {"id": next(self._ids), "method": entry.call.method, "args": entry.call.args}
                frame = msgpack.packb(request, use_bin_type=True)
                await stream.send_all(HEADER.pack(len(frame)) + frame)
                answer = await _read_frame(stream)
                if answer is None:
                    return  # the instance is gone: die() ends this call and the rest
                envelope = msgpack.unpackb(answer, raw=False)["envelope"]
                ok = decode_envelope(envelope).ok
                self.sent.append(entry.call.method)
                self.record.calls.count(entry.call.method, failed=not ok, seconds=time.monotonic() - started)
                entry.end(CallReply(CallEnd.RETURNED, envelope=envelope))


async def _read_frame(stream: trio.SocketStream) -> bytes | None:
    head = await _read_exact(stream, HEADER.size)
    if head is None:
        return None
    return await _read_exact(stream, HEADER.unpack(head)[0])


async def _read_exact(stream: trio.SocketStream, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


__all__ = ["FakeCall", "FakeInstance"]

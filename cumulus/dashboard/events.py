"""A job's live events as Server-Sent Events (``GET /jobs/{id}/events``), for the job page's log and state.

It follows :meth:`~cumulus.jobs.JobRecord.events` with ``replay_logs=True``, exactly as the RPC layer's WatchJob
does: every event so far (the log from its start, as far as the record keeps it), then live ones, until the job is
torn down. Events:

* ``logs``: a JSON list of ``[stream, line]``: the lines that arrived together (one write per batch, not per line);
* ``state``: ``{"state": "RUNNING", "reason": "...", "terminal": false}``;
* ``note``: ``{"text": "..."}``, the job's progress messages;
* ``end``: ``{"state": ...}`` once the job is torn down; the stream ends after it (the page then closes its
  EventSource, which would otherwise reconnect and replay);
* ``signed-out``: ``{}``, the session ended (signed out, token revoked); the stream ends after it.

A comment line every ``KEEPALIVE_SECONDS`` keeps proxies from closing an idle stream. The stream ends when the
browser goes away, and when its session does (a token revoked meanwhile stops the log it was reading).
"""

from __future__ import annotations

import json
import math
from contextlib import aclosing
from typing import AsyncGenerator, cast

import trio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cumulus.dashboard.auth import Sessions
from cumulus.dashboard.base import View, job_id_of
from cumulus.errors import NotFound
from cumulus.jobs import JobEvent, JobRecord

KEEPALIVE_SECONDS = 5.0  # also how often an idle stream looks at its session
SESSION_CHECK_SECONDS = 1.0
MAX_BATCH = 1000  # events per write


def sse(event: str, data: object) -> bytes:
    """One SSE event; JSON never holds a raw newline, so ``data`` is always one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def encode(batch: list[JobEvent]) -> bytes:
    """The events in order, each run of log lines as one ``logs`` event (results are not shown: they are bytes)."""
    out: list[bytes] = []
    lines: list[tuple[str, str]] = []
    for event in batch:
        if event.log is not None:
            lines.append(event.log)
            continue
        if lines:
            out.append(sse("logs", lines))
            lines = []
        if event.state is not None:
            out.append(sse("state", {"state": event.state.value, "reason": event.reason,
                                     "terminal": event.state.terminal}))
        elif event.message is not None:
            out.append(sse("note", {"text": event.message}))
    if lines:
        out.append(sse("logs", lines))
    return b"".join(out)


class EventStream(StreamingResponse):
    """The SSE answer for one job. Not Starlette's streaming loop: this one batches what has arrived, sends
    keepalives, and ends with the browser or the session."""

    def __init__(self, record: JobRecord, request: Request, sessions: Sessions) -> None:
        super().__init__(iter(()), media_type="text/event-stream",
                         headers={"x-accel-buffering": "no", "cache-control": "no-store"})
        self.record, self.request, self.sessions = record, request, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
        events_in, events_out = trio.open_memory_channel[JobEvent](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, events_in)
            nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
            ended = await self._write(events_out, send)
            last = sse("end", {"state": self.record.state.value}) if ended else sse("signed-out", {})
            await send({"type": "http.response.body", "body": last, "more_body": False})
            nursery.cancel_scope.cancel()

    async def _pump(self, events_in: trio.MemorySendChannel[JobEvent]) -> None:
        # JobRecord.events is an async generator (declared as an iterator): closed here, in this task, however
        # the stream ends, so that its subscription is dropped at once.
        following = cast(AsyncGenerator[JobEvent, None], self.record.events(replay_logs=True))
        async with events_in, aclosing(following) as events:
            async for event in events:
                events_in.send_nowait(event)

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _write(self, events_out: trio.MemoryReceiveChannel[JobEvent], send: Send) -> bool:
        """Send the events as they come; True when the job's events ended, False when the session did."""
        last_check = trio.current_time()
        while True:
            if trio.current_time() - last_check >= SESSION_CHECK_SECONDS:
                last_check = trio.current_time()
                if self.sessions.resolve(self.request) is None:
                    return False
            with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                try:
                    batch = [await events_out.receive()]
                except trio.EndOfChannel:
                    return True
            if idle.cancelled_caught:
                await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(events_out.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            body = encode(batch)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})


class JobEvents(View):
    async def stream(self, request: Request) -> Response:
        signed = self.sessions.require(request)
        job_id = job_id_of(request)
        try:
            if not job_id:
                raise NotFound(job_id)
            record = await self.api.get(job_id, caller=signed.caller)
        except NotFound:
            return PlainTextResponse(f"no job {job_id} (or it is not yours)\n", status_code=404)
        return EventStream(record, request, self.sessions)


__all__ = ["EventStream", "JobEvents", "encode", "sse"]

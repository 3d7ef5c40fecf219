"""``swarm.follow_logs``, and the job's log relay on top of it, against a loopback HTTP server that speaks the
Docker Engine API's followed service log: chunked transfer coding around Docker's multiplexed frames, cut at
arbitrary places. No Docker needed."""

from __future__ import annotations

import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Iterator

import pytest
import trio

from cumulus.actors.log_relay import LogRelay
from cumulus.jobs import JobRecord, JobSpec, TeardownReport
from cumulus.resources.swarm import SwarmClient, follow_logs


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


class EngineLogs(BaseHTTPRequestHandler):
    """``GET /version`` and ``GET /v*/services/<id>/logs``; the log body is ``server.bodies[0]`` (the next one
    for the next request, the last one again once they run out), sent in the HTTP chunks ``server.cuts`` marks (so
    a frame may span chunks and a chunk may hold several frames). ``server.hold_open``: the body is not ended
    (as Docker does not end a followed log)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path.startswith("/version"):
            payload = json.dumps({"ApiVersion": "1.41", "Version": "24.0.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        assert "/services/svc-1/logs?follow=true" in self.path.lower(), self.path
        server = self.server
        body = server.bodies.pop(0) if len(server.bodies) > 1 else server.bodies[0]  # type: ignore[attr-defined]
        cuts = server.cuts  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.raw-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        bounds = sorted({0, len(body), *(c for c in cuts if 0 < c < len(body))})
        for start, end in zip(bounds, bounds[1:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (end - start, body[start:end]))
            self.wfile.flush()
        if server.hold_open:  # type: ignore[attr-defined]
            server.closed.wait(30)  # type: ignore[attr-defined]
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def engine() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EngineLogs)
    server.daemon_threads = True
    server.hold_open, server.closed = False, threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closed.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


async def relayed(server: ThreadingHTTPServer, body: bytes, cuts: list[int]) -> list[tuple[str, str]]:
    server.bodies, server.cuts = [body], cuts  # type: ignore[attr-defined]
    client = SwarmClient(f"tcp://127.0.0.1:{server.server_address[1]}", timeout=10)
    try:
        async with follow_logs(client, "svc-1") as lines:
            return [item async for item in lines]
    finally:
        await client.aclose()


JOB_LOG = (frame(1, b"hello\n") + frame(2, b"warming up\npart") + frame(1, b"world\n") + frame(2, b"ial line\n")
           + frame(3, b"Error grabbing logs: rpc error: node n1 is not available\n") + frame(1, b"no newline"))


@pytest.mark.parametrize("cuts", [[], [1], [3, 9, 10, 11, 40], list(range(0, len(JOB_LOG), 7))])
async def test_frames_become_lines_of_their_stream_and_engine_messages_are_not_the_jobs(engine, cuts):
    lines = await relayed(engine, JOB_LOG, cuts)
    assert lines == [
        ("stdout", "hello"), ("stderr", "warming up"), ("stdout", "world"), ("stderr", "partial line"),
        ("system", "Error grabbing logs: rpc error: node n1 is not available"), ("stdout", "no newline"),
    ]


async def test_an_unknown_frame_kind_is_reported_as_the_engines_not_as_job_output(engine):
    lines = await relayed(engine, frame(1, b"job\n") + frame(7, b"something new\n"), [])
    assert lines == [("stdout", "job"), ("system", "something new")]


async def test_the_relay_follows_a_log_the_engine_could_not_read_again_and_relays_each_line_once(engine):
    """The first follow reads two lines and then the engine's "not available" message, and stays open without
    more (as Docker's does); the second follow has the whole log. The job's lines reach the record once, in
    order; the engine's message is a message of the job."""
    problem = b"Error grabbing logs: rpc error: code = Unknown desc = node n1 is not available"
    whole = (frame(1, b"one\n") + frame(2, b"two\n") + frame(1, b"three\n") + frame(1, b"[cumulus] end of stdout\n")
             + frame(2, b"[cumulus] job finished in 0.1 s\n"))
    unreadable = frame(1, b"one\n") + frame(2, b"two\n") + frame(3, problem + b"\n")
    engine.bodies, engine.cuts, engine.hold_open = [unreadable, whole], [5, 20], True
    client = SwarmClient(f"tcp://127.0.0.1:{engine.server_address[1]}", timeout=10)
    record = JobRecord("job-relay", JobSpec(package=b"zip", gpu=0.5, duration=60))
    record.announce()
    polls = []
    relay = LogRelay(SimpleNamespace(follow_logs=lambda service_id: follow_logs(client, service_id)), record,
                     on_end_of_job=lambda: polls.append(True))
    try:
        with trio.fail_after(20):
            await relay.run("svc-1")
    finally:
        await client.aclose()
    assert relay.done.is_set() and relay.finished.is_set() and polls == [True]
    record.set_torn_down(TeardownReport())  # ends the record's event stream
    events = [event async for event in record.events()]
    logs = [event.log for event in events if event.log is not None]
    assert logs == [("stdout", "one"), ("stderr", "two"), ("stdout", "three"),
                    ("stderr", "[cumulus] job finished in 0.1 s")], logs
    messages = [event.message for event in events if event.message is not None]
    assert messages == [f"log stream: {problem.decode()}; following the log again"], messages


async def test_followed_logs_do_not_take_the_threads_other_docker_calls_need(engine):
    """More followed logs than Trio's default thread limiter allows (40), all open at once: a short Docker call
    still gets a thread at once (the followers have a limiter of their own)."""
    engine.bodies, engine.cuts, engine.hold_open = [frame(1, b"running\n")], [], True
    client = SwarmClient(f"tcp://127.0.0.1:{engine.server_address[1]}", timeout=10)
    default = trio.to_thread.current_default_thread_limiter()
    followers = default.total_tokens + 5
    try:
        async with trio.open_nursery() as nursery:
            started = trio.Semaphore(0)

            async def follow() -> None:
                async with follow_logs(client, "svc-1") as lines:
                    async for _ in lines:
                        started.release()
                        await trio.sleep_forever()

            for _ in range(followers):
                nursery.start_soon(follow)
            with trio.fail_after(30):
                for _ in range(followers):
                    await started.acquire()
                assert default.borrowed_tokens == 0
                assert await trio.to_thread.run_sync(lambda: "a short call") == "a short call"
            nursery.cancel_scope.cancel()
    finally:
        engine.closed.set()
        await client.aclose()

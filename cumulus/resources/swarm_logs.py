"""Following a job service's log: :func:`follow_logs`, which turns Docker's followed service log into
``(stream, line)`` pairs for the Trio side, with backpressure and a prompt stop.

Why it reads the HTTP response itself instead of using docker-py's ``APIClient.service_logs(..., follow=True)``:

* attribution: ``service_logs`` yields only the payload of each multiplexed frame, dropping its stream kind
  (docker-py 7.x has no ``demux`` for service logs; ``docker.utils.socket.demux_adaptor`` knows stdout/stderr
  only and raises on anything else). Cumulus needs stdout vs. stderr per line, and kind 3, the engine's own
  message (e.g. "Error grabbing logs: ... node X is not available"), told apart from the job's output: the log
  relay follows the log again when it sees one.
* cost: docker-py reads a frame at a time through urllib3/http.client, which return at most one HTTP chunk per
  read, and Docker sends one chunk per frame, i.e. per line: several Python calls per log line (see
  ``bench/README.md``, step P4). :class:`_ChunkedBody` reads the connection's buffered socket file a buffer at a
  time and decodes the chunked transfer coding itself; the demultiplexer splits frames out of that buffer.
* stopping: Docker never ends a followed log, so the block's exit shuts the connection's socket down (reached
  through docker-py's ``_get_raw_response_socket``), which wakes the blocked reader thread at once.

It uses docker-py's private request helpers (``_get``, ``_url``, ``_raise_for_status``) so that the connection,
API version and TLS settings stay the client's. ``tests/test_follow_logs.py`` and ``tests/test_chunked_body.py``
pin the behaviour down against a loopback server, with frames and chunks cut anywhere.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import docker.errors
import requests
import trio

from cumulus.resources.swarm_client import SwarmClient, SwarmError

#: A followed log holds a thread for the whole life of its job. Those threads get a limiter of their own, without
#: a bound: under Trio's default one (40 threads, shared) 40 running jobs would take every thread, and every other
#: Docker call (creating a service, polling tasks, removing one) would wait for a job to end.
_LOG_READERS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("cumulus_log_readers")


def _log_readers() -> trio.CapacityLimiter:
    try:
        return _LOG_READERS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(float("inf"))
        _LOG_READERS.set(limiter)
        return limiter

MAX_PENDING_LINES = 10_000  # log lines read but not yet taken by the Trio side: the reader waits beyond this

# Docker's multiplexed stream kinds. Kind 3 ("systemerr") is the engine's own message, e.g. "Error grabbing logs:
# ... node X is not available" when the manager cannot reach the node that holds a task's log: not the job's.
_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "system"}


class _ChunkedBody:
    """The body of a streamed HTTP/1.1 response, read whatever has arrived at a time (``read``; ``b""`` at its
    end). Docker sends a followed log as one HTTP chunk per frame, and urllib3/http.client return at most one
    chunk per read (several Python calls each), which made reading, not relaying, the cost of every log line.
    This reads the connection's buffered socket file (``http.client.HTTPResponse.fp``, untouched by them before
    the first read) and decodes the chunked coding itself, a buffer at a time. A body that is not chunked is
    passed through."""

    def __init__(self, fp: Any, chunked: bool) -> None:
        self._fp = fp
        self._chunked = chunked
        self._buffer = bytearray()
        self._left = 0  # bytes left of the current chunk, its closing CRLF included
        self._ended = False

    @classmethod
    def of(cls, response: requests.Response) -> Callable[[], bytes]:
        """``read`` for ``response`` (a ``requests`` response opened with ``stream=True``, nothing read yet)."""
        inner = getattr(response.raw, "_fp", None)
        fp = getattr(inner, "fp", None)
        if fp is None or not hasattr(fp, "read1"):  # not the http.client we know: read through urllib3
            return lambda: response.raw.read1(65536)
        return cls(fp, bool(getattr(inner, "chunked", False))).read

    def read(self) -> bytes:
        if not self._chunked:
            return self._fp.read1(65536)
        out = bytearray()
        while not out and not self._ended:
            data = self._fp.read1(65536)
            if not data:
                break
            self._buffer += data
            out += self._decode()
        return bytes(out)

    def _decode(self) -> bytearray:
        buffer, out, pos = self._buffer, bytearray(), 0
        while pos < len(buffer):
            if self._left == 0:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break  # the size line has not all arrived
                size = int(bytes(buffer[pos:end]).split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    self._ended = True  # the last chunk (trailers, if any, are not read)
                    break
                self._left = size + 2
                continue
            take = min(self._left, len(buffer) - pos)
            data = min(take, max(self._left - 2, 0))
            out += buffer[pos:pos + data]
            pos += take
            self._left -= take
        del buffer[:pos]
        return out


@asynccontextmanager
async def follow_logs(
    client: SwarmClient, service_id: str, *, close_timeout: float = 5.0, max_line: int = 64 * 1024
) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """Follow a service's logs; yields an async iterator of ``(stream, line)`` (``stream`` is ``"stdout"`` or
    ``"stderr"``, or ``"system"`` for the engine's own message about the stream, such as a node whose log cannot
    be read: lines of the job may be missing then; ``line`` without its newline, decoded as UTF-8 with
    replacement, cut at ``max_line`` chars). Lines arrive while the job runs. The iterator ends if Docker ends the
    stream.

    Docker never ends a followed service log by itself, so leaving the block shuts the HTTP connection's socket
    down, which ends the reader thread promptly; that is shielded and bounded by ``close_timeout`` (after which
    the thread, if still blocked, is abandoned; it can only exit). Raises :class:`SwarmError` if the logs
    cannot be opened (e.g. no such service: ``docker.errors.NotFound`` is turned into ``SwarmError`` too).
    """
    params = {"follow": True, "stdout": True, "stderr": True, "details": False, "timestamps": False, "tail": "all"}

    def _open() -> Any:
        api = client.api
        res = api._get(api._url("/services/{0}/logs", service_id), params=params, stream=True, timeout=None)
        api._raise_for_status(res)
        return res

    try:
        response = await client._call(f"logs of {service_id}", _open, abandon=False)
    except docker.errors.NotFound as exc:
        raise SwarmError(f"logs of {service_id}: {exc}") from exc
    raw_sock = client.api._get_raw_response_socket(response)
    sock = getattr(raw_sock, "_sock", raw_sock)
    # Docker sends a frame per line. The reader thread queues lines and wakes the Trio side only when it is not
    # already awake, so a burst of output crosses threads in a few batches instead of one call per line; it
    # waits (backpressure) while MAX_PENDING_LINES are queued.
    pending: collections.deque[tuple[str, str]] = collections.deque()
    condition = threading.Condition()
    state = {"woken": False, "ended": False, "closed": False}
    arrived = [trio.Event()]  # replaced after each wake-up (Trio events are not reset)
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def _wake() -> None:
        arrived[0].set()

    def _reader() -> None:
        buffers: dict[str, bytes] = {"stdout": b"", "stderr": b"", "system": b""}

        def emit(batch: list[tuple[str, str]]) -> None:
            with condition:
                while len(pending) >= MAX_PENDING_LINES and not state["closed"]:
                    condition.wait(0.5)
                if state["closed"]:
                    raise trio.ClosedResourceError
                pending.extend(batch)
                wake, state["woken"] = not state["woken"], True
            if wake:
                token.run_sync_soon(_wake)

        def decode(data: bytes) -> str:
            return data.decode("utf-8", errors="replace")[:max_line]

        try:
            read_body = _ChunkedBody.of(response)
            pending_bytes = bytearray()
            while True:
                # Whatever has arrived (up to 64 KiB), not one read per frame: Docker frames every line.
                chunk = read_body()
                if not chunk:
                    break
                pending_bytes += chunk
                batch: list[tuple[str, str]] = []
                pos = 0
                while len(pending_bytes) - pos >= 8:
                    kind, length = struct.unpack_from(">BxxxL", pending_bytes, pos)
                    if len(pending_bytes) - pos - 8 < length:
                        break  # the rest of this frame has not arrived yet
                    data = bytes(pending_bytes[pos + 8:pos + 8 + length])
                    pos += 8 + length
                    stream = _STREAMS.get(kind, "system")
                    *lines, rest = (buffers.get(stream, b"") + data).split(b"\n")
                    buffers[stream] = rest
                    batch.extend((stream, decode(line)) for line in lines)
                del pending_bytes[:pos]
                if batch:
                    emit(batch)
            tail = [(stream, decode(rest)) for stream, rest in buffers.items() if rest]
            if tail:
                emit(tail)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError, trio.Cancelled):
            pass
        except Exception:  # noqa: BLE001  (socket shut down under us: that is how we stop)
            pass
        finally:
            with condition:
                state["ended"] = True
            try:
                token.run_sync_soon(_wake)
            except trio.RunFinishedError:
                pass

    async def _run_reader() -> None:
        try:
            await trio.to_thread.run_sync(_reader, abandon_on_cancel=True, limiter=_log_readers())
        finally:
            done.set()

    async def _lines() -> AsyncIterator[tuple[str, str]]:
        while True:
            await arrived[0].wait()
            with condition:
                batch = list(pending)
                pending.clear()
                ended = state["ended"]
                state["woken"] = False
                arrived[0] = trio.Event()
                condition.notify_all()
            for count, item in enumerate(batch, 1):
                yield item
                if count % 256 == 0:
                    await trio.lowlevel.checkpoint()  # a long burst must not hold the whole loop
            if ended:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_reader)
        iterator = _lines()
        try:
            yield iterator
        finally:
            with trio.move_on_after(close_timeout, shield=True):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                with condition:
                    state["closed"] = True
                    condition.notify_all()
                await iterator.aclose()
                await done.wait()
            try:
                response.close()
            except Exception:  # noqa: BLE001
                pass
            nursery.cancel_scope.cancel()


__all__ = ["MAX_PENDING_LINES", "follow_logs"]

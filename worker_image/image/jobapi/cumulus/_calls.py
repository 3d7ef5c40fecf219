"""The transport of the calls a job makes on class instances: the in-job end of the calls link to the supervisor
(the handles are client/remote_class.py's, the CallRef and its outcomes client/callref.py's).

A job has no network and no SDK; it reaches the supervisor only through a Unix socket that the JOB serves and the
supervisor connects to (through SSH, as root). This docstring is the contract the supervisor's side implements.

**The socket.** ``$CUMULUS_OUTPUT_DIR/calls.sock`` (default dir ``/cumulus/output``), a Unix stream socket, mode
0600. It is bound as ``.calls.sock.tmp`` in the same directory, made to listen, then renamed to ``calls.sock``
(so a connect succeeds only once it serves); then the job prints exactly ``[cumulus] calls socket ready``
(:data:`READY_LINE`) on a line of its own to stderr (flushed). The supervisor's log relay sees that line and
connects. The socket is made lazily, the first time the process makes an instance handle
(``cumulus.client.remote_class._restore``, i.e. unpickling a handle, or ``cumulus.instance(job_id)``), once per
process; a socket path over 107 bytes is bound through the directory's descriptor (``/proc/self/fd/N/``), as
runner_instance.py does. If it cannot be made, calls end with ``SupervisorUnavailable`` saying why (the next
handle or call tries again).

**The link.** The job accepts connections in a daemon thread; the newest accepted connection is THE link (an older
one is shut down). Any number of calls may be outstanding. Calls made while no link is up are queued and sent, in
the order made, once one connects. A call sent on a link that breaks (EOF, error, replaced, or a reply frame that
cannot be parsed) before its reply ends with ``SupervisorUnavailable`` ("may or may not have run"); queued calls
not sent yet wait for the next link. Calls are sent in the order they were made (across all handles and threads:
one queue), so the calls one thread makes on one handle arrive in that order.

**Frames**, both ways: a 4-byte big-endian unsigned length, then that many bytes of msgpack (``use_bin_type=True``,
str keys), as runner_instance.py.

- job -> supervisor, a call: ``{"id": int, "job_id": str, "method": str, "args": bin}``, ``args`` =
  ``cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=5)``. Ids are unique in the process, increasing from 1.
- job -> supervisor, a cancel: ``{"cancel": int}``, the id of a call sent before on the same link, its reply not
  received yet (the supervisor withdraws it if it has not run; its reply then says ``"cancelled"``). A call
  cancelled before it was sent is never sent (it ends ``CallCancelled`` in the job).
- supervisor -> job, a reply: ``{"id": int, "end": str, ...}``, once per call, ``end`` one of

  * ``"returned"`` with ``"envelope": bin``: the msgpack bytes of the runner's result envelope, as
    runner_instance.py replies it: ``{"format": 1, "ok": true, "value": <cloudpickle bytes>, "duration_s": ...}``
    -> the value; or ``{"format": 1, "ok": false, "exc_type": str, "exc_message": str, "traceback": str,
    "exc_pickle": bin | None, ...}`` -> the method's exception re-raised (unpickled from ``exc_pickle``, else
    ``RemoteError(exc_type, exc_message, traceback)``), its ``__cause__`` an exception whose text is the
    traceback. An envelope that cannot be read -> ``RemoteError("cumulus.InvalidResult", ...)``.
  * ``"instance_died"`` with ``"message"`` -> ``ActorDied(message)``;
  * ``"cancelled"`` with ``"message"`` -> ``CallCancelled``;
  * ``"refused"`` with ``"message"`` and ``"error"``, a class name of cumulus/errors.py: ``NotFound``,
    ``InvalidRequest``, ``PackageTooLarge``, ``PermissionDenied`` (also ``RequestRejected``, ``ActorDied``,
    ``SupervisorUnavailable``, ``CumulusError``) -> that error with the message; another name -> ``CumulusError``;
  * any other ``end`` -> ``CumulusError`` with the message.

  Other keys are ignored; a reply whose id names no call in flight on this link is ignored. A frame that is not
  msgpack, not a map, or lacks an int ``id`` and a str ``end`` closes the link (a line on stderr).
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import SupervisorUnavailable

if TYPE_CHECKING:
    from .client.callref import CallRef

SOCKET_NAME = "calls.sock"
SOCKET_TMP = ".calls.sock.tmp"
READY_LINE = "[cumulus] calls socket ready"
OUTPUT_DIR_ENV = "CUMULUS_OUTPUT_DIR"
DEFAULT_OUTPUT_DIR = "/cumulus/output"
HEADER = struct.Struct(">I")

__all__ = ["READY_LINE", "cancel", "ensure_listening", "submit"]


def _log(msg: str) -> None:
    print(f"[cumulus] calls: {msg}", file=sys.stderr, flush=True)


def _pack(msg: dict[str, Any]) -> bytes:
    import msgpack  # the runner's (lib/): imported on the first call, so ``import cumulus`` stays the stdlib

    packed: bytes = msgpack.packb(msg, use_bin_type=True)
    return packed


def _parse(body: bytes) -> dict[str, Any]:
    import msgpack

    try:
        msg = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # noqa: BLE001 - any decoding error: the frame is bad
        raise ValueError(f"not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(msg, dict):
        raise ValueError(f"not a map but {type(msg).__name__}")
    if type(msg.get("id")) is not int or not isinstance(msg.get("end"), str):
        raise ValueError("no int 'id' and str 'end'")
    return msg


class _Link:
    """One accepted connection. Only the writer thread sends (under ``send_lock``); only its reader thread closes
    the descriptor (under ``send_lock``, after a shutdown), so a number reused by a new socket is never written."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock, self.number = sock, number
        self.send_lock = threading.Lock()
        self.closed = False
        self.dropped = False


class _Hub:
    """The process's calls link: the listener, the queue of frames to send, the calls in flight."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.start_lock = threading.Lock()
        self.started = False
        self.failure = ""  # why the socket could not be made, until it is
        self.next_id = 0
        self.outbox: collections.deque[tuple[str, CallRef[Any]]] = collections.deque()  # ("call" | "cancel", ref)
        self.pending: dict[int, CallRef[Any]] = {}  # call id -> a call sent on a link, its reply not received
        self.link: _Link | None = None

    # ---- the socket

    def ensure_listening(self) -> None:
        with self.start_lock:
            if self.started:
                return
            try:
                listener = self._listen()
            except OSError as exc:
                self.failure = f"cannot serve the calls socket in {_output_dir()}: {exc}"
                return
            self.started, self.failure = True, ""
            threading.Thread(target=self._accept, args=(listener,), name="cumulus-calls-accept", daemon=True).start()
            threading.Thread(target=self._write, name="cumulus-calls-writer", daemon=True).start()
            print(READY_LINE, file=sys.stderr, flush=True)

    def _listen(self) -> socket.socket:
        out_dir = _output_dir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dirfd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SOCKET_TMP, dir_fd=dirfd)
            tmp = os.path.join(out_dir, SOCKET_TMP)
            where = tmp if len(os.fsencode(tmp)) < 100 else f"/proc/self/fd/{dirfd}/{SOCKET_TMP}"
            listener.bind(where)
            os.chmod(SOCKET_TMP, 0o600, dir_fd=dirfd)
            listener.listen(16)
            os.rename(SOCKET_TMP, SOCKET_NAME, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # connectable only now
        except OSError:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(SOCKET_TMP, dir_fd=dirfd)
            raise
        finally:
            os.close(dirfd)
        return listener

    def _accept(self, listener: socket.socket) -> None:
        number = 0
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:  # e.g. out of descriptors: not the end
                _log(f"accept failed ({exc}); retrying")
                time.sleep(0.5)
                continue
            number += 1
            link = _Link(sock, number)
            with self.cond:
                old, self.link = self.link, link
                self.cond.notify_all()
            if old is not None:
                self._drop(old, "the link to the supervisor was replaced by a new one")
            threading.Thread(target=self._read, args=(link,), name=f"cumulus-calls-link-{number}",
                             daemon=True).start()

    # ---- calls

    def submit(self, ref: CallRef[Any], frame: dict[str, Any]) -> None:
        """Queue the call ``ref`` (its ``call_id`` set here) with ``frame`` (the call frame without its id)."""
        self.ensure_listening()
        with self.cond:
            self.next_id += 1
            ref.call_id = frame["id"] = self.next_id
            if not self.started:
                ref._end(error=SupervisorUnavailable(f"call {ref.method}() on instance {ref.job_id} was not sent: "
                                                     f"{self.failure}"))
                return
            ref._frame = _pack(frame)
            self.outbox.append(("call", ref))
            self.cond.notify_all()

    def cancel(self, ref: CallRef[Any], error: BaseException) -> bool:
        """Withdraw ``ref``: ends it with ``error`` if not sent yet, else queues a cancel frame. False if it ended."""
        with self.cond:
            if ref.done():
                return False
            if ("call", ref) in self.outbox:
                self.outbox.remove(("call", ref))
                ref._end(error=error)
                return True
            self.outbox.append(("cancel", ref))
            self.cond.notify_all()
            return True

    def _write(self) -> None:
        while True:
            with self.cond:
                while not (self.outbox and self.link is not None):
                    self.cond.wait()
                kind, ref = self.outbox.popleft()
                link = self.link
                if kind == "call":
                    assert ref._frame is not None  # queued with its frame, sent once
                    ref._link, frame, ref._frame = link, ref._frame, None
                    self.pending[ref.call_id] = ref
                elif self.pending.get(ref.call_id) is ref and ref._link is link:
                    frame = _pack({"cancel": ref.call_id})
                else:  # its link broke since: the call ended SupervisorUnavailable
                    continue
            try:
                with link.send_lock:
                    if link.closed:
                        raise OSError("closed")
                    link.sock.sendall(HEADER.pack(len(frame)))
                    link.sock.sendall(frame)
            except OSError as exc:
                self._drop(link, f"the link to the supervisor broke ({exc})")

    def _read(self, link: _Link) -> None:
        why = "the link to the supervisor closed"
        try:
            while True:
                header = _recv_exactly(link.sock, HEADER.size)
                if header is None:
                    break
                body = _recv_exactly(link.sock, HEADER.unpack(header)[0])
                if body is None:
                    break
                try:
                    msg = _parse(body)
                except ValueError as exc:
                    why = f"the supervisor sent a frame that cannot be read ({exc})"
                    _log(f"{why}; closing the link")
                    break
                with self.cond:
                    ref = self.pending.get(msg["id"])
                    if ref is None or ref._link is not link:
                        continue
                    del self.pending[msg["id"]]
                ref._end(reply=msg)
        except OSError as exc:
            why = f"the link to the supervisor broke ({exc})"
        finally:
            self._drop(link, why)
            with link.send_lock:
                link.closed = True
                link.sock.close()

    def _drop(self, link: _Link, why: str) -> None:
        """End the link: the calls sent on it and not answered fail with SupervisorUnavailable."""
        with self.cond:
            if link.dropped:
                return
            link.dropped = True
            if self.link is link:
                self.link = None
            lost = [ref for ref in self.pending.values() if ref._link is link]
            for ref in lost:
                del self.pending[ref.call_id]
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_RDWR)
        for ref in lost:
            ref._end(error=SupervisorUnavailable(
                f"call {ref.method}() (#{ref.call_id}) on instance {ref.job_id}: {why} before its reply; "
                f"it may or may not have run"))


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or None at EOF (a frame cut short included)."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _output_dir() -> str:
    return os.environ.get(OUTPUT_DIR_ENV) or DEFAULT_OUTPUT_DIR


_HUB = _Hub()
ensure_listening = _HUB.ensure_listening  # serve the calls socket: once per process (a failure is retried)
submit = _HUB.submit  # queue a call
cancel = _HUB.cancel  # withdraw a call

"""The runner's half of stateful remote classes: /opt/cumulus/runner_instance.py in the worker image, next to
runner.py (standalone like it: the stdlib, cloudpickle and msgpack; nothing from ``cumulus``).

A job whose manifest says ``"instance": true`` holds a class in call.pkl (``(cls, args, kwargs)``). runner.py does
everything it does for a function job, constructs ``cls(*args, **kwargs)`` as it calls a function (a constructor
that raises is a job that raised: exit 1 and its failure envelope), then hands the instance to :func:`serve_instance`,
which serves its methods until the process is stopped. This docstring is the contract the supervisor's side
implements.

**The socket.** ``$CUMULUS_OUTPUT_DIR/instance.sock``, a Unix stream socket. It is bound as ``.instance.sock.tmp``
in the same directory, made to listen, then renamed, so a connect succeeds only once the instance exists; the
runner then logs ``[cumulus] instance ready (<class qualname>) in X.XX s`` to stderr. Any number of connections may
be open at once (e.g. again after a supervisor restart); they share the one instance. A socket path over 107 bytes
is bound through the output dir's descriptor (``/proc/self/fd/N/``); a client with such a path does the same.

**Frames**, both ways: a 4-byte big-endian unsigned length, then that many bytes of msgpack (``use_bin_type=True``,
str keys).

- request: ``{"id": int, "method": str, "args": bin}``, ``args`` the cloudpickle of ``(args_tuple, kwargs_dict)``.
  Other keys are ignored. A frame over ``MAX_PACKAGE_BYTES`` (runner_package.py: the package limit), one that is not
  msgpack, not a map, or lacks an int ``id`` or the ``method`` or ``args`` key closes that connection (a line on
  stderr), not the others; requests it sent before are still run, their replies dropped.
- reply: ``{"id": <the request's id>, "envelope": bin}``, ``envelope`` the msgpack bytes of exactly the runner's
  result envelope (docs/job-format.md): ``{"format": 1, "ok": true, "value": <cloudpickle of the return value>,
  "duration_s": ...}`` or a failure ``{"format": 1, "ok": false, "exc_type", "exc_message", "traceback",
  "exc_pickle", "duration_s"}``; ``duration_s`` is the call's own time here (from taking the request to its
  envelope). ``cumulus.client.results.decode_result`` reads it as it reads result.msgpack.

**Calls** run one at a time, in the runner's main thread (GPU libraries care which thread), in the order their
frames arrived (first in, first out across all connections; on one connection, the order sent). Each reply goes to
the connection its request came on; a connection that is gone loses only its own replies. Failures, each a failure
envelope, after which the instance serves on: a method name that is not a str, starts with ``_``, or names nothing
callable (``builtins.AttributeError``, "Counter has no public method 'foo'"); arguments that cannot be loaded (that
exception); the method raising (its exception and traceback, without the runner's frame); a return value that
cannot be pickled (``cumulus.UnpicklableResult``); an envelope over ``CUMULUS_MAX_RESULT_BYTES`` (default 256 MiB,
cumulus.actors.result_fetch.MAX_RESULT_BYTES: the most the supervisor delivers) is replaced by a
``cumulus.ResultTooLarge`` failure naming both sizes. Nothing is printed to stdout per call (a method's traceback
goes to stderr, as a function job's; the methods' own prints are the job's log, as usual).

**The end.** SIGTERM (Docker's stop) or SIGINT: no more connections are accepted, nothing more is run (a running
method is interrupted), the socket file is removed, the connections are shut down, and the runner ends as a
finished job: exit 0 and an ok envelope whose value is None. A method that ends the process (``os._exit``, a crash)
and the partition lease's watchdog (SIGKILL of the runner's process group) just end it, with no envelope; the
socket file then stays, and a connect to it is refused.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable

import cloudpickle
import msgpack

from runner_package import FORMAT, MAX_PACKAGE_BYTES, InfraFailure

SOCKET_NAME = "instance.sock"
SOCKET_TMP = ".instance.sock.tmp"
HEADER = struct.Struct(">I")
MAX_RESULT_BYTES = 256 * 1024 * 1024  # cumulus.actors.result_fetch.MAX_RESULT_BYTES (the supervisor's limit)
# At most what a 4-byte frame length can say, with room for the reply map around the envelope.
RESULT_LIMIT = min(int(os.environ.get("CUMULUS_MAX_RESULT_BYTES") or MAX_RESULT_BYTES), 2**32 - 1 - 1024)
# A client that reads none of its replies for this long is dropped: the one thread that runs calls would wait on it.
SEND_STALL_S = 60
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log(msg: str) -> None:
    print(f"[cumulus] {msg}", file=sys.stderr, flush=True)


class _Stopped(BaseException):
    """Raised in the main thread by the stop signal's handler (BaseException: a method's ``except Exception``
    does not swallow it)."""


class _Connection:
    """One client's socket, the lock its replies are written under, and how many of its requests wait. Only its
    reader thread's end closes the descriptor (a close while the reader is in recv() could let a new connection
    reuse the number); anyone may shut it down."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock, self.number = sock, number
        self.lock = threading.Lock()
        self.pending = 0
        self.reading = True
        self.closed = False

    def _shut_locked(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _close_if_done_locked(self) -> None:
        if not self.reading and (self.closed or self.pending == 0):
            self.closed = True
            self.sock.close()

    def queued(self) -> None:
        with self.lock:
            self.pending += 1

    def reply(self, frame: bytes) -> None:
        with self.lock:
            self.pending -= 1
            if not self.closed:
                try:
                    self.sock.sendall(HEADER.pack(len(frame)))
                    self.sock.sendall(frame)
                except OSError:  # gone, or stalled past SEND_STALL_S: its own replies are lost, no one else's
                    self._shut_locked()
            self._close_if_done_locked()

    def end_reading(self, drop: bool) -> None:
        """The reader is done: at its end of input (replies still owed are sent, then it closes), or ``drop``."""
        with self.lock:
            self.reading = False
            if drop:
                self._shut_locked()
            self._close_if_done_locked()

    def shut(self) -> None:
        if self.lock.acquire(timeout=1.0):  # never wait on a stuck writer while stopping
            try:
                self._shut_locked()
            finally:
                self.lock.release()


def _recv_exact(sock: socket.socket, size: int) -> bytearray | None:
    """``size`` bytes, or None when the connection ends first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buf


def _parse(body: bytearray) -> dict | str:
    """The request, or why the frame is not one."""
    try:
        request = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the same problem
        return f"a frame that is not msgpack ({type(exc).__name__})"
    if not isinstance(request, dict) or not {"id", "method", "args"} <= request.keys():
        return "a frame that is not a request map (id, method, args)"
    if not isinstance(request["id"], int) or isinstance(request["id"], bool):
        return "a request whose id is not an integer"
    return request


def _read(conn: _Connection, requests: queue.Queue) -> None:
    """A connection's reader thread: its requests, in order, onto the one queue the main thread runs."""
    why = None
    try:
        while True:
            head = _recv_exact(conn.sock, HEADER.size)
            if head is None:
                break
            (size,) = HEADER.unpack(head)
            if size > MAX_PACKAGE_BYTES:
                why = f"a request of {size} bytes, over the limit of {MAX_PACKAGE_BYTES}"
                break
            body = _recv_exact(conn.sock, size)
            if body is None:
                break
            request = _parse(body)
            if isinstance(request, str):
                why = request
                break
            conn.queued()
            requests.put((conn, request))
    except OSError:
        pass
    if why:
        log(f"instance: closing connection {conn.number}: {why}")
    conn.end_reading(drop=why is not None)


class _Server:
    """The instance, its socket, its connections and the one queue of their requests, run by the main thread."""

    def __init__(self, obj: Any, out_dir: str, envelopes: tuple[Callable, Callable, Callable]) -> None:
        self.obj = obj
        self.cls = type(obj).__qualname__
        self.failure, self.pickle_exception, self.type_name = envelopes
        self.path = os.path.join(out_dir, SOCKET_NAME)
        self.tmp = os.path.join(out_dir, SOCKET_TMP)
        self.requests: queue.Queue = queue.Queue()
        self.connections: set[_Connection] = set()
        self.conn_lock = threading.Lock()
        self.stopping = False
        self.stopped_by = ""  # the signal's name
        self.calls = 0
        self.listener: socket.socket | None = None

    # ---- the socket

    def listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dirfd = os.open(os.path.dirname(self.tmp), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(FileNotFoundError):  # a previous runner's (the rename replaces its instance.sock)
                os.unlink(SOCKET_TMP, dir_fd=dirfd)
            # A socket's path is at most 107 bytes; a longer output dir is reached through its descriptor.
            where = self.tmp if len(os.fsencode(self.tmp)) < 100 else f"/proc/self/fd/{dirfd}/{SOCKET_TMP}"
            listener.bind(where)
            listener.listen(64)
            os.rename(SOCKET_TMP, SOCKET_NAME, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # ready only now
        except OSError as exc:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(SOCKET_TMP, dir_fd=dirfd)
            raise InfraFailure("cumulus.InstanceSocketFailed", f"cannot serve the instance on {self.path}: "
                                                               f"{exc}") from None
        finally:
            os.close(dirfd)
        self.listener = listener
        threading.Thread(target=self.accept, args=(listener,), name="cumulus-instance-accept", daemon=True).start()

    def accept(self, listener: socket.socket) -> None:
        number = 0
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self.stopping:  # shut down by close()
                    break
                log(f"instance: accept failed ({exc}); retrying")  # e.g. out of descriptors: not the end
                time.sleep(0.5)
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_STALL_S, 0))
            except (OSError, struct.error):  # no stall limit then, still served
                pass
            number += 1
            conn = _Connection(sock, number)
            with self.conn_lock:
                if self.stopping:
                    sock.close()
                    break
                self.connections.add(conn)
            threading.Thread(target=self.read, args=(conn,), name=f"cumulus-instance-conn-{number}",
                             daemon=True).start()
        listener.close()

    def read(self, conn: _Connection) -> None:
        _read(conn, self.requests)
        with self.conn_lock:
            self.connections.discard(conn)

    def close(self) -> None:
        """No more connections (the file first: no one can connect once it is gone), then shut down the open ones."""
        with self.conn_lock:
            self.stopping = True
            connections = list(self.connections)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (the acceptor closes it)
        for conn in connections:
            conn.shut()

    # ---- the calls

    def no_method(self, name: object) -> dict:
        what = f"{name!r}" if isinstance(name, str) else f"named by a {type(name).__name__} ({name!r:.60})"
        exc = AttributeError(f"{self.cls} has no public method {what}")
        return self.failure("builtins.AttributeError", str(exc), "", self.pickle_exception(exc))

    def raised(self, exc: BaseException, message: str = "") -> dict:
        tb_obj = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop the runner's frame
        tb = "".join(traceback.format_exception(type(exc), exc, tb_obj))
        sys.stderr.write(tb)
        return self.failure(self.type_name(type(exc)), message or str(exc), tb, self.pickle_exception(exc))

    def call(self, request: dict) -> dict:
        name = request["method"]
        if not isinstance(name, str) or name.startswith("_"):
            return self.no_method(name)
        try:
            method = getattr(self.obj, name)
        except AttributeError:
            return self.no_method(name)
        except _Stopped:
            raise
        except BaseException as exc:  # noqa: BLE001 - a property of the job's class raised
            return self.raised(exc)
        if not callable(method):
            return self.no_method(name)
        try:
            args, kwargs = _load_args(request["args"])
        except _Stopped:
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. a module the arguments need is missing here
            return self.raised(exc, f"while loading the arguments of {self.cls}.{name}: {exc}")
        try:
            value = method(*args, **kwargs)
        except _Stopped:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a method is that call's failure too
            return self.raised(exc)
        try:
            return {"format": FORMAT, "ok": True, "value": cloudpickle.dumps(value, protocol=5)}
        except _Stopped:
            raise
        except BaseException as exc:  # noqa: BLE001
            msg = (f"the return value of {self.cls}.{name} (a {self.type_name(type(value))}) cannot be pickled: "
                   f"{type(exc).__name__}: {exc}; return plain data instead")
            log(msg)
            return self.failure("cumulus.UnpicklableResult", msg, traceback.format_exc())

    def reply_frame(self, request: dict, envelope: dict, t0: float) -> bytes:
        value = envelope.get("value")
        size = len(value) if isinstance(value, bytes) else 0
        data = None
        if size <= RESULT_LIMIT:  # else not even packed: msgpack refuses a value of 4 GiB or more
            envelope["duration_s"] = round(time.monotonic() - t0, 6)
            data = msgpack.packb(envelope, use_bin_type=True)
            size = len(data)
        if data is None or size > RESULT_LIMIT:
            msg = (f"the result of {self.cls}.{request['method']} is {size} bytes, over the limit of {RESULT_LIMIT} "
                   f"bytes that can be delivered; return less, e.g. write large outputs to storage and return "
                   f"where they are")
            log(msg)
            envelope = self.failure("cumulus.ResultTooLarge", msg)
            envelope["duration_s"] = round(time.monotonic() - t0, 6)
            data = msgpack.packb(envelope, use_bin_type=True)
        return msgpack.packb({"id": request["id"], "envelope": data}, use_bin_type=True)

    def run(self) -> None:
        while not self.stopping:
            conn, request = self.requests.get()
            t0 = time.monotonic()
            envelope = self.call(request)
            self.calls += 1
            if self.stopping:  # the method swallowed the stop: nothing more, not even its reply
                break
            conn.reply(self.reply_frame(request, envelope, t0))


def _load_args(data: object) -> tuple[tuple, dict]:
    if not isinstance(data, bytes):
        raise TypeError(f"the request's args must be bytes (cloudpickle of (args, kwargs)), not {type(data).__name__}")
    loaded = cloudpickle.loads(data)
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2 and isinstance(loaded[0], (tuple, list))
            and isinstance(loaded[1], dict) and all(isinstance(k, str) for k in loaded[1])):
        raise TypeError(f"the request's args must be the cloudpickle of (args tuple, kwargs dict), "
                        f"not of a {type(loaded).__name__}")
    return tuple(loaded[0]), loaded[1]


def serve_instance(obj: Any, out_dir: str, *, started: float, failure: Callable, pickle_exception: Callable,
                   type_name: Callable) -> tuple[int, dict]:
    """Serve ``obj``'s methods on ``<out_dir>/instance.sock`` until SIGTERM or SIGINT; then ``(0, an ok envelope
    whose value is None)``. ``failure``, ``pickle_exception`` and ``type_name`` are runner.py's (the envelope's one
    definition). InfraFailure when the socket cannot be made."""
    server = _Server(obj, out_dir, (failure, pickle_exception, type_name))

    def stop(signum: int, frame: object) -> None:
        if not server.stopping:  # once: the runner's own end (envelope, markers) is not interrupted again
            server.stopping = True
            server.stopped_by = signal.Signals(signum).name
            raise _Stopped

    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, stop)
        server.listen()
        log(f"instance ready ({server.cls}) in {time.monotonic() - started:.2f} s")
        server.run()
    except _Stopped:
        pass
    finally:
        server.stopping = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    log(f"instance stopped ({server.stopped_by}) after {server.calls} call(s)")
    return 0, {"format": FORMAT, "ok": True, "value": cloudpickle.dumps(None, protocol=5)}

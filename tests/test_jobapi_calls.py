"""Class-instance handles used inside a job (worker_image/image/jobapi/cumulus: client/, _calls.py, errors.py).

Each test starts a real child process whose ``cumulus`` is the in-job shim (the jobapi dir first on sys.path, as
the runner puts it; the SDK is not importable there). The child unpickles a handle that the real SDK pickled here,
makes calls and prints their outcomes as JSON lines. The test plays the supervisor on the real Unix socket the
child serves: it waits for the ready line on the child's stderr, connects to ``calls.sock``, reads the call frames
and answers them (the frames of the contract in ``_calls.py``'s docstring).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import msgpack
import pytest

import cumulus
import cumulus.errors
from cumulus.client.remote_class import InstanceHandle

JOBAPI = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "jobapi"
READY = "[cumulus] calls socket ready"
WAIT_S = 10

# The child's first lines: the shim first on sys.path, the handle from the file the test wrote, helpers.
PRELUDE = """
import sys, json, base64
sys.path.insert(0, sys.argv[1])
import cloudpickle, cumulus
assert cumulus.__file__.startswith(sys.argv[1]), cumulus.__file__
h = cloudpickle.loads(open(sys.argv[2], "rb").read())
assert type(h).__module__ == "cumulus.client.remote_class", type(h)
assert sys.modules[type(h).__module__].__file__.startswith(sys.argv[1])

def out(**kw):
    print(json.dumps(kw), flush=True)

def outcome(fn):
    try:
        return {"value": fn()}
    except Exception as e:  # the call's outcome, reported to the test
        return {"exc": type(e).__module__ + "." + type(e).__qualname__, "msg": str(e),
                "cause": None if e.__cause__ is None else str(e.__cause__)}

def go():  # wait for the test's go-ahead
    assert sys.stdin.readline().strip() == "go"
"""


class Child:
    """The job: a child process running PRELUDE + script; its stdout lines (JSON) and stderr lines in queues."""

    def __init__(self, tmp_path: Path, script: str, handle: Any, output_dir: bool = True) -> None:
        self.out_dir = tmp_path / "output"
        if output_dir:  # else the socket cannot be made
            self.out_dir.mkdir()
        pkl = tmp_path / "handle.pkl"
        pkl.write_bytes(cloudpickle.dumps(handle))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
        env["CUMULUS_OUTPUT_DIR"] = str(self.out_dir)
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", PRELUDE + script, str(JOBAPI), str(pkl)],
                                     cwd=tmp_path, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self.err_closed = threading.Event()
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.put(line)
        self.stdout.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.rstrip("\n") == READY:
                self.ready.set()
        self.err_closed.set()

    def line(self) -> dict[str, Any]:
        try:
            text = self.stdout.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no output from the child; stderr:\n{''.join(self.stderr)}") from None
        assert text is not None, f"the child ended; stderr:\n{''.join(self.stderr)}"
        return json.loads(text)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def connect(self) -> Supervisor:
        for _ in range(WAIT_S * 20):  # the ready line, unless the child ended first
            if self.ready.wait(0.05) or self.err_closed.is_set():
                break
        assert self.ready.is_set(), f"no ready line; stderr:\n{''.join(self.stderr)}"
        return Supervisor(self.out_dir / "calls.sock")

    def finish(self) -> None:
        assert self.proc.wait(WAIT_S) == 0, "".join(self.stderr)


class Supervisor:
    """The supervisor's end of the calls link."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(str(path))

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the job closed the link"
            data += chunk
        return data

    def read(self) -> dict[str, Any]:
        (n,) = struct.unpack(">I", self._exactly(4))
        return msgpack.unpackb(self._exactly(n), raw=False)

    def read_call(self, method: str) -> dict[str, Any]:
        frame = self.read()
        assert frame["job_id"] == "job-abc" and frame["method"] == method, frame
        assert set(frame) == {"id", "job_id", "method", "args"}
        return frame

    def send_raw(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(msgpack.packb(msg, use_bin_type=True))

    def returned(self, call_id: int, value: Any) -> None:
        envelope = {"format": 1, "ok": True, "value": cloudpickle.dumps(value), "duration_s": 0.01}
        self.send({"id": call_id, "end": "returned", "envelope": msgpack.packb(envelope, use_bin_type=True)})

    def raised(self, call_id: int, exc: BaseException, exc_type: str, pickled: bool = True) -> None:
        tb = "".join(traceback.format_exception(exc))
        envelope = {"format": 1, "ok": False, "exc_type": exc_type, "exc_message": str(exc), "traceback": tb,
                    "exc_pickle": cloudpickle.dumps(exc) if pickled else None, "duration_s": 0.01}
        self.send({"id": call_id, "end": "returned", "envelope": msgpack.packb(envelope, use_bin_type=True)})

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def job(tmp_path):
    children: list[Child] = []

    def start(script: str, handle: Any = None, output_dir: bool = True) -> Child:
        child = Child(tmp_path, script, cumulus.instance("job-abc") if handle is None else handle, output_dir)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()


def test_a_value_returned_and_the_socket_made_as_the_contract_says(job):
    child = job("out(**outcome(lambda: h.incr.remote(5, by=2).result()))\n")
    sup = child.connect()
    frame = sup.read_call("incr")
    assert frame["id"] == 1 and cloudpickle.loads(frame["args"]) == ((5,), {"by": 2})
    sup.returned(1, {"n": 7})
    assert child.line() == {"value": {"n": 7}}
    child.finish()
    assert READY + "\n" in child.stderr
    assert sorted(os.listdir(child.out_dir)) == ["calls.sock"]  # renamed from .calls.sock.tmp
    assert (child.out_dir / "calls.sock").stat().st_mode & 0o777 == 0o600


def test_the_methods_exception_is_raised_again_with_the_remote_traceback_as_cause(job):
    child = job("out(**outcome(lambda: h.parse.remote('x').result()))\n"
                "out(**outcome(lambda: h.parse.remote('y').result()))\n")
    sup = child.connect()
    try:
        raise ValueError("bad number: 'x'")
    except ValueError as exc:
        error = exc
    sup.raised(sup.read_call("parse")["id"], error, "builtins.ValueError")
    got = child.line()
    assert got["exc"] == "builtins.ValueError" and got["msg"] == "bad number: 'x'"
    assert "Traceback (most recent call last)" in got["cause"] and "ValueError: bad number: 'x'" in got["cause"]
    sup.raised(sup.read_call("parse")["id"], error, "mylib.Weird", pickled=False)  # no exc_pickle: RemoteError
    got = child.line()
    assert got["exc"] == "cumulus.errors.RemoteError" and got["msg"] == "mylib.Weird: bad number: 'x'"
    assert "Traceback (most recent call last)" in got["cause"]
    child.finish()


def test_instance_died_refused_and_unknown_ends(job):
    script = """
def ended(ref):
    try:
        ref.result()
    except cumulus.ActorDied as e:
        return {"caught": "ActorDied", "msg": str(e), "actor": e.actor}
    except cumulus.errors.NotFound as e:
        return {"caught": "NotFound", "msg": str(e)}
    except cumulus.errors.InvalidRequest as e:
        return {"caught": type(e).__name__, "msg": str(e)}
    except cumulus.errors.CumulusError as e:
        return {"caught": "CumulusError " + type(e).__name__, "msg": str(e)}
refs = [h.incr.remote() for _ in range(5)]
for ref in refs:
    out(**ended(ref))
"""
    child = job(script)
    sup = child.connect()
    ids = [sup.read_call("incr")["id"] for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    sup.send({"id": 1, "end": "instance_died", "message": "instance job-abc was cancelled"})
    sup.send({"id": 2, "end": "refused", "error": "NotFound", "message": "no instance job-abc"})
    sup.send({"id": 3, "end": "refused", "error": "PackageTooLarge", "message": "arguments too large"})
    sup.send({"id": 4, "end": "refused", "error": "Strange", "message": "odd"})
    sup.send({"id": 5, "end": "exploded", "message": "what"})
    assert child.line() == {"caught": "ActorDied", "msg": "instance job-abc was cancelled", "actor": "job-abc"}
    assert child.line() == {"caught": "NotFound", "msg": "no instance job-abc"}
    assert child.line() == {"caught": "PackageTooLarge", "msg": "arguments too large"}
    assert child.line() == {"caught": "CumulusError CumulusError", "msg": "odd"}
    got = child.line()
    assert got["caught"] == "CumulusError CumulusError" and "'exploded'" in got["msg"] and "what" in got["msg"]
    child.finish()


def test_cancel_sends_a_cancel_frame_and_the_cancelled_reply_raises_call_cancelled(job):
    script = """
ref = h.slow.remote()
go()
out(cancelled=ref.cancel())
try:
    ref.result()
except cumulus.CallCancelled as e:
    out(caught=type(e).__name__, msg=str(e), call_id=e.call_id, method=e.method)
out(again=ref.cancel())
"""
    child = job(script)
    sup = child.connect()
    assert sup.read_call("slow")["id"] == 1
    child.go()
    assert child.line() == {"cancelled": True}
    assert sup.read() == {"cancel": 1}
    sup.send({"id": 1, "end": "cancelled", "message": "withdrawn before it ran"})
    got = child.line()
    assert got == {"caught": "CallCancelled", "call_id": 1, "method": "slow",
                   "msg": "call slow() (#1) on instance job-abc was cancelled: withdrawn before it ran"}
    assert child.line() == {"again": False}  # ended: nothing more is sent
    child.finish()


def test_result_timeout_raises_timeout_error_and_the_call_goes_on(job):
    script = """
ref = h.slow.remote()
out(**outcome(lambda: ref.result(timeout=0.2)), done=ref.done())
h2 = h.options(timeout=0.1)
out(**outcome(lambda: h2.slow.remote().result()))
go()
out(**outcome(lambda: ref.result()), done=ref.done())
"""
    child = job(script)
    sup = child.connect()
    assert sup.read_call("slow")["id"] == 1
    got = child.line()
    assert got["exc"] == "builtins.TimeoutError" and "goes on" in got["msg"] and got["done"] is False
    assert child.line()["exc"] == "builtins.TimeoutError"  # the handle's default timeout
    assert sup.read_call("slow")["id"] == 2
    sup.returned(1, "late")
    child.go()
    assert child.line() == {"value": "late", "done": True}
    child.finish()


def test_calls_made_before_the_supervisor_connects_are_sent_in_order_once_it_does(job):
    script = """
refs = [h.a.remote(1), h.b.remote(2), h.c.remote(3)]
out(made=True)
out(value=cumulus.get(refs))
"""
    child = job(script)
    assert child.line() == {"made": True}  # nothing connected yet
    sup = child.connect()
    frames = [sup.read() for _ in range(3)]
    assert [(f["id"], f["method"], cloudpickle.loads(f["args"])) for f in frames] == [
        (1, "a", ((1,), {})), (2, "b", ((2,), {})), (3, "c", ((3,), {}))]
    for call_id in (3, 1, 2):  # replies in any order: cumulus.get lists the values in the refs' order
        sup.returned(call_id, call_id * 10)
    assert child.line() == {"value": [10, 20, 30]}
    child.finish()


def test_a_lost_link_fails_the_calls_in_flight_and_a_new_link_serves_the_next(job):
    script = """
refs = [h.a.remote(), h.b.remote()]
for ref in refs:
    out(**outcome(ref.result))
go()
out(**outcome(lambda: h.c.remote().result()))
ref = h.d.remote()
out(**outcome(ref.result))
"""
    child = job(script)
    sup = child.connect()
    assert [sup.read()["id"], sup.read()["id"]] == [1, 2]
    sup.close()  # the supervisor restarts
    for _ in range(2):
        got = child.line()
        assert got["exc"] == "cumulus.errors.SupervisorUnavailable" and "may or may not have run" in got["msg"]
    sup = Supervisor(child.out_dir / "calls.sock")
    child.go()
    frame = sup.read_call("c")
    assert frame["id"] == 3
    sup.returned(3, "served")
    assert child.line() == {"value": "served"}
    assert sup.read_call("d")["id"] == 4
    sup.send_raw(msgpack.packb([4, "returned"]))  # not a map: the link is closed, the call in flight fails
    got = child.line()
    assert got["exc"] == "cumulus.errors.SupervisorUnavailable" and "cannot be read" in got["msg"]
    child.finish()


def test_a_handle_pickles_again_to_the_same_restore_form_and_errors_leave_as_the_sdks(job):
    sdk_handle = InstanceHandle("job-abc", address="sup.example:7070", class_name="Counter",
                                methods=frozenset({"incr", "get"}), timeout=30.0)
    script = """
from cumulus.errors import ActorDied, CallCancelled
h2 = h.options(timeout=5)
data = [cloudpickle.dumps(x) for x in (h, h2, ActorDied("instance job-abc is gone", actor="job-abc"),
                                        CallCancelled("call x() was cancelled", job_id="job-abc", method="x", call_id=3))]
out(pickles=[base64.b64encode(d).decode() for d in data], reprs=[repr(h), h.job_id])
"""
    child = job(script, sdk_handle)
    got = child.line()
    handle, handle2, died, cancelled = (cloudpickle.loads(__import__("base64").b64decode(p)) for p in got["pickles"])
    assert type(handle) is InstanceHandle and handle.__reduce__() == sdk_handle.__reduce__()
    assert handle2.__reduce__()[1] == ("job-abc", "sup.example:7070", {"timeout": 5.0}, "Counter", ["get", "incr"])
    assert got["reprs"] == ["<Counter instance job-abc (called from this job)>", "job-abc"]
    assert type(died) is cumulus.errors.ActorDied and str(died) == "instance job-abc is gone"
    assert died.actor == "job-abc"
    assert type(cancelled) is cumulus.errors.CallCancelled and str(cancelled) == "call x() was cancelled"
    assert (cancelled.job_id, cancelled.method, cancelled.call_id, cancelled.state) == ("job-abc", "x", 3,
                                                                                        "CANCELLED")
    child.finish()


def test_private_and_unknown_method_names_are_refused_in_the_job(job):
    sdk_handle = InstanceHandle("job-abc", class_name="Counter", methods=frozenset({"incr"}))
    script = """
for name in ("_secret", "__dunder__", "decr"):
    out(**outcome(lambda: getattr(h, name)))
out(**outcome(lambda: h.incr(1)))
out(**outcome(lambda: cumulus.instance("job-abc")._x))
out(method=repr(h.incr))
"""
    child = job(script, sdk_handle)
    assert child.line() == {"exc": "builtins.AttributeError", "msg": "_secret", "cause": None}
    assert child.line() == {"exc": "builtins.AttributeError", "msg": "__dunder__", "cause": None}
    got = child.line()
    assert got["exc"] == "builtins.AttributeError" and "Counter has no public method 'decr'" in got["msg"]
    assert child.line()["exc"] == "builtins.TypeError"  # a method is called with .remote(...)
    assert child.line()["exc"] == "builtins.AttributeError"
    assert child.line() == {"method": "<remote method Counter.incr of instance job-abc>"}
    child.finish()


def test_without_a_usable_output_dir_the_calls_end_supervisor_unavailable(job):
    child = job("out(**outcome(lambda: h.incr.remote().result(timeout=5)))\n"
                "out(**outcome(lambda: cumulus.instance('job-abc').incr.remote().result(timeout=5)))\n",
                output_dir=False)
    for _ in range(2):  # each call (and handle) tries again, in vain
        got = child.line()
        assert got["exc"] == "cumulus.errors.SupervisorUnavailable" and "cannot serve the calls socket" in got["msg"]
    child.finish()
    assert READY + "\n" not in child.stderr


def test_a_new_connection_replaces_the_link_and_the_old_one_is_closed(job):
    script = """
out(**outcome(h.a.remote().result))
go()
out(**outcome(h.b.remote().result))
"""
    child = job(script)
    old = child.connect()
    assert old.read_call("a")["id"] == 1
    new = child.connect()  # e.g. the supervisor restarted while the old connection lingers
    got = child.line()
    assert got["exc"] == "cumulus.errors.SupervisorUnavailable" and "replaced" in got["msg"]
    assert old.sock.recv(1) == b""  # the job closed the old one
    child.go()
    assert new.read_call("b")["id"] == 2
    new.returned(2, "on the new link")
    assert child.line() == {"value": "on the new link"}
    child.finish()

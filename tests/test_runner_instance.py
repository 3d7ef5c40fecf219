"""The runner serving a class instance (worker_image/image/runner_instance.py, issue 20): the real runner as a
subprocess on a package whose manifest says ``"instance": true``, spoken to over its Unix socket with the
protocol of runner_instance.py's docstring (length-prefixed msgpack frames, result envelopes as replies)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import cloudpickle
import msgpack
import pytest

from cumulus.client import packaging as pk
from cumulus.client.results import raise_remote
from cumulus.errors import RemoteError

RUNNER = Path(__file__).resolve().parents[1] / "worker_image" / "image" / "runner.py"
HEADER = struct.Struct(">I")
MAX_RESULT = 100_000  # CUMULUS_MAX_RESULT_BYTES for the shared runner


class Counter:
    def __init__(self, start: int = 0, *, step: int = 1) -> None:
        self.value = start
        self.step = step
        self.label = "not a method"

    def incr(self, n: int | None = None) -> int:
        self.value += self.step if n is None else n
        return self.value

    def get(self) -> int:
        return self.value

    def fail(self, msg: str) -> None:
        raise ValueError(f"bad: {msg}")

    def unpicklable(self):
        return threading.Lock()

    def big(self, n: int) -> bytes:
        return b"x" * n

    def say(self, text: str) -> None:
        print(text)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _private(self) -> str:
        return "secret"


class Broken:
    def __init__(self, why: str) -> None:
        raise RuntimeError(f"cannot start: {why}")


def instance_package(cls, *args, **kwargs) -> bytes:
    """build_package's zip with ``"instance": true`` added to its manifest."""
    src = zipfile.ZipFile(io.BytesIO(pk.build_package(cls, args, kwargs)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == pk.MANIFEST:
                data = json.dumps({**json.loads(data), "instance": True}).encode()
            dst.writestr(info, data)
    return buf.getvalue()


class Runner:
    def __init__(self, root: Path, package: bytes, env: dict | None = None) -> None:
        self.code, self.out = root / "code", root / "out"
        self.code.mkdir(parents=True)
        self.out.mkdir()
        (self.code / "package.zip").write_bytes(package)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULUS_")}
        full_env.update({"CUMULUS_CODE_DIR": str(self.code), "CUMULUS_OUTPUT_DIR": str(self.out), **(env or {})})
        self.stdout, self.stderr = root / "stdout", root / "stderr"
        with open(self.stdout, "wb") as so, open(self.stderr, "wb") as se:
            self.proc = subprocess.Popen([sys.executable, str(RUNNER)], env=full_env, stdout=so, stderr=se,
                                         cwd=str(root))
        self.sock_path = self.out / "instance.sock"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.sock_path.exists():
            assert self.proc.poll() is None, f"runner exited {self.proc.returncode}: {self.stderr.read_text()}"
            assert time.monotonic() < deadline, "no instance.sock"
            time.sleep(0.01)

    def connect(self) -> Conn:
        return Conn(str(self.sock_path))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def outcome(self):
        result = self.out / "result.msgpack"
        return pk.decode_result(result.read_bytes()) if result.exists() else None


class Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.next_id = 0

    def frame(self, method, *args, **kwargs) -> tuple[int, bytes]:
        self.next_id += 1
        body = msgpack.packb({"id": self.next_id, "method": method,
                              "args": cloudpickle.dumps((args, kwargs))}, use_bin_type=True)
        return self.next_id, HEADER.pack(len(body)) + body

    def send(self, method, *args, **kwargs) -> int:
        rid, data = self.frame(method, *args, **kwargs)
        self.sock.sendall(data)
        return rid

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf

    def recv(self):
        (size,) = HEADER.unpack(self._exact(HEADER.size))
        reply = msgpack.unpackb(self._exact(size), raw=False)
        assert set(reply) == {"id", "envelope"}
        return reply["id"], pk.decode_result(reply["envelope"])

    def call(self, method, *args, **kwargs):
        rid = self.send(method, *args, **kwargs)
        got, outcome = self.recv()
        assert got == rid
        return outcome

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One runner serving Counter(10, step=2), shared by the tests that only call it."""
    runner = Runner(tmp_path_factory.mktemp("inst"), instance_package(Counter, 10, step=2),
                    env={"CUMULUS_MAX_RESULT_BYTES": str(MAX_RESULT)})
    try:
        runner.wait_ready()
        yield runner
    finally:
        assert runner.stop() == 0, runner.stderr.read_text()


def test_the_instance_keeps_its_state_across_calls_in_order(served):
    conn = served.connect()
    start = conn.call("get").value
    assert [conn.call("incr").value for _ in range(100)] == [start + 2 * i for i in range(1, 101)]
    out = conn.call("incr", n=5)
    assert out.ok and out.value == start + 205 and out.duration_s is not None
    assert "instance ready (Counter) in" in served.stderr.read_text()


def test_two_connections_share_one_instance(served):
    a, b = served.connect(), served.connect()
    start = a.call("get").value
    assert a.call("incr", 1).value == start + 1
    assert b.call("incr", 1).value == start + 2
    assert a.call("get").value == b.call("get").value == start + 2
    for _ in range(50):  # both at once: every increment once, each connection's replies in its own order
        a.send("incr", 1)
        b.send("incr", 1)
    got_a = [a.recv()[1].value for _ in range(50)]
    got_b = [b.recv()[1].value for _ in range(50)]
    assert got_a == sorted(got_a) and got_b == sorted(got_b)
    assert sorted(got_a + got_b) == list(range(start + 3, start + 103))


def test_pipelined_requests_come_back_in_order(served):
    conn = served.connect()
    start = conn.call("get").value
    frames = [conn.frame("incr", 1) for _ in range(200)]
    conn.sock.sendall(b"".join(data for _, data in frames))
    replies = [conn.recv() for _ in range(200)]
    assert [rid for rid, _ in replies] == [rid for rid, _ in frames]
    assert [out.value for _, out in replies] == list(range(start + 1, start + 201))


def test_a_method_that_raises_fails_that_call_only(served):
    conn = served.connect()
    out = conn.call("fail", "boom")
    assert not out.ok and out.exc_type == "builtins.ValueError" and out.exc_message == "bad: boom"
    assert "in fail" in out.traceback and "runner_instance" not in out.traceback
    with pytest.raises(ValueError, match="bad: boom"):
        raise_remote(out)
    assert conn.call("get").ok


@pytest.mark.parametrize("method", ["nope", "_private", "__init__", "__class__", "label", 5])
def test_only_public_methods_can_be_called(served, method):
    conn = served.connect()
    out = conn.call(method)
    assert not out.ok and out.exc_type == "builtins.AttributeError"
    assert out.exc_message.startswith("Counter has no public method")
    with pytest.raises(AttributeError, match="Counter has no public method"):
        raise_remote(out)
    assert conn.call("get").ok


def test_arguments_that_cannot_be_loaded_fail_that_call(served):
    conn = served.connect()
    body = msgpack.packb({"id": 7, "method": "incr", "args": b"not a pickle"}, use_bin_type=True)
    conn.sock.sendall(HEADER.pack(len(body)) + body)
    rid, out = conn.recv()
    assert rid == 7 and not out.ok and "while loading the arguments of Counter.incr" in out.exc_message
    assert conn.call("incr", "x", "y").exc_type == "builtins.TypeError"  # wrong arguments: the method's TypeError
    assert conn.call("get").ok


def test_an_unpicklable_return_value_fails_that_call(served):
    conn = served.connect()
    out = conn.call("unpicklable")
    assert not out.ok and out.exc_type == "cumulus.UnpicklableResult" and "cannot be pickled" in out.exc_message
    with pytest.raises(RemoteError, match="UnpicklableResult"):
        out.result()
    assert conn.call("get").ok


def test_a_result_over_the_limit_is_refused(served):
    conn = served.connect()
    assert conn.call("big", 1000).value == b"x" * 1000
    out = conn.call("big", 2 * MAX_RESULT)
    assert not out.ok and out.exc_type == "cumulus.ResultTooLarge"
    size, limit = map(int, re.fullmatch(r"the result of Counter\.big is (\d+) bytes, over the limit of (\d+) bytes "
                                        r"that can be delivered; .*", out.exc_message).groups())
    assert limit == MAX_RESULT and 2 * MAX_RESULT < size < 2 * MAX_RESULT + 100
    assert conn.call("get").ok


@pytest.mark.parametrize("bad", ["oversize", "not a map", "no id"])
def test_a_bad_request_frame_closes_that_connection_only(served, bad):
    other, conn = served.connect(), served.connect()
    if bad == "oversize":
        conn.sock.sendall(HEADER.pack(50 * 1024 * 1024 + 1))  # the package limit + 1 (runner_package)
    else:
        body = msgpack.packb([1, 2] if bad == "not a map" else {"method": "get", "args": b""})
        conn.sock.sendall(HEADER.pack(len(body)) + body)
    assert conn.closed_by_peer()
    assert other.call("get").ok
    assert "closing connection" in served.stderr.read_text()


def test_a_client_that_goes_away_loses_only_its_replies(served):
    gone, other = served.connect(), served.connect()
    for _ in range(20):
        gone.send("incr", 1)
    gone.close()
    assert other.call("get").ok


def test_sigterm_ends_the_instance_as_a_finished_job(tmp_path):
    runner = Runner(tmp_path, instance_package(Counter))
    runner.wait_ready()
    conn = runner.connect()
    assert conn.call("say", "hello from a method").ok
    conn.send("sleep", 60)  # interrupted (not counted as a call): nothing more is finished
    time.sleep(0.2)
    t0 = time.monotonic()
    assert runner.stop() == 0, runner.stderr.read_text()
    assert time.monotonic() - t0 < 5
    assert conn.closed_by_peer()
    outcome = runner.outcome()
    assert outcome.ok and outcome.value is None
    assert sorted(p.name for p in runner.out.iterdir()) == ["result.msgpack"]
    assert runner.stdout.read_text().splitlines() == ["hello from a method", "[cumulus] end of stdout"]
    assert "instance stopped (SIGTERM) after 1 call(s)" in runner.stderr.read_text()


def test_sigint_ends_it_too(tmp_path):
    runner = Runner(tmp_path, instance_package(Counter))
    runner.wait_ready()
    assert runner.stop(signal.SIGINT) == 0
    assert runner.outcome().ok and sorted(p.name for p in runner.out.iterdir()) == ["result.msgpack"]


def test_a_constructor_that_raises_is_a_failed_job(tmp_path):
    runner = Runner(tmp_path, instance_package(Broken, "no GPU"))
    assert runner.proc.wait(30) == 1
    outcome = runner.outcome()
    assert not outcome.ok and outcome.exc_type == "builtins.RuntimeError"
    assert outcome.exc_message == "cannot start: no GPU" and "in __init__" in outcome.traceback
    with pytest.raises(RuntimeError, match="cannot start"):
        raise_remote(outcome)
    assert sorted(p.name for p in runner.out.iterdir()) == ["result.msgpack"]


def test_an_output_dir_too_long_for_a_socket_path_still_serves(tmp_path):
    """A Unix socket's path is at most 107 bytes: the runner binds through its descriptor of the output dir, and a
    client reaches it the same way (here through /proc/self/fd)."""
    runner = Runner(tmp_path / ("d" * 60) / ("e" * 60), instance_package(Counter, 41))
    assert len(os.fsencode(runner.sock_path)) > 108
    runner.wait_ready()
    dirfd = os.open(runner.out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert Conn(f"/proc/self/fd/{dirfd}/instance.sock").call("incr").value == 42
    finally:
        os.close(dirfd)
    assert runner.stop() == 0 and sorted(p.name for p in runner.out.iterdir()) == ["result.msgpack"]

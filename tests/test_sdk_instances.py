"""``@cumulus.remote`` on a class, end to end: the SDK against the real gRPC server and servicer on loopback, backed
by FakeSupervisorApi, which runs each instance with the real job runner in a subprocess (it constructs the class and
serves its methods on a socket) and queues the calls as tests/fakes/fake_instances.py says."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import time

import grpc
import pytest
import trio

import cumulus
from cumulus.cli import main
from cumulus.client.callref import CallRef, reply_error
from cumulus.client.client import CumulusClient
from cumulus.client.job_request import submission
from cumulus.client.packaging import build_package
from cumulus.client.remote import RemoteFunction
from cumulus.client.remote_class import InstanceHandle, RemoteClass
from cumulus.errors import (ActorDied, CallCancelled, CumulusError, InvalidRequest, JobCancelled, NotFound,
                            SupervisorUnavailable, Unsatisfiable)
from cumulus.jobformat import validate_package
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from tests.fakes.fake_api import running_fake_server
from tests.sdk_fixtures import address, server  # noqa: F401




@cumulus.remote(gpu=0.25, log_to_driver=False)
class Counter:
    """Counts."""

    def __init__(self, start=0, delay=0.0):
        time.sleep(delay)  # a slow constructor: calls wait at the supervisor until the instance serves
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n

    def get(self):
        return self.n

    def fail(self, text):
        raise ValueError(text)

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @staticmethod
    def twice(x):
        return 2 * x

    def _private(self):
        return "never remote"


@cumulus.remote
def add(a, b):
    return a + b


@pytest.fixture()
def counter():
    handle = Counter.remote(0)
    yield handle
    handle.cancel()


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the decorator and its options -------------------------------------------------------------------------


def test_remote_on_a_class_makes_a_remote_class_and_a_plain_call_constructs_locally():
    assert isinstance(Counter, RemoteClass) and Counter.__name__ == "Counter" and Counter.__doc__ == "Counts."
    local = Counter(5)
    assert local.incr(2) == 7 and type(local).__name__ == "Counter"
    assert repr(Counter) == "<remote class Counter (gpu=0.25, log_to_driver=False)>"

    @cumulus.remote
    class Bare:
        pass

    assert isinstance(Bare, RemoteClass) and Bare.remote_options == {}
    assert isinstance(add, RemoteFunction)


def test_options_returns_a_new_remote_class_and_leaves_the_original_unchanged():
    other = Counter.options(gpu=0.5, max_restarts=2, timeout=5)
    assert isinstance(other, RemoteClass) and other is not Counter
    assert other.remote_options == {"gpu": 0.5, "log_to_driver": False, "max_restarts": 2, "timeout": 5}
    assert Counter.remote_options == {"gpu": 0.25, "log_to_driver": False}
    assert other(3).get() == 3


@pytest.mark.parametrize("make", [
    lambda: cumulus.remote(max_restarts=1)(lambda: 1),
    lambda: add.options(max_restarts=1),
    lambda: RemoteFunction(len, {"max_restarts": 0}),
])
def test_max_restarts_on_a_function_is_refused(make):
    with pytest.raises(InvalidRequest, match="max_restarts: only for @remote on a class"):
        make()


@pytest.mark.parametrize("option", [{"retries": 2}, {"retry_exceptions": True}, {"resume_on_timeout": True}])
def test_function_only_options_on_a_class_are_refused_and_name_max_restarts(option):
    with pytest.raises(InvalidRequest, match="not for a class.*max_restarts"):
        Counter.options(**option)

    class Plain:
        pass

    with pytest.raises(InvalidRequest, match="max_restarts"):
        cumulus.remote(**option)(Plain)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_a_bad_max_restarts_is_refused(value):
    with pytest.raises(InvalidRequest, match="max_restarts"):
        Counter.options(max_restarts=value)


def test_the_package_and_the_submission_say_instance():
    package = build_package(Counter._cumulus_class, (1,), {}, instance=True)
    assert validate_package(package).manifest["instance"] is True
    assert "instance" not in validate_package(build_package(len, ("x",))).manifest  # a function's is unchanged
    request = submission(Counter._cumulus_class, (1,), {}, {"max_restarts": 2}, max_bytes=2**26, instance=True)
    assert request.instance is True and request.max_restarts == 2 and request.name.endswith("Counter")
    assert validate_package(request.code_package).manifest["instance"] is True
    assert submission(len, ("x",), {}, {}, max_bytes=2**26).instance is False


def test_the_supervisor_receives_an_instance_with_its_max_restarts(server):
    handle = Counter.options(max_restarts=2).remote(1)
    try:
        spec = server.api.jobs[handle.job_id].record.spec
        assert spec.instance is True and spec.max_restarts == 2
        assert validate_package(spec.package).manifest["instance"] is True
    finally:
        handle.cancel()


# ---- calls -----------------------------------------------------------------------------------------------------


def test_an_instance_keeps_its_state_over_100_calls_in_order(counter, server):
    refs = [counter.incr.remote() for _ in range(100)]
    assert all(isinstance(r, CallRef) for r in refs)
    assert [r.result(timeout=60) for r in refs] == list(range(1, 101))
    assert counter.get.remote().result(timeout=30) == 100
    assert counter.twice.remote(21).result(timeout=30) == 42  # a static method is a method too
    assert server.api.instances[counter.job_id].sent[:100] == ["incr"] * 100


def test_a_method_that_raises_reraises_its_type_and_the_instance_keeps_serving(counter):
    with pytest.raises(ValueError, match="no good") as raised:
        counter.fail.remote("no good").result(timeout=30)
    assert "in fail" in str(raised.value.__cause__)  # the instance's traceback
    assert counter.incr.remote(3).result(timeout=30) == 3


def test_unknown_and_private_names(counter):
    with pytest.raises(AttributeError, match="Counter has no public method 'nope'"):
        counter.nope  # noqa: B018 - the attribute access itself raises, before any call
    with pytest.raises(AttributeError):
        counter._private  # noqa: B018
    by_id = cumulus.instance(counter.job_id)
    with pytest.raises(AttributeError):
        by_id._private  # noqa: B018 - never remote, not even without the class
    with pytest.raises(AttributeError, match="no public method 'nope'"):  # the instance's answer
        by_id.nope.remote().result(timeout=30)
    with pytest.raises(TypeError, match=r"\.remote\(\.\.\.\)"):
        counter.incr(1)
    assert by_id.incr.remote(1).result(timeout=30) == 1  # it still serves


def test_get_and_wait_take_call_refs_mixed_with_job_refs(counter):
    job = add.options(log_to_driver=False).remote(2, 3)
    calls = [counter.incr.remote(), counter.incr.remote()]
    assert cumulus.get(calls[0], timeout=30) == 1
    assert cumulus.get([job, *calls], timeout=60) == [5, 1, 2]
    slow = counter.sleep.remote(30)
    ready, not_ready = cumulus.wait([slow, job, calls[1]], num_returns=2, timeout=30)
    assert ready == [job, calls[1]] and not_ready == [slow]
    ready, not_ready = cumulus.wait([slow], timeout=0.2)
    assert ready == [] and not_ready == [slow]
    with pytest.raises(TimeoutError, match="has not returned"):
        cumulus.get(slow, timeout=0.1)
    with pytest.raises(TypeError):
        cumulus.get([slow, "x"])


def test_two_clients_share_one_instance_by_id_and_by_pickled_handle(counter, address):
    assert counter.incr.remote(10).result(timeout=30) == 10
    with CumulusClient(address) as other:
        by_id = cumulus.instance(counter.job_id, client=other)
        assert by_id.incr.remote(1).result(timeout=30) == 11
        copy = pickle.loads(pickle.dumps(counter))
        assert isinstance(copy, InstanceHandle) and copy == counter and copy is not counter
        assert copy.incr.remote(1).result(timeout=30) == 12
        with pytest.raises(AttributeError):  # the class's method names travel with the handle
            copy.nope  # noqa: B018
    assert counter.get.remote().result(timeout=30) == 12


def test_a_pickled_handle_works_in_another_process(counter):
    counter.incr.remote(41).result(timeout=30)
    script = ("import pickle, sys, cumulus\n"
              "h = pickle.loads(sys.stdin.buffer.read())\n"
              "print(cumulus.get(h.incr.remote(1), timeout=60))\n")
    proc = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(counter), capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "42"
    assert counter.get.remote().result(timeout=30) == 42


def test_a_call_queued_behind_a_starting_instance_can_be_cancelled():
    handle = Counter.remote(0, delay=1.5)
    try:
        first = handle.incr.remote()
        withdrawn = handle.incr.remote(100)
        assert withdrawn.cancel() is True
        with pytest.raises(CallCancelled, match="was cancelled") as cancelled:
            withdrawn.result(timeout=30)
        assert isinstance(cancelled.value, JobCancelled) and cancelled.value.method == "incr"
        assert first.result(timeout=30) == 1 and withdrawn.cancel() is False  # ended: nothing to send
        assert handle.incr.remote().result(timeout=30) == 2  # the withdrawn call never ran
    finally:
        handle.cancel()


def test_kill_stops_the_instance_and_its_calls_raise_actor_died(server):
    handle = Counter.remote(0)
    assert handle.incr.remote().result(timeout=30) == 1
    running = handle.sleep.remote(60)
    queued = handle.incr.remote()
    time.sleep(0.3)
    result = cumulus.kill(handle)
    assert result.job_id == handle.job_id and server.api.cancels_until_stopped[-1] is True
    for ref in (running, queued, handle.incr.remote()):
        with pytest.raises(cumulus.ActorDied, match=f"instance {handle.job_id} has ended"):
            ref.result(timeout=30)
    assert handle.status().state == "CANCELLED"
    with pytest.raises(TypeError):
        cumulus.kill("not a handle")


def test_refused_calls_raise_what_the_supervisor_said():
    with pytest.raises(NotFound):
        cumulus.instance("no-such-job").incr.remote().result(timeout=30)
    job = add.options(log_to_driver=False).remote(1, 1)
    job.result(timeout=60)
    with pytest.raises(InvalidRequest, match="not a class instance"):
        cumulus.instance(job.job_id).incr.remote().result(timeout=30)


def test_handle_options_set_the_default_result_timeout(counter):
    quick = counter.options(timeout=0.2)
    assert quick.job_id == counter.job_id and quick == counter
    with pytest.raises(TimeoutError):
        quick.sleep.remote(2).result()
    with pytest.raises(InvalidRequest, match="timeout"):
        counter.options(timeout=-1)


def test_a_call_ref_does_not_pickle(counter):
    ref = counter.incr.remote()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ref)
    ref.result(timeout=30)


def test_closing_the_client_fails_waiting_calls_and_the_next_client_opens_a_new_stream(counter, address):
    other = CumulusClient(address)
    handle = cumulus.instance(counter.job_id, client=other)
    slow = handle.sleep.remote(3)
    time.sleep(0.2)
    other.close()
    with pytest.raises(CumulusError, match="closed"):
        slow.result(timeout=30)
    with pytest.raises(CumulusError, match="is closed"):
        handle.incr.remote()
    assert counter.incr.remote().result(timeout=30) == 1  # the handle's own client, another stream


def test_calls_fail_once_the_supervisor_is_gone(tmp_path):
    with running_fake_server(tmp_path) as own:
        client = CumulusClient(own.address)
        handle = cumulus.instance(Counter.options(address=own.address).remote(0).job_id, client=client)
        assert handle.incr.remote().result(timeout=30) == 1
        slow = handle.sleep.remote(30)
        time.sleep(0.2)
    try:
        with pytest.raises((ActorDied, SupervisorUnavailable)):  # its instance went first, or the stream did
            slow.result(timeout=30)
        with pytest.raises(SupervisorUnavailable, match="no Cumulus supervisor reachable"):
            handle.incr.remote().result(timeout=30)
    finally:
        client.close()


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset by peer"


class _StreamThatBreaks:
    """A CallInstance call that breaks (UNAVAILABLE) once it has read the first request."""

    def __init__(self, requests):
        self.requests = requests

    def __iter__(self):
        return self

    def __next__(self):
        next(self.requests)
        raise _Unavailable()

    def cancel(self):
        pass


class _ClientWithBreakingStreams:
    address = "127.0.0.1:1"
    _closed = False

    def __init__(self):
        self.opened = 0
        self._stub = self

    def CallInstance(self, requests):  # noqa: N802 - the stub's method name
        self.opened += 1
        return _StreamThatBreaks(requests)


def test_a_broken_stream_fails_its_calls_with_the_mapped_error_and_the_next_call_opens_a_new_one():
    from cumulus.client.call_stream import send_call

    client = _ClientWithBreakingStreams()
    first = send_call(client, "job1", "incr", b"")
    with pytest.raises(SupervisorUnavailable, match="connection reset by peer"):
        first.result(timeout=10)
    second = send_call(client, "job1", "incr", b"")
    with pytest.raises(SupervisorUnavailable):
        second.result(timeout=10)
    assert client.opened == 2 and first.call_id == second.call_id == 1  # ids are per stream


@pytest.mark.parametrize("end, code, expected", [
    (pb.CALL_INSTANCE_DIED, 0, ActorDied),
    (pb.CALL_CANCELLED, 0, CallCancelled),
    (pb.CALL_REFUSED, grpc.StatusCode.NOT_FOUND.value[0], NotFound),
    (pb.CALL_REFUSED, grpc.StatusCode.INVALID_ARGUMENT.value[0], InvalidRequest),
    (pb.CALL_REFUSED, grpc.StatusCode.FAILED_PRECONDITION.value[0], Unsatisfiable),
    (pb.CALL_REFUSED, grpc.StatusCode.UNAVAILABLE.value[0], ActorDied),
])
def test_how_each_end_of_a_call_maps_to_an_exception(end, code, expected):
    error = reply_error(pb.InstanceReply(call_id=7, end=end, code=code, message="why"), "job1", "incr")
    assert type(error) is expected
    if expected is not CallCancelled:
        assert str(error) == "why"


def test_actor_died_takes_a_message_and_keeps_its_default_text():
    assert str(ActorDied("a", message="the instance is gone")) == "the instance is gone"
    assert str(ActorDied("a", ValueError("x"))) == "actor 'a' is not running: ValueError: x"
    assert cumulus.ActorDied is ActorDied and cumulus.InstanceHandle is InstanceHandle
    assert cumulus.kill.__module__ == cumulus.instance.__module__ == "cumulus.client.remote_class"


# ---- from async code -------------------------------------------------------------------------------------------


async def test_from_trio():
    handle = await Counter.remote_async(5)
    try:
        ref = handle.incr.remote()
        assert await ref.result_async(timeout=60) == 6
        assert await handle.incr.remote() == 7
        slow = handle.sleep.remote(5)
        with pytest.raises(TimeoutError):
            await slow.result_async(timeout=0.2)
        with trio.move_on_after(0.1):
            await slow.result_async()
    finally:
        await trio.to_thread.run_sync(handle.cancel)


def test_from_asyncio():
    async def body():
        handle = await Counter.remote_async(1)
        try:
            values = await asyncio.gather(handle.incr.remote().result_async(timeout=60), handle.incr.remote())
            with pytest.raises(ValueError):
                await handle.fail.remote("x")
            with pytest.raises(TimeoutError):
                await handle.sleep.remote(5).result_async(timeout=0.2)
            return values
        finally:
            await asyncio.to_thread(handle.cancel)

    assert asyncio.run(body()) == [2, 3]


# ---- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_jobs_and_describe_show_an_instance_and_its_calls(counter, server, capsys):
    a = ("--address", server.address)
    counter.incr.remote().result(timeout=30)
    with pytest.raises(ValueError):
        counter.fail.remote("x").result(timeout=30)
    code, out, err = run_cli(capsys, "jobs", *a)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert "CALLS" in header.split()
    row = next(r for r in rows if r.startswith(counter.job_id))
    assert "Counter (instance)" in row and " 2 (1 failed) " in row
    code, out, _ = run_cli(capsys, "jobs", "--json", *a)
    mine = next(j for j in json.loads(out) if j["job_id"] == counter.job_id)
    assert mine["instance"] is True and mine["calls"] == 2 and mine["failed_calls"] == 1
    code, out, err = run_cli(capsys, "describe", counter.job_id, *a)
    assert code == 0, err
    assert "Kind:" in out and "class instance" in out and "Calls:" in out and "2 (1 failed)" in out
    methods = out[out.index("Methods:"):out.index("Events:")].splitlines()
    assert methods[1].split() == ["METHOD", "CALLS", "FAILED", "SECONDS"]
    assert [line.split()[:3] for line in methods[2:]] == [["fail", "1", "1"], ["incr", "1", "0"]]
    code, out, _ = run_cli(capsys, "describe", counter.job_id, "-o", "json", *a)
    info = json.loads(out)["info"]
    assert info["instance"] is True and {m["method"]: m["calls"] for m in info["methods"]} == {"fail": 1, "incr": 1}
    code, out, _ = run_cli(capsys, "status", counter.job_id, *a)
    assert "class instance" in out and "2 (1 failed)" in out

"""The SDK end to end against a real gRPC server on loopback backed by FakeSupervisorApi, which runs each job with
the real job runner in a subprocess (everything real except Swarm, SSH and partitions)."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest
import trio

import cumulus
from cumulus.client.connection import load_client_config, open_channel
from cumulus.client import packaging as pk
from cumulus.client.client import CumulusClient, JobRef
from cumulus.client.remote import RemoteFunction
from cumulus.errors import InvalidRequest, PackageTooLarge, SupervisorUnavailable, Unsatisfiable
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from tests.fakes.fake_api import free_port
from tests.sdk_fixtures import address, server  # noqa: F401




class JobSpecificError(Exception):
    pass


@cumulus.remote
def add(a, b):
    print(f"adding {a} and {b}")
    return a + b


@cumulus.remote(gpu=0.25, duration=60)
def fails(x):
    raise ValueError(f"bad value {x}")


@cumulus.remote
def raises_custom():
    raise JobSpecificError("custom")


@cumulus.remote
def sleepy(seconds, value=None):
    print("sleeping", flush=True)
    time.sleep(seconds)
    return value


# ---- the decorator -------------------------------------------------------------------------------------------


def test_remote_bare_and_with_options_and_local_call():
    assert isinstance(add, RemoteFunction) and add.__name__ == "add"
    assert add(2, 3) == 5  # a plain call runs locally
    assert fails.remote_options == {"gpu": 0.25, "duration": 60}

    @cumulus.remote()
    def f():
        return 1

    assert f() == 1 and f.remote_options == {}


def test_options_returns_a_new_wrapper_and_leaves_the_original_unchanged():
    g = fails.options(gpu=0.5, requirements=["numpy"])
    assert g is not fails
    assert g.remote_options == {"gpu": 0.5, "duration": 60, "requirements": ["numpy"]}
    assert fails.remote_options == {"gpu": 0.25, "duration": 60}
    assert add.options(gpu_memory=0.3).remote_options == {"gpu_memory": 0.3}


def test_bad_options_fail_at_the_call_site():
    with pytest.raises(InvalidRequest, match=r"unknown option\(s\) gpus \(did you mean gpu\?\)"):
        cumulus.remote(gpus=1)
    with pytest.raises(InvalidRequest, match="0 < gpu <= 1"):
        cumulus.remote(gpu=2.3)
    with pytest.raises(InvalidRequest, match="0 < gpu <= 1"):
        add.options(gpu_memory=0)
    with pytest.raises(InvalidRequest, match="alias"):
        add.options(gpu=0.5, gpu_memory=0.25)
    with pytest.raises(TypeError):  # not an option problem: remote() itself is called the wrong way
        cumulus.remote(add, gpu=1)


@pytest.mark.parametrize("options, words", [
    ({"gpus": 1}, "unknown option"),
    ({"gpu": 0.5, "gpu_memory": 0.25}, "alias"),
    ({"gpu": "half"}, "not a number"),
    ({"duration": 1.5}, "whole seconds"),
    ({"requirements": [""]}, "empty requirement"),
    ({"requirements": ["./pkg"]}, "URL or a path"),
    ({"requirements": 3}, "list of PEP 508"),
    ({"env": {"cumulus_x": "1"}}, "reserved"),
    ({"env": ["A=1"]}, "dict of str to str"),
    ({"retries": "1"}, "integer"),
    ({"retries": -1}, "non-negative"),
    ({"timeout": float("nan")}, "seconds >= 0"),
    ({"name": 3}, "string"),
    ({"project_root": 3}, "path"),
])
def test_every_bad_option_raises_invalid_request(options, words):
    """normalize_options raises one exception type for every problem: InvalidRequest (what the supervisor raises for
    the same mistake), with words that say what to fix."""
    with pytest.raises(InvalidRequest, match=words):
        cumulus.remote(**options)
    with pytest.raises(InvalidRequest, match=words):
        add.options(**options)


# ---- jobs ----------------------------------------------------------------------------------------------------


def test_remote_get_and_logs_before_the_result(capsys):
    ref = add.remote(2, 2)
    assert isinstance(ref, JobRef) and ref.job_id
    assert cumulus.get(ref) == 4
    assert ref.done() and ref.state == "COMPLETED"
    out = capsys.readouterr().out
    assert f"(job {ref.job_id}) adding 2 and 2" in out


def test_events_order_logs_then_result_then_terminal_state():
    seen = []
    ref = CumulusClient(log_to_driver=False).submit_call(add, (1, 2), on_event=seen.append)
    assert ref.result(timeout=60) == 3
    kinds = [u.kind for u in seen]
    first_log = kinds.index("log")
    assert first_log < kinds.index("result") < max(i for i, u in enumerate(seen) if u.state == "COMPLETED")
    states = [u.state for u in seen if u.kind == "state"]
    assert states[0] == "QUEUED" and "RUNNING" in states and states[-1] == "COMPLETED"


def test_quiet_logs(capsys, monkeypatch):
    assert add.options(log_to_driver=False).remote(1, 1).result(60) == 2
    monkeypatch.setenv("CUMULUS_QUIET_LOGS", "1")
    assert CumulusClient().run(add, 1, 1) == 2
    assert "(job " not in capsys.readouterr().out


def test_get_list_and_wait():
    refs = [add.remote(i, i) for i in range(3)]
    assert cumulus.get(refs, timeout=60) == [0, 2, 4]
    slow, fast = sleepy.remote(30, "slow"), sleepy.remote(0, "fast")
    ready, not_ready = cumulus.wait([slow, fast], num_returns=1, timeout=60)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = cumulus.wait([slow], timeout=0.2)
    assert ready == [] and not_ready == [slow]
    slow.cancel()


def test_exception_is_reraised_as_its_type_with_the_remote_traceback():
    ref = fails.remote(42)
    with pytest.raises(ValueError, match="bad value 42") as info:
        ref.result(60)
    assert isinstance(info.value.__cause__, pk.RemoteTraceback)
    assert "in fails" in str(info.value.__cause__)
    assert ref.state == "FAILED"
    with pytest.raises(JobSpecificError, match="custom"):
        cumulus.get(raises_custom.remote())


def test_result_timeout_and_cancel():
    ref = sleepy.remote(60)
    with pytest.raises(TimeoutError, match="keeps running"):
        ref.result(timeout=0.2)
    report = ref.cancel()
    assert report.was_running and report.state == "CANCELLED"
    assert "service" in report.released and not report.leaked
    with pytest.raises(cumulus.JobCancelled):
        ref.result(10)
    assert ref.status().state == "CANCELLED"
    again = ref.cancel()
    assert not again.was_running


def test_cancel_until_stopped_reaches_the_supervisor(server):
    ref = sleepy.remote(60)
    with pytest.raises(TimeoutError):
        ref.result(timeout=0.2)
    report = ref.cancel(until_stopped=True)
    assert report.was_running and report.state == "CANCELLED"
    assert server.api.cancels_until_stopped[-1] is True
    with pytest.raises(cumulus.JobCancelled):
        ref.result(10)


def test_status_logs_and_client_run_with_options_and_kwargs():
    client = CumulusClient(log_to_driver=False)
    assert client.run(sleepy, 0, value="v", gpu_memory=0.5, duration=30) == "v"
    ref = client.submit(add, 5, b=6, gpu=1)
    assert ref.result(60) == 11
    info = ref.status()
    assert info.state == "COMPLETED" and info.gpu == 1 and info.worker == "fake-w1" and info.has_result
    assert "adding 5 and 6" in list(ref.logs())
    assert [j.job_id for j in client.list_jobs(include_finished=True, limit=1)] == [ref.job_id]
    assert ref.job_id not in [j.job_id for j in client.list_jobs(include_finished=False)]
    assert {w.hostname for w in client.list_workers()} == {"fake-w1", "fake-w2"}


def test_logs_without_follow_returns_while_the_job_runs():
    ref = sleepy.options(log_to_driver=False).remote(30)
    deadline = time.monotonic() + 30
    while ref.state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    assert "sleeping" in list(ref.logs())
    assert time.monotonic() - started < 10
    ref.cancel()


def test_idempotency_key_returns_the_same_job():
    client = CumulusClient(log_to_driver=False)
    a = client.submit_call(add, (1, 1), idempotency_key="same-key")
    b = client.submit_call(add, (1, 1), idempotency_key="same-key")
    assert a.job_id == b.job_id and a.result(60) == b.result(60) == 2


def test_watch_after_the_submitting_client_disconnected_gets_the_result(address, server):
    cancels_before = server.api.calls.count("cancel")
    package = pk.build_package(sleepy._cumulus_function, (1.0, "late value"))
    with open_channel(load_client_config(address)) as channel:
        stream = cumulus_pb2_grpc.OrchestratorServiceStub(channel).SubmitJob(
            pb.JobSubmission(code_package=package, gpu=0.5))
        job_id = next(stream).job_id
        stream.cancel()  # the submitting client goes away
    ref = CumulusClient(log_to_driver=False).job(job_id)
    assert ref.result(60) == "late value"
    assert ref.status().state == "COMPLETED"  # disconnecting did not cancel it
    assert server.api.calls.count("cancel") == cancels_before


def test_errors_become_clear_python_exceptions(monkeypatch):
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(SupervisorUnavailable, match=f"no Cumulus supervisor reachable at {nowhere}"):
        CumulusClient(nowhere).submit(add, 1, 1)
    with pytest.raises(InvalidRequest, match="not a valid requirement"):
        add.options(requirements=["numpy>="]).remote(1, 1)
    with pytest.raises(Unsatisfiable, match="whole devices"):
        add.options(gpu=8).remote(1, 1)
    with pytest.raises(cumulus.errors.NotFound):
        CumulusClient().job("no-such-job")
    monkeypatch.setenv("CUMULUS_JOBS_MAX_PACKAGE_MB", "1")
    with pytest.raises(PackageTooLarge, match="pass big data by reference"):
        add.remote(b"", os.urandom(2 * 1024 * 1024))


# ---- from async code -------------------------------------------------------------------------------------------


async def test_from_trio():
    ref = add.options(log_to_driver=False).remote(3, 4)
    assert await ref.result_async(timeout=60) == 7
    assert await add.options(log_to_driver=False).remote(1, 1) == 2
    slow = sleepy.remote(30)
    with pytest.raises(TimeoutError):
        await slow.result_async(timeout=0.2)
    with trio.move_on_after(0.1):
        await slow.result_async()
    slow.cancel()
    with pytest.raises(cumulus.JobCancelled):
        await slow.result_async(timeout=10)


def test_from_asyncio():
    async def main():
        ref = add.options(log_to_driver=False).remote(5, 5)
        other = add.options(log_to_driver=False).remote(1, 2)
        values = await asyncio.gather(ref.result_async(timeout=60), other)
        with pytest.raises(ValueError):
            await fails.options(log_to_driver=False).remote(0)
        return values

    assert asyncio.run(main()) == [10, 3]

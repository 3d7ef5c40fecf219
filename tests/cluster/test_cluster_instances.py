"""Class instances on the real local cluster (issue 20), through a REAL ``cumulus supervisor`` process: the
instance runs in its job's container on a partition, and its calls go SDK -> gRPC -> supervisor -> the node's SSH
connection -> the instance's Unix socket -> back. A counter keeps its state across 100 calls from two clients (one
of them another process, holding the handle by id); a model-like class loads once in ``__init__`` and answers many
calls; a method's exception comes back as itself and the instance goes on; killing the instance's node raises
``ActorDied`` in the caller; ``cumulus.kill`` frees its share and leaves nothing; a handle passed into another
job calls the same instance from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import cumulus
from supervisor_process import remote_supervisor, start_supervisor  # noqa: F401  (the module-scoped fixture)
from cumulus.local import cluster as local_cluster

CALL_TIMEOUT = 120.0


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def value(self) -> int:
        return self.count

    def fail(self, text: str) -> None:
        raise ValueError(text)

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class Model:
    """Loads its "weights" once; every call uses them."""

    def __init__(self, size: int) -> None:
        import hashlib

        self.loads = 1
        self.pid = os.getpid()
        self.weights = [hashlib.sha256(str(i).encode()).digest()[0] for i in range(size)]

    def predict(self, x: int) -> tuple[int, int, int]:
        return self.weights[x % len(self.weights)] * x, self.loads, self.pid


@pytest.fixture
def sup(remote_supervisor):  # noqa: F811
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


def used_share(client) -> float:
    return sum(d.used_share for w in client.list_workers() for d in w.devices)


def test_a_counter_keeps_its_state_across_100_calls_from_two_clients(sup):
    remote_counter = cumulus.remote(Counter).options(address=sup.address, gpu=0.25, duration=300)
    handle = remote_counter.remote(0)
    refs = [handle.incr.remote() for _ in range(50)]
    assert [r.result(CALL_TIMEOUT) for r in refs] == list(range(1, 51))  # one instance, in the order sent
    other = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import cumulus
        handle = cumulus.instance({handle.job_id!r}, address={sup.address!r})
        values = cumulus.get([handle.incr.remote() for _ in range(50)], timeout={CALL_TIMEOUT})
        assert values == list(range(51, 101)), values
        print("second client ok")
        """)], capture_output=True, text=True, timeout=CALL_TIMEOUT, env=os.environ.copy())
    assert other.returncode == 0 and "second client ok" in other.stdout, other.stderr
    assert handle.value.remote().result(CALL_TIMEOUT) == 100
    with sup.client() as client:
        status = client.status(handle.job_id)
        assert status.state == "RUNNING" and used_share(client) > 0
        assert sup.cli("jobs").stdout.count(handle.job_id[:12]) == 1
        described = sup.cli("describe", handle.job_id).stdout
        assert "incr" in described and "100" in described, described
        cumulus.kill(handle)
        with pytest.raises(cumulus.ActorDied):
            handle.value.remote().result(CALL_TIMEOUT)
        assert used_share(client) == 0
    sup.assert_nothing_left([handle.job_id], expect={handle.job_id: "CANCELLED"})


def test_a_model_loads_once_and_answers_many_calls_and_its_errors_come_back(sup):
    remote_model = cumulus.remote(gpu=0.25, duration=300)(Model).options(address=sup.address)
    handle = remote_model.remote(1000)
    answers = cumulus.get([handle.predict.remote(x) for x in range(200)], timeout=CALL_TIMEOUT)
    assert {loads for _, loads, _ in answers} == {1} and len({pid for _, _, pid in answers}) == 1
    assert [value for value, _, _ in answers] == [Model(1000).predict(x)[0] for x in range(200)]
    counter = cumulus.remote(Counter).options(address=sup.address, gpu=0.25, duration=300).remote(5)
    with pytest.raises(ValueError, match="bad input"):
        counter.fail.remote("bad input").result(CALL_TIMEOUT)
    assert counter.incr.remote().result(CALL_TIMEOUT) == 6  # it goes on after its method raised
    with pytest.raises(AttributeError):
        cumulus.instance(counter.job_id, address=sup.address).nope.remote().result(CALL_TIMEOUT)
    for h in (handle, counter):
        cumulus.kill(h)
    sup.assert_nothing_left([handle.job_id, counter.job_id],
                            expect={handle.job_id: "CANCELLED", counter.job_id: "CANCELLED"})


def bump(handle, times: int) -> list[int]:
    """Runs in a job: calls the instance it was given, through the job's calls socket."""
    return [cumulus.get(handle.incr.remote(), timeout=CALL_TIMEOUT) for _ in range(times)]


def fail_through(handle) -> None:
    handle.fail.remote("raised two hops away").result(CALL_TIMEOUT)


def test_a_handle_passed_into_another_job_calls_the_instance_from_there(sup):
    """The job has no network: its calls go job -> its calls socket -> the node's SSH connection -> the
    supervisor (as the job's owner) -> the instance, and back."""
    counter = cumulus.remote(Counter).options(address=sup.address, gpu=0.25, duration=300).remote(10)
    in_a_job = cumulus.remote(gpu=0.25, duration=300, address=sup.address)
    assert in_a_job(bump).remote(counter, 5).result(CALL_TIMEOUT) == [11, 12, 13, 14, 15]
    assert counter.incr.remote().result(CALL_TIMEOUT) == 16  # one instance, called from the job and from here
    with pytest.raises(ValueError, match="raised two hops away"):
        in_a_job(fail_through).remote(counter).result(CALL_TIMEOUT)
    assert counter.value.remote().result(CALL_TIMEOUT) == 16
    cumulus.kill(counter)
    sup.assert_nothing_left([counter.job_id], expect={counter.job_id: "CANCELLED"})


def test_killing_its_node_raises_actor_died_in_the_caller(sup, cluster):
    handle = cumulus.remote(Counter).options(address=sup.address, gpu=0.25, duration=300).remote(0)
    assert handle.incr.remote().result(CALL_TIMEOUT) == 1
    with sup.client() as client:
        worker = client.status(handle.job_id).worker
    victim = next(n for n in cluster["nodes"] if n["hostname"] == worker)
    in_flight = handle.sleep.remote(60)
    time.sleep(1)
    try:
        sup.cli("local", "kill-node", str(victim["index"]), address=False, check_rc=0)
        started = time.monotonic()
        with pytest.raises(cumulus.ActorDied):
            in_flight.result(CALL_TIMEOUT)
        assert time.monotonic() - started < 30  # the node-loss time (lease TTL), not the call's 60 s
        with pytest.raises(cumulus.ActorDied):  # no restarts asked for: it is gone
            handle.value.remote().result(CALL_TIMEOUT)
    finally:
        result = sup.cli("local", "revive-node", str(victim["index"]), address=False)
        if result.returncode != 0:
            local_cluster.revive_node(victim["index"], wait=True, timeout=90, quiet=True)
    with sup.client() as client:
        assert client.status(handle.job_id).reason.startswith(("node_lost", "partition_lost"))
    sup.wait_workers(sup.worker_hostnames, timeout=90)
    problems = sup.leftovers([handle.job_id], settle=60)
    assert [p for p in problems if "teardown leaked" not in p] == [], problems


class Durable:
    """Keeps its count in checkpoints: an instance made again after it died starts from the last one."""

    def __init__(self) -> None:
        import cumulus

        self.count = cumulus.checkpoint.load() or 0

    def incr(self) -> int:
        import cumulus

        self.count += 1
        cumulus.checkpoint.save(self.count)
        return self.count

    def crash(self) -> None:
        os._exit(1)


def test_a_crashed_instance_is_made_again_from_its_last_checkpoint(sup):
    handle = cumulus.remote(Durable).options(address=sup.address, gpu=0.25, duration=300, max_restarts=1).remote()
    assert [handle.incr.remote().result(CALL_TIMEOUT) for _ in range(5)] == [1, 2, 3, 4, 5]
    with sup.client() as client:
        deadline = time.monotonic() + 60
        while client.status(handle.job_id).checkpoint_step != 4:  # the newest reached the supervisor's store
            assert time.monotonic() < deadline, client.status(handle.job_id)
            time.sleep(0.1)
        with pytest.raises(cumulus.ActorDied):
            handle.crash.remote().result(CALL_TIMEOUT)
        assert handle.incr.remote().result(CALL_TIMEOUT) == 6  # the new instance, from the checkpoint of 5
        status = client.status(handle.job_id)
        assert status.attempt == 2 and status.state == "RUNNING", status
        cumulus.kill(handle)
    sup.assert_nothing_left([handle.job_id], expect={handle.job_id: "CANCELLED"})

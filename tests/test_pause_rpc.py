"""PauseJob and ResumeJob over the real gRPC server (FakeSupervisorApi behind it, tests/fakes/fake_api.py: the real
runner in a subprocess, with the real in-job checkpoint API), through the raw stub, CumulusClient and JobRef:
round trips, the status they answer (state, checkpoint step), and the status codes of refusals."""

from __future__ import annotations

import time

import grpc
import pytest

import cumulus
from cumulus.client.client import CumulusClient
from cumulus.client.connection import load_client_config, open_channel
from cumulus.client.types import JobInfo, PauseResult
from cumulus.errors import NotFound, RequestRejected, WrongJobState
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from tests.fakes.fake_api import running_fake_server


STEPS = 100  # of 0.05 s: a pause lands well before the end


def train(steps: int, step_seconds: float = 0.05) -> list[int]:
    """A training loop: a checkpoint after every step, returning at a pause request; every step it ran, in order
    (across its attempts: the checkpoint carries them)."""
    state = cumulus.checkpoint.load() or {"done": []}
    while len(state["done"]) < steps:
        time.sleep(step_seconds)
        state["done"].append(len(state["done"]))
        cumulus.checkpoint.save(state, step=len(state["done"]) - 1)
        if cumulus.should_pause():
            return []  # paused: no result is written, the next attempt goes on from the checkpoint
    return state["done"]


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


@pytest.fixture()
def stub(server):
    with open_channel(load_client_config(server.address)) as channel:
        yield cumulus_pb2_grpc.OrchestratorServiceStub(channel)


@pytest.fixture()
def client(server):
    with CumulusClient(server.address, log_to_driver=False) as c:
        yield c


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def training_job(client: CumulusClient, steps: int = STEPS):
    """Submit train(steps) and wait until it has saved a checkpoint; its JobRef."""
    ref = client.submit(train, steps)
    wait_for(lambda: ref.status().checkpoint_step is not None, "checkpoint")
    return ref


def finished_job(client: CumulusClient) -> str:
    ref = client.submit(add, 1, 2)
    assert ref.result(timeout=60) == 3
    return ref.job_id


def test_pause_and_resume_job_round_trips_and_the_job_goes_on_from_its_checkpoint(client, stub):
    """PauseJob answers once the job is PAUSED (was_running, its checkpoint step); ResumeJob answers its status,
    queued again; the job then runs on from its checkpoint, every step once, to its result."""
    ref = training_job(client)
    paused = stub.PauseJob(pb.PauseJobRequest(job_id=ref.job_id, grace_seconds=30), timeout=60)
    assert paused.was_running and paused.status.state == pb.PAUSED
    assert paused.status.job_id == ref.job_id and paused.status.checkpoint_step >= 0
    assert paused.status.checkpoints >= 1
    step = paused.status.checkpoint_step
    status = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=ref.job_id), timeout=10)
    assert status.state == pb.PAUSED and status.checkpoint_step == step
    resumed = stub.ResumeJob(pb.ResumeJobRequest(job_id=ref.job_id), timeout=10)
    assert resumed.status.job_id == ref.job_id and resumed.status.attempt == 2
    assert resumed.status.state not in (pb.PAUSED, pb.COMPLETED, pb.FAILED, pb.CANCELLED)
    assert ref.result(timeout=120) == list(range(STEPS))  # the result() of its submission waited through the pause
    final = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=ref.job_id), timeout=10)
    assert final.state == pb.COMPLETED and final.checkpoint_step > step


def test_pausing_twice_answers_the_paused_job_again(client, stub):
    ref = training_job(client)
    first = stub.PauseJob(pb.PauseJobRequest(job_id=ref.job_id), timeout=60)
    second = stub.PauseJob(pb.PauseJobRequest(job_id=ref.job_id), timeout=60)
    assert (first.was_running, second.was_running) == (True, False)
    assert first.status.state == second.status.state == pb.PAUSED
    assert second.status.checkpoint_step == first.status.checkpoint_step
    client.cancel(ref.job_id)


def test_wrong_states_are_failed_precondition_with_a_message(client, stub):
    ref = training_job(client)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ResumeJob(pb.ResumeJobRequest(job_id=ref.job_id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RUNNING, not PAUSED" in refused.value.details()
    client.cancel(ref.job_id)
    done = finished_job(client)
    for call, request in (("PauseJob", pb.PauseJobRequest(job_id=done)),
                          ("ResumeJob", pb.ResumeJobRequest(job_id=done))):
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub, call)(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, call
        assert "COMPLETED" in refused.value.details() and done in refused.value.details(), call


@pytest.mark.parametrize("call", ["PauseJob", "ResumeJob"])
def test_unknown_and_malformed_job_ids(stub, call):
    request = getattr(pb, f"{call}Request")
    with pytest.raises(grpc.RpcError) as unknown:
        getattr(stub, call)(request(job_id="fj999nosuch"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "fj999nosuch" in unknown.value.details()
    for bad in ("", "bad\x00id", "x" * 300):
        with pytest.raises(grpc.RpcError) as invalid:
            getattr(stub, call)(request(job_id=bad), timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(bad)
        assert "job_id" in invalid.value.details()


def test_client_and_jobref_pause_and_resume(server, client):
    """CumulusClient.pause/resume and JobRef.pause/resume answer a PauseResult and a JobInfo; a job that does not
    run yet is paused at once (was_running False) and resumes from the beginning (no checkpoint)."""
    ref = training_job(client)
    result = ref.pause(grace=30)
    assert isinstance(result, PauseResult)
    assert (result.job_id, result.state, result.was_running) == (ref.job_id, "PAUSED", True)
    assert isinstance(result.status, JobInfo) and result.status.state == "PAUSED"
    assert result.status.checkpoint_step is not None and result.status.checkpoints >= 1
    assert ref.status().checkpoint_step == result.status.checkpoint_step
    info = client.resume(ref.job_id)
    assert isinstance(info, JobInfo) and info.job_id == ref.job_id and info.state not in ("PAUSED", "COMPLETED")
    assert info.checkpoint_step == result.status.checkpoint_step
    again = client.pause(ref.job_id, grace=30)
    assert again.state == "PAUSED" and again.status.checkpoint_step >= result.status.checkpoint_step
    assert ref.resume().state not in ("PAUSED", "COMPLETED")
    assert ref.result(timeout=120) == list(range(STEPS))

    server.api.start_delay = 30  # the next job waits in the "queue"
    try:
        queued = client.submit(train, 3)
        wait_for(lambda: queued.status().state == "QUEUED", "QUEUED state")
        early = queued.pause()
    finally:
        server.api.start_delay = 0
    assert (early.state, early.was_running, early.status.checkpoint_step) == ("PAUSED", False, None)
    assert queued.resume().checkpoint_step is None
    assert queued.result(timeout=120) == [0, 1, 2]


def test_a_job_that_ignores_the_pause_is_stopped_after_its_grace(client):
    def stubborn() -> str:
        time.sleep(60)  # never asks should_pause()
        return "finished"

    ref = client.submit(stubborn)
    wait_for(lambda: ref.status().state == "RUNNING", "RUNNING state")
    started = time.monotonic()
    result = client.pause(ref.job_id, grace=1)
    assert result.state == "PAUSED" and result.was_running and result.status.checkpoint_step is None
    assert 1 <= time.monotonic() - started < 20
    assert "did not return" in result.status.reason
    client.cancel(ref.job_id)


def test_client_refusals_are_request_rejected_and_not_found(client):
    done = finished_job(client)
    with pytest.raises(RequestRejected, match="COMPLETED"):
        client.pause(done)
    with pytest.raises(RequestRejected, match="COMPLETED"):
        client.resume(done)
    with pytest.raises(NotFound):
        client.pause("fj999nosuch")
    with pytest.raises(NotFound):
        client.resume("fj999nosuch")


def test_the_client_raises_wrong_job_state_for_a_job_that_is_not_paused(client):
    done = finished_job(client)
    with pytest.raises(WrongJobState):
        client.resume(done)

"""Trace ids over gRPC (issue 14, item 5): a submission's ``traceparent`` metadata becomes the job's trace id, seen
in GetJobStatus, DescribeJob, the SubmitJob reply's initial metadata, the SDK's JobRef and ``cumulus describe``; a
submission without one (or with an invalid one, which is ignored, not refused) gets a fresh valid trace id. Served
by the real gRPC server over FakeSupervisorApi (tests/fakes/fake_api.py)."""

from __future__ import annotations

import json

import pytest

from cumulus.cli import main
from cumulus.client import packaging as pk
from cumulus.client.client import CumulusClient
from cumulus.client.connection import load_client_config, open_channel
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.tracing import TRACE_ID_REPLY_KEY, TRACEPARENT_ENV, is_trace_id
from tests.fakes.fake_api import running_fake_server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def add(a, b):
    return a + b


@pytest.fixture(scope="module")
def server():
    with running_fake_server() as srv:
        yield srv


@pytest.fixture()
def stub(server):
    with open_channel(load_client_config(server.address)) as channel:
        yield cumulus_pb2_grpc.OrchestratorServiceStub(channel)


@pytest.fixture(autouse=True)
def no_ambient_traceparent(monkeypatch):
    monkeypatch.delenv(TRACEPARENT_ENV, raising=False)


def submit(stub, metadata=()) -> tuple[str, str]:
    """Submit add(1, 2) with ``metadata``; the job id and the trace id the reply's initial metadata names."""
    request = pb.JobSubmission(code_package=pk.build_package(add, (1, 2), {}), gpu=0.5)
    stream = stub.SubmitJob(request, metadata=metadata, timeout=60)
    job_id = next(stream).job_id
    replied = dict(stream.initial_metadata()).get(TRACE_ID_REPLY_KEY, "")
    list(stream)  # to the job's end
    return job_id, replied


def test_a_traceparent_sent_is_the_jobs_trace_id_in_status_and_describe(stub):
    job_id, replied = submit(stub, metadata=(("traceparent", TRACEPARENT),))
    assert replied == TRACE
    assert stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10).trace_id == TRACE
    assert stub.DescribeJob(pb.DescribeJobRequest(job_id=job_id), timeout=10).status.trace_id == TRACE
    listed = stub.ListJobs(pb.ListJobsRequest(include_finished=True), timeout=10).jobs
    assert [j.trace_id for j in listed if j.job_id == job_id] == [TRACE]


@pytest.mark.parametrize("metadata", [
    (),
    (("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),),  # all-zero trace id
    (("traceparent", "not a traceparent"),),
    (("traceparent", "ff" + TRACEPARENT[2:]),),  # version ff is invalid
], ids=["none", "all-zero", "garbage", "version-ff"])
def test_without_a_valid_traceparent_the_job_gets_a_fresh_trace_id(stub, metadata):
    first, replied = submit(stub, metadata)
    second, _ = submit(stub, metadata)
    traces = [stub.GetJobStatus(pb.GetJobStatusRequest(job_id=j), timeout=10).trace_id for j in (first, second)]
    assert all(is_trace_id(t) for t in traces) and traces[0] != traces[1] and TRACE not in traces
    assert replied == traces[0]


def test_the_sdk_sends_a_trace_per_submission_and_the_ref_knows_it(server, monkeypatch):
    client = CumulusClient(server.address, log_to_driver=False)
    try:
        mine = client.submit(add, 1, 2, traceparent=TRACEPARENT)
        fresh = [client.submit_call(add, (2, 3)) for _ in range(2)]
        assert mine.trace_id == TRACE and mine.status().trace_id == TRACE and mine.result(60) == 3
        assert all(is_trace_id(ref.trace_id) and ref.status().trace_id == ref.trace_id for ref in fresh)
        assert fresh[0].trace_id != fresh[1].trace_id and TRACE not in {r.trace_id for r in fresh}
        assert client.job(mine.job_id).trace_id == TRACE  # a ref for an existing job reads it from the status

        monkeypatch.setenv(TRACEPARENT_ENV, TRACEPARENT)  # the caller's trace, from the environment
        assert client.run(add, 3, 4) == 7
        from_env = client.submit_call(add, (3, 4))
        assert from_env.trace_id == TRACE and from_env.result(60) == 7

        # The same idempotency key again, with a new trace: the same job, with its first trace id.
        monkeypatch.delenv(TRACEPARENT_ENV)
        first = client.submit_call(add, (5, 6), idempotency_key="trace-key")
        again = client.submit_call(add, (5, 6), idempotency_key="trace-key")
        assert again.job_id == first.job_id and again.trace_id == first.trace_id
    finally:
        client.close()


def test_cumulus_describe_prints_the_trace_id(server, stub, capsys):
    job_id, _ = submit(stub, metadata=(("traceparent", TRACEPARENT),))
    assert main(["describe", job_id, "--address", server.address]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("Trace id:") and line.endswith(TRACE) for line in out.splitlines()), out
    assert main(["describe", job_id, "--address", server.address, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["trace_id"] == TRACE
    assert main(["status", job_id, "--address", server.address]) == 0
    assert TRACE in capsys.readouterr().out

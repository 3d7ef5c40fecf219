"""Issue 13's "done when", on the local cluster with its defaults: the supervisor that `cumulus local up` started
serves TLS only; a call without a token, or with a revoked one, is UNAUTHENTICATED on every job RPC; one user
cannot see, watch, fetch or cancel another's job; and the SDK works unchanged for the user whose client config
`local up` wrote (its CA and admin token)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from cumulus.client.client import CumulusClient
from cumulus.client.connection import ClientConfig, open_channel
from cumulus.errors import NotFound, Unauthenticated
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc

STATE = Path("/var/lib/cumulus-local")
JOB_RPCS = {
    "SubmitJob": pb.JobSubmission(gpu=0.1), "WatchJob": pb.WatchJobRequest(job_id="x"),
    "GetJobStatus": pb.GetJobStatusRequest(job_id="x"), "DescribeJob": pb.DescribeJobRequest(job_id="x"),
    "CancelJob": pb.CancelJobRequest(job_id="x"), "ListWorkers": pb.ListWorkersRequest(),
    "ListJobs": pb.ListJobsRequest(),
}


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return "slept"


@pytest.fixture(scope="module")
def local(cluster):
    address = json.loads((STATE / "supervisor.json").read_text())["address"]
    admin = ClientConfig(address, token=(STATE / "admin.token").read_text().strip(), ca=str(STATE / "tls/ca.pem"))
    return address, admin


def raw(config: ClientConfig, method: str) -> grpc.StatusCode:
    with open_channel(config) as channel:
        stub = getattr(cumulus_pb2_grpc.OrchestratorServiceStub(channel), method)
        try:
            reply = stub(JOB_RPCS[method], timeout=20)
            list(reply) if method in ("SubmitJob", "WatchJob") else None
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_plaintext_channel_fails_and_no_token_is_unauthenticated_on_every_job_rpc(local):
    address, admin = local
    assert raw(ClientConfig(address, insecure=True), "ListJobs") == grpc.StatusCode.UNAVAILABLE
    anonymous = ClientConfig(address, ca=admin.ca)
    assert {method: raw(anonymous, method) for method in JOB_RPCS} == {
        method: grpc.StatusCode.UNAUTHENTICATED for method in JOB_RPCS}


def test_users_are_kept_to_their_own_jobs_and_a_revoked_token_stops_at_once(local):
    _, admin_config = local
    admin = CumulusClient(config=admin_config, log_to_driver=False)
    suffix = uuid.uuid4().hex[:8]
    names = [f"alice-{suffix}", f"bob-{suffix}"]
    alice, bob = (CumulusClient(config=ClientConfig(admin_config.address, token=admin.create_token(name)[1],
                                                    ca=admin_config.ca), log_to_driver=False) for name in names)
    try:
        ref = alice.submit(sleeper, 60, gpu=0.1, duration=120)
        for attempt in (bob.status, bob.describe, lambda j: list(bob.watch(j, idle_timeout=5)), bob.cancel):
            with pytest.raises(NotFound):
                attempt(ref.job_id)
        assert ref.job_id not in [j.job_id for j in bob.list_jobs()]
        assert [j.job_id for j in alice.list_jobs()] == [ref.job_id]
        assert alice.status(ref.job_id).owner == names[0]

        admin.revoke_token(names[0])
        with pytest.raises(Unauthenticated):
            alice.status(ref.job_id)
        assert admin.cancel(ref.job_id).was_running  # the admin sees and cancels every job
    finally:
        for name in names:
            admin.revoke_token(name)


def test_the_sdk_and_the_cli_work_unchanged_with_the_config_local_up_wrote(local, tmp_path):
    address, admin = local
    config_file = Path.home() / ".config/cumulus/config.yaml"
    assert config_file.stat().st_mode & 0o777 == 0o600
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": str(Path(__file__).parents[2])}
    hello = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "examples/hello.py")], env=env,
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert hello.returncode == 0 and hello.stdout.strip().splitlines()[-1] == "4", hello.stderr
    health = subprocess.run([sys.executable, "-m", "cumulus", "health"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert health.returncode == 0 and health.stdout.startswith("SERVING"), health.stdout + health.stderr

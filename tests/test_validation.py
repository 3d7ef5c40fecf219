"""Malformed requests through a REAL gRPC server (loopback) backed by FakeSupervisorApi.

Each is answered with the right status code (mostly INVALID_ARGUMENT) and a message that says what to fix, and
the server keeps serving afterwards.
"""

from __future__ import annotations

import io
import json
import math
import stat
import zipfile

import grpc
import pytest

from cumulus.client.connection import load_client_config, open_channel
from cumulus.client import packaging as pk
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from tests.fakes.fake_api import running_fake_server
from tests.test_jobformat import zip_with_directory

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def add(a, b):
    return a + b


GOOD = pk.build_package(add, (2, 2))


@pytest.fixture(scope="module")
def server():
    # Small limits so that "too big" is cheap to test: packages 1 MiB, gRPC messages 2 MiB.
    with running_fake_server(jobs_max_package_mb=1, grpc_max_message_mb=2, jobs_max_duration=3600) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    with open_channel(load_client_config(server.address)) as channel:
        yield cumulus_pb2_grpc.OrchestratorServiceStub(channel)


def zip_of(members: list[tuple[zipfile.ZipInfo | str, bytes]], manifest: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if manifest is not False:
            zf.writestr(pk.MANIFEST, json.dumps(manifest or {
                "format": 1, "python": "3.11", "cloudpickle": "3.1.3", "function": "m.f", "requirements": [],
                "modules": [], "env": {}}))
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("src/evil")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def submission(**fields) -> pb.JobSubmission:
    base = {"code_package": GOOD, "gpu": 0.5, "duration_seconds": 60}
    base.update(fields)
    return pb.JobSubmission(**base)


# (id, request fields, expected code, words the message must contain)
CASES = [
    ("gpu-2.3", {"gpu": 2.3}, INVALID, ["gpu=2.3", "0 < gpu <= 1", "1..8"]),
    ("gpu-0", {"gpu": 0.0}, INVALID, ["gpu=0", "0 < gpu <= 1"]),
    ("gpu-nan", {"gpu": math.nan}, INVALID, ["nan", "0 < gpu <= 1"]),
    ("gpu-negative", {"gpu": -1.0}, INVALID, ["gpu=-1", "whole number of devices 1..8"]),
    ("gpu-9", {"gpu": 9.0}, INVALID, ["gpu=9", "1..8"]),
    ("gpu-inf", {"gpu": math.inf}, INVALID, ["inf", "0 < gpu <= 1"]),
    ("duration-too-long", {"duration_seconds": 3601}, INVALID, ["duration_seconds=3601", "1..3600"]),
    ("package-empty", {"code_package": b""}, INVALID, ["empty", "build_package"]),
    ("package-not-zip", {"code_package": b"PK\x03\x04 definitely not a zip"}, INVALID, ["not a valid zip"]),
    ("package-too-big", {"code_package": b"x" * (1024 * 1024 + 10)}, INVALID, ["over the limit", "1048586 bytes", "1048576 bytes"]),
    ("package-absolute-path", {"code_package": zip_of([(pk.CALL, b"x"), ("/etc/passwd", b"x")])}, INVALID,
     ["absolute path"]),
    ("package-dotdot", {"code_package": zip_of([(pk.CALL, b"x"), ("src/../../escape.py", b"x")])}, INVALID,
     ["'..'"]),
    ("package-symlink", {"code_package": zip_of([(pk.CALL, b"x"), (symlink_entry(), b"/etc/passwd")])},
     INVALID, ["symbolic link"]),
    ("package-no-manifest", {"code_package": zip_of([(pk.CALL, b"x")], manifest=False)}, INVALID,
     ["cumulus-job.json"]),
    ("package-env-reserved", {"code_package": zip_of([(pk.CALL, b"x")], manifest={
        "format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f", "env": {"CUMULUS_CODE_DIR": "/"}})},
     INVALID, ["CUMULUS_", "reserved"]),
    ("package-format", {"code_package": zip_of([(pk.CALL, b"x")], manifest={"format": 99})}, INVALID,
     ["format 99"]),
    # the job format's rules hold for the package's manifest as for the request fields (cumulus.jobformat)
    ("package-env-reserved-lowercase", {"code_package": zip_of([(pk.CALL, b"x")], manifest={
        "format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f", "env": {"cumulus_code_dir": "/"}})},
     INVALID, ["cumulus-job.json", "'cumulus_code_dir'", "reserved"]),
    ("package-req-empty", {"code_package": zip_of([(pk.CALL, b"x")], manifest={
        "format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f", "requirements": ["numpy", ""]})},
     INVALID, ["cumulus-job.json", "empty requirement"]),
    ("package-req-path", {"code_package": zip_of([(pk.CALL, b"x")], manifest={
        "format": 1, "python": "3.11", "cloudpickle": "3", "function": "m.f", "requirements": ["./pkg"]})},
     INVALID, ["cumulus-job.json", "URL or a path"]),
    ("req-editable", {"requirements": ["-e ."]}, INVALID, ["pip option"]),
    ("req-index-url", {"requirements": ["--index-url https://evil.example/simple"]}, INVALID, ["pip option"]),
    ("req-bare-url", {"requirements": ["https://evil.example/x.whl"]}, INVALID, ["URL or a path"]),
    ("req-path", {"requirements": ["./my/local/pkg"]}, INVALID, ["URL or a path"]),
    ("req-unparsable", {"requirements": ["numpy>="]}, INVALID, ["not a valid requirement", "numpy>=1.26"]),
    ("req-file-url", {"requirements": ["pkg @ file:///home/me/pkg"]}, INVALID, ["file:", "https://"]),
    ("req-line-break", {"requirements": ["numpy\nrequests"]}, INVALID, ["line break"]),
    ("req-empty", {"requirements": ["  "]}, INVALID, ["empty requirement"]),
    ("req-mismatch", {"requirements": ["numpy>=1.26"]}, INVALID, ["differ from the package", "requirements="]),
    ("env-digit", {"env": {"1BAD": "x"}}, INVALID, ["'1BAD'", "[A-Za-z_][A-Za-z0-9_]*"]),
    ("env-dash", {"env": {"A-B": "x"}}, INVALID, ["'A-B'", "not a valid variable name"]),
    ("env-reserved", {"env": {"CUMULUS_OUTPUT_DIR": "/etc"}}, INVALID, ["CUMULUS_", "reserved"]),
    ("env-reserved-lowercase", {"env": {"cumulus_output_dir": "/etc"}}, INVALID, ["CUMULUS_", "reserved"]),
    ("env-newline", {"env": {"A\n": "x"}}, INVALID, ["not a valid variable name"]),
    ("env-nul", {"env": {"OK": "a\0b"}}, INVALID, ["NUL"]),
    ("env-pip-index", {"env": {"PIP_INDEX_URL": "https://evil.example/simple"}}, INVALID,
     ["'PIP_INDEX_URL'", "not allowed in a job's env", "installer"]),
    ("env-ld-preload", {"env": {"LD_PRELOAD": "/tmp/x.so"}}, INVALID, ["'LD_PRELOAD'", "dynamic loader"]),
    ("env-pythonpath", {"env": {"PYTHONPATH": "/tmp"}}, INVALID, ["'PYTHONPATH'", "Python interpreter"]),
    ("env-too-big", {"env": {f"V{i}": "x" * 32768 for i in range(40)}}, INVALID,
     ["bytes in all (names and values)", "1 MiB"]),
    ("gpu-below-minimum", {"gpu": 1e-10}, INVALID, ["gpu=1e-10", "smallest share", "0.01"]),
    ("gpu-denormal", {"gpu": 5e-324}, INVALID, ["smallest share", "0.01"]),
    ("package-too-many-entries", {"code_package": zip_with_directory(20_000, 20_000)}, INVALID,
     ["20000 entries", "at most 10000"]),
    ("package-directory-lies", {"code_package": zip_with_directory(20_000, 5)}, INVALID,
     ["not a valid zip", "does not hold the 5 entries"]),
    ("name-too-long", {"name": "n" * 200}, INVALID, ["name", "at most 128"]),
    ("name-control-char", {"name": "bad\x1bname"}, INVALID, ["control character"]),
    ("priority-range", {"priority": 5000}, INVALID, ["priority=5000", "-1000..1000"]),
    ("retries-range", {"retries": 100}, INVALID, ["retries=100", "0..10"]),
    ("idempotency-key-too-long", {"idempotency_key": "k" * 500}, INVALID, ["idempotency_key", "at most"]),
    ("unsatisfiable-8-gpus", {"gpu": 8.0}, grpc.StatusCode.FAILED_PRECONDITION, ["8 whole devices", "largest"]),
    ("over-grpc-message-limit", {"code_package": b"x" * (3 * 1024 * 1024)}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     ["larger than max"]),
]


@pytest.mark.parametrize("fields,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_submission_is_refused_with_a_helpful_message(stub, fields, code, words):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.SubmitJob(submission(**fields), timeout=30))
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word.lower() in info.value.details().lower(), (word, info.value.details())


def test_at_least_twenty_malformed_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("method,request_,code,word", [
    ("WatchJob", pb.WatchJobRequest(job_id=""), INVALID, "job_id is empty"),
    ("GetJobStatus", pb.GetJobStatusRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND, "no job 'nope'"),
    ("CancelJob", pb.CancelJobRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND, "no job 'nope'"),
    ("WatchJob", pb.WatchJobRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND, "no job 'nope'"),
    ("GetJobStatus", pb.GetJobStatusRequest(job_id="x\x00y"), INVALID, "not a job id"),
])
def test_bad_job_ids(stub, method, request_, code, word):
    with pytest.raises(grpc.RpcError) as info:
        reply = getattr(stub, method)(request_, timeout=10)
        if method == "WatchJob":
            list(reply)
    assert info.value.code() == code
    assert word in info.value.details()


def test_valid_requests_pass_and_the_server_still_serves_after_bad_input(stub, server):
    for fields, *_ in [c[1:] for c in CASES[:5]]:  # a few more bad ones in a row
        with pytest.raises(grpc.RpcError):
            list(stub.SubmitJob(submission(**fields), timeout=30))
    assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status == pb.HealthCheckResponse.SERVING
    ok_reqs = pk.build_package(add, (2, 2), requirements=["numpy>=1.26; python_version>='3.10'"])
    from cumulus.rpc.convert import spec_from_submission

    spec = spec_from_submission(submission(code_package=ok_reqs, requirements=["numpy>=1.26; python_version>='3.10'"],
                                           duration_seconds=0), server.settings)
    assert spec.requirements == ("numpy>=1.26; python_version>='3.10'",)
    assert spec.duration == server.settings.jobs.default_duration  # 0 means the default
    events = list(stub.SubmitJob(submission(gpu=1.0), timeout=60))
    states = [pb.JobState.Name(e.state) for e in events if e.WhichOneof("kind") == "state"]
    assert states[-1] == "COMPLETED", events
    assert pk.decode_result([e for e in events if e.WhichOneof("kind") == "result"][0].result.envelope).value == 4

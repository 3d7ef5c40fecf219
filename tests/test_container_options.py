"""The per-job container options ``memory``, ``cpus`` and ``network``: checked by the SDK at the call site
(``@remote``, ``.options``, ``submit``), sent on the wire as ``memory_bytes``/``cpus``/``network``, and checked
again by the supervisor against its ``containers`` settings (:func:`spec_from_submission`)."""

from __future__ import annotations

import pytest

import cumulus
from cumulus.client.client import CumulusClient
from cumulus.client.options import normalize_options
from cumulus.config import load_settings
from cumulus.errors import InvalidRequest
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.submission import spec_from_submission
from cumulus.client.packaging import build_package
from tests.fakes.fake_api import running_fake_server

MiB, GiB = 1 << 20, 1 << 30


def job():
    return 1


@pytest.mark.parametrize("given, expected", [
    ({"memory": 4096}, {"memory": 4096 * MiB}), ({"memory": "512MiB"}, {"memory": 512 * MiB}),
    ({"memory": "8GiB"}, {"memory": 8 * GiB}), ({"memory": " 1.5 gib "}, {"memory": 3 * 512 * MiB}),
    ({"memory": "1TiB"}, {"memory": 1 << 40}), ({"cpus": 2}, {"cpus": 2.0}), ({"cpus": 0.5}, {"cpus": 0.5}),
    ({"network": "internet"}, {"network": "internet"}), ({"network": "none"}, {"network": "none"}),
])
def test_good_container_options(given, expected):
    assert normalize_options(given) == expected


@pytest.mark.parametrize("given, words", [
    ({"memory": "8GB"}, "'512MiB' or '8GiB'"), ({"memory": "lots"}, "give MiB as an int"),
    ({"memory": 1.5}, "give MiB as an int"), ({"memory": True}, "give MiB as an int"),
    ({"memory": 15}, "minimum of 16 MiB"), ({"memory": -1}, "minimum of 16 MiB"), ({"memory": "0MiB"}, "minimum"),
    ({"cpus": 0}, "0.01..4096"), ({"cpus": -1}, "0.01..4096"), ({"cpus": float("nan")}, "0.01..4096"),
    ({"cpus": float("inf")}, "0.01..4096"), ({"cpus": True}, "0.01..4096"), ({"cpus": "2"}, "0.01..4096"),
    ({"cpus": 5000}, "0.01..4096"), ({"network": "host"}, "'internet'"), ({"network": ""}, "'none'"),
    ({"network": "bridge"}, "no network at all"), ({"memroy": 1}, "did you mean memory"),
])
def test_bad_container_options_fail_at_the_call_site(given, words):
    with pytest.raises(InvalidRequest, match=None) as info:
        normalize_options(given)
    assert words in str(info.value)
    with pytest.raises(InvalidRequest):
        cumulus.remote(**given)(job)
    with pytest.raises(InvalidRequest):
        cumulus.remote(job).options(**given)


def submission(**fields) -> pb.JobSubmission:
    return pb.JobSubmission(code_package=build_package(job, ()), gpu=0.5, **fields)


SETTINGS = load_settings(environ={}, overrides={"containers.max_memory_mb": 8192, "containers.memory_mb": 1024,
                                                "containers.max_cpus": 4.0, "containers.cpus": 1.0})


def test_the_supervisor_takes_the_options_within_its_bounds():
    spec = spec_from_submission(submission(memory_bytes=8192 * MiB, cpus=4.0, network="none"), SETTINGS)
    assert (spec.memory_bytes, spec.cpus, spec.network) == (8192 * MiB, 4.0, "none")
    spec = spec_from_submission(submission(memory_bytes=16 * MiB, cpus=0.01, network="internet"), SETTINGS)
    assert (spec.memory_bytes, spec.cpus, spec.network) == (16 * MiB, 0.01, "internet")
    default = spec_from_submission(submission(), SETTINGS)  # 0 / 0.0 / "": the containers defaults, at run time
    assert (default.memory_bytes, default.cpus, default.network) == (0, 0.0, "")


@pytest.mark.parametrize("fields, words", [
    ({"memory_bytes": 8192 * MiB + 1}, "memory_bytes=8589934593 is out of range; allowed 16777216..8589934592"),
    ({"memory_bytes": 15 * MiB}, "16 MiB..8192 MiB; 0 means the default, 1024 MiB"),
    ({"cpus": 4.5}, "cpus=4.5 is out of range; allowed 0.01..4 cores (0 means the default, 1)"),
    ({"cpus": -1.0}, "allowed 0.01..4 cores"), ({"cpus": 0.001}, "allowed 0.01..4 cores"),
    ({"cpus": float("nan")}, "allowed 0.01..4 cores"), ({"cpus": float("inf")}, "allowed 0.01..4 cores"),
    ({"network": "host"}, "network='host' is not allowed; use 'internet'"),
    ({"network": "none\n"}, "is not allowed"),
])
def test_the_supervisor_refuses_what_its_settings_do_not_allow(fields, words):
    with pytest.raises(InvalidRequest) as info:
        spec_from_submission(submission(**fields), SETTINGS)
    assert words in str(info.value)


def test_the_sdk_sends_the_options(monkeypatch):
    with running_fake_server() as server:
        monkeypatch.setenv("CUMULUS_ADDRESS", server.address)
        client = CumulusClient(server.address)
        try:
            a = client.submit(job, memory="2GiB", cpus=1.5, network="none")
            b = client.submit_call(cumulus.remote(memory=512)(job).options(cpus=0.5, network="internet"))
            c = client.submit(job)
            specs = [server.api.jobs[ref.job_id].record.spec for ref in (a, b, c)]
            for ref in (a, b, c):
                assert ref.result(timeout=60) == 1
        finally:
            client.close()
    assert [(s.memory_bytes, s.cpus, s.network) for s in specs] == [
        (2 * GiB, 1.5, "none"), (512 * MiB, 0.5, "internet"), (0, 0.0, "")]

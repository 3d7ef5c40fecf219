"""Metrics and the HTTP port, end to end on the in-memory fakes: the real supervisor serving real gRPC and its HTTP
port (TLS, as in production) on loopback; jobs submitted through the SDK; ``/metrics`` scraped over HTTPS and
parsed with prometheus_client's own parser. Also the pieces alone: metrics off, stale gauges, labels."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import grpc
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from cumulus import metrics
from cumulus.app import open_supervisor
from cumulus.client.client import CumulusClient
from cumulus.metrics import DeviceShare, Metrics, Snapshot
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
from cumulus.rpc.http import HttpListenError, serve_http
from cumulus.resources.ssh import command_name
from tests.credentials import run_credentials
from tests.fakes.fake_api import free_port
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings
from tests.trio_thread import serving_in_thread

JOBS = 3


def work(x: int) -> int:
    return x * 2


@dataclasses.dataclass(frozen=True)
class Served:
    address: str
    http: str


@contextlib.contextmanager
def supervisor_with_http(**overrides: Any) -> Iterator[Served]:
    address = f"127.0.0.1:{free_port()}"
    conf = settings(**{"grpc.listen": address, "server.http_listen": "127.0.0.1:0", **overrides})

    async def serve(ready: Callable[[Any], None]) -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(1), fake_node(2)], nursery)
            backends = dataclasses.replace(world.backends(), needs_asyncio=True)  # the gRPC server needs it
            async with open_supervisor(conf, backends=backends) as sup:
                with trio.fail_after(20):
                    while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                        await trio.sleep(0.05)
                ready(Served(address, sup.http_address))
                await trio.sleep_forever()

    with serving_in_thread(serve, name="metrics-supervisor", start_timeout=60) as served:
        yield served


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(run_credentials().ca))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=tls_context(), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= ls)


def finished(ref: Any) -> str:
    """The job's terminal state (the fakes run no function: their result is no value to look at)."""
    deadline = time.monotonic() + 30
    while not ref.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return ref.state


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with supervisor_with_http() as served:
        with CumulusClient(served.address, log_to_driver=False) as client:
            refs = [client.submit(work, i, env={"FAKE_RUNTIME": "0.1"}, log_to_driver=False) for i in range(JOBS)]
            assert [finished(ref) for ref in refs] == ["COMPLETED"] * JOBS
        yield served


def scraped_after_teardown(served: Served) -> dict:
    deadline = time.monotonic() + 20
    while True:  # a job's end is counted once its teardown is over, just after its result reached the caller
        status, text = get(served.http + "/metrics")
        assert status == 200
        scraped = samples(text)
        if value(scraped, "cumulus_jobs_finished_total") >= JOBS or time.monotonic() > deadline:
            return scraped
        time.sleep(0.05)


def test_http_port_serves_tls_with_the_grpc_certificate(served):
    assert served.http.startswith("https://127.0.0.1:")
    with pytest.raises(urllib.error.URLError):  # not trusted without the CA
        urllib.request.urlopen(served.http + "/healthz", timeout=10)
    assert get(served.http + "/healthz") == (200, "ok\n")
    assert get(served.http + "/readyz") == (200, "ready\n")
    status, text = get(served.http + "/nothing-here")
    assert status == 404 and "/metrics" in text


def test_jobs_are_counted_by_outcome_and_phase(served):
    scraped = scraped_after_teardown(served)
    assert value(scraped, "cumulus_jobs_submitted_total") == JOBS
    assert value(scraped, "cumulus_jobs_finished_total", state="COMPLETED", reason="none") == JOBS
    for phase in ("queue", "placement", "partition", "upload", "service_create", "first_log", "run", "teardown"):
        assert value(scraped, "cumulus_job_phase_seconds_count", phase=phase) >= JOBS, phase
    assert value(scraped, "cumulus_resource_acquire_seconds_count", resource="service") == JOBS
    assert value(scraped, "cumulus_resource_release_seconds_count", resource="partition") == JOBS
    assert value(scraped, "cumulus_leaks_found_total") == 0
    assert value(scraped, "cumulus_device_seconds_total") > 0


def test_gauges_of_now_are_read_at_scrape_time(served):
    scraped = scraped_after_teardown(served)
    assert value(scraped, "cumulus_ready") == 1
    assert value(scraped, "cumulus_workers", state="ready") == 2
    assert value(scraped, "cumulus_device_share_total") == 2  # one device on each fake node
    assert value(scraped, "cumulus_device_share_used") == 0  # every job ended
    assert value(scraped, "cumulus_queue_length") == 0
    assert value(scraped, "cumulus_build_info") == 1


def test_rpcs_are_counted_by_method_and_code(served):
    before = samples(get(served.http + "/metrics")[1])
    creds = grpc.ssl_channel_credentials(run_credentials().ca.read_bytes())
    with grpc.secure_channel(served.address, creds) as channel:
        stub = cumulus_pb2_grpc.OrchestratorServiceStub(channel)
        stub.HealthCheck(pb.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListJobs(pb.ListJobsRequest(), timeout=10)  # no token
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetJobStatus(pb.GetJobStatusRequest(job_id="no-such-job"), timeout=10,
                              metadata=[("authorization", f"Bearer {run_credentials().admin_token}")])
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    after = samples(get(served.http + "/metrics")[1])
    for method, code in (("HealthCheck", "OK"), ("ListJobs", "UNAUTHENTICATED"), ("GetJobStatus", "NOT_FOUND")):
        assert value(after, "cumulus_rpcs_total", method=method, code=code) \
            - value(before, "cumulus_rpcs_total", method=method, code=code) == 1, (method, code)
    assert value(after, "cumulus_rpc_seconds_count", method="HealthCheck") >= 1


def test_metrics_off_counts_nothing_and_serves_no_metrics():
    with supervisor_with_http(**{"metrics.enabled": False}) as served:
        with CumulusClient(served.address, log_to_driver=False) as client:
            assert finished(client.submit(work, 4, env={"FAKE_RUNTIME": "0.05"}, log_to_driver=False)) == "COMPLETED"
        status, text = get(served.http + "/metrics")
        assert status == 404 and "metrics.enabled" in text
        assert get(served.http + "/readyz") == (200, "ready\n")
    assert metrics.OFF.render() == b""


def test_a_taken_http_port_is_a_clear_error():
    async def main() -> None:
        from cumulus.config import SecuritySettings

        insecure = SecuritySettings(insecure=True)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: serve_http(None, Metrics(), "127.0.0.1:0",
                                                                     security=insecure, task_status=task_status))
            with pytest.raises(HttpListenError, match="server.http_listen"):
                await serve_http(None, Metrics(), url.removeprefix("http://"), security=insecure)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_snapshot_replaces_the_label_sets_of_the_last_one():
    m = Metrics()
    shares = (DeviceShare("w1", "0", "pocl", False, 0.5), DeviceShare("w2", "0", "pocl", False, 0.0))
    m.set_snapshot(Snapshot(True, {"RUNNING": 2}, 1, 12.5, {"ready": 2}, shares))
    m.set_snapshot(Snapshot(True, {"QUEUED": 1}, 0, 0.0, {"ready": 1}, shares[:1]))
    scraped = samples(m.render().decode())
    assert value(scraped, "cumulus_jobs", state="RUNNING") == 0 and value(scraped, "cumulus_jobs", state="QUEUED") == 1
    assert not any(n == "cumulus_device_share_total" and ("worker", "w2") in ls for n, ls in scraped)
    assert value(scraped, "cumulus_device_share_used", worker="w1", is_gpu="false") == 0.5


def test_ssh_command_labels_stay_bounded():
    assert command_name("/opt/cumulus/bin/cumulus-partition-holder --renew x") == "cumulus-partition-holder"
    assert command_name("ls -1A -- /var/lib/cumulus/jobs") == "ls"
    assert command_name("set -e; rm -rf /x") == "set"
    assert command_name("$(evil) arg") == "script"
    assert command_name("") == "script"


def test_metrics_outside_a_supervisor_are_off():
    assert metrics.current() is metrics.OFF
    fresh = Metrics()
    with metrics.bound(fresh):
        assert metrics.current() is fresh
        metrics.current().jobs_submitted.labels("ann").inc()
    assert metrics.current() is metrics.OFF
    assert value(samples(fresh.render().decode()), "cumulus_jobs_submitted_total", user="ann") == 1


async def test_resource_owners_report_acquisitions_releases_and_leaks():
    from contextlib import asynccontextmanager

    from cumulus.actors.ownership import ResourceOwner, observed_by

    @asynccontextmanager
    async def fails_to_release():
        yield "held"
        raise OSError("the worker said no")

    @asynccontextmanager
    async def partition():
        await trio.sleep(0.01)
        yield "p"

    m = Metrics()
    with observed_by(m):
        async with ResourceOwner("job:test") as owner:
            await owner.own(partition(), what="partition")
            await owner.own(fails_to_release(), what="service", same_task=True)
    scraped = samples(m.render().decode())
    assert value(scraped, "cumulus_leaks_found_total", where="release", resource="service") == 1
    assert value(scraped, "cumulus_resource_release_seconds_count", resource="partition") == 1
    assert value(scraped, "cumulus_job_phase_seconds_count", phase="partition") == 1
    assert value(scraped, "cumulus_job_phase_seconds_sum", phase="partition") >= 0.01

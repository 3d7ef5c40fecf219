"""Warm services on the real local cluster (issue 19), through a REAL ``cumulus supervisor`` process: each worker
keeps a started container per device; a job takes one (its history says so), runs in it and leaves nothing; each
warm container runs exactly one job (the pool makes a new one after each); a warm container killed with
``docker kill`` while idle is replaced; a cancelled warm job leaves nothing; and after the supervisor is SIGKILLed
while its pools refill, a new one reaps the old idle warm services, keeps the one a running job took, and makes
new ones.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import docker
import pytest

from helpers import cluster_description, swarm_services
from supervisor_process import remote_supervisor, start_supervisor  # noqa: F401  (the module-scoped fixture)

JOB_TIMEOUT = 120.0


def add(a, b):
    return a + b


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return seconds


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def idle_warm(sid: str) -> dict[str, dict]:
    """The idle warm services of ``sid`` whose container runs: warm id -> {service, node, container}."""
    desc = cluster_description()
    jobs_dir = desc.get("jobs_dir", "/var/lib/cumulus/jobs")
    found = {}
    for node in desc["nodes"]:
        if node["role"] != "worker":
            continue
        client = docker.APIClient(base_url=f"unix://{node['docker_socket']}", version="auto", timeout=30)
        try:
            for c in client.containers(filters={"label": ["cumulus.warm=1", f"cumulus.supervisor_id={sid}"],
                                                "status": "running"}):
                warm_id = c["Labels"]["cumulus.job_id"]
                if os.path.isdir(os.path.join(jobs_dir, warm_id)):
                    found[warm_id] = {"node": node, "container": c["Id"],
                                      "service": c["Labels"].get("com.docker.swarm.service.name")}
        finally:
            client.close()
    return found


def wait_pool_full(sid: str, count: int) -> None:
    """Until ``count`` idle warm containers run, and the supervisor heard so (its task watcher polls every 0.1 s)."""
    wait_for("every device's warm service", lambda: len(idle_warm(sid)) >= count)
    time.sleep(0.5)


def devices_per_worker(client: Any) -> int:
    return sum(len(w.devices) for w in client.list_workers())


@pytest.fixture
def sup(remote_supervisor):  # noqa: F811
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


def test_jobs_take_warm_services_each_runs_one_and_the_pool_refills(sup):
    with sup.client() as client:
        per_pool = devices_per_worker(client)
        wait_pool_full(sup.sid, per_pool)
        seen: set[str] = set()
        job_ids = []
        for i in range(3):
            before = set(idle_warm(sup.sid))
            ref = client.submit_call(add, (i, i), gpu=0.25, duration=120)
            assert ref.result(timeout=JOB_TIMEOUT) == 2 * i
            texts = [e.text for e in client.describe(ref.job_id).events]
            started = [t for t in texts if t.startswith("took the warm service")]
            assert len(started) == 1, texts
            name = started[0].split()[4]
            assert name not in seen  # never the same warm container twice
            seen.add(name)
            job_ids.append(ref.job_id)
            wait_for("the pool to refill", lambda: len(idle_warm(sup.sid)) >= per_pool
                     and set(idle_warm(sup.sid)) != before)
            time.sleep(0.5)
        sup.assert_nothing_left(job_ids, expect={j: "COMPLETED" for j in job_ids})


def test_a_warm_container_killed_while_idle_is_replaced(sup):
    with sup.client() as client:
        per_pool = devices_per_worker(client)
        warm = wait_for("warm services", lambda: len(idle_warm(sup.sid)) >= per_pool and idle_warm(sup.sid))
        victim_id, victim = next(iter(warm.items()))
        worker = docker.APIClient(base_url=f"unix://{victim['node']['docker_socket']}", version="auto", timeout=30)
        try:
            worker.kill(victim["container"])
        finally:
            worker.close()
        wait_for("the killed one replaced", lambda: victim_id not in idle_warm(sup.sid)
                 and len(idle_warm(sup.sid)) >= per_pool, timeout=60)
        time.sleep(0.5)
        wait_for("its service removed", lambda: victim["service"] not in swarm_services(sup.sid))
        ref = client.submit_call(add, (2, 3), gpu=0.25, duration=120)
        assert ref.result(timeout=JOB_TIMEOUT) == 5
        sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "COMPLETED"})


def test_a_cancelled_warm_job_leaves_nothing(sup):
    with sup.client() as client:
        per_pool = devices_per_worker(client)
        wait_pool_full(sup.sid, per_pool)
        ref = client.submit_call(sleeper, (60,), gpu=0.25, duration=120)
        wait_for("RUNNING", lambda: client.status(ref.job_id).state == "RUNNING", timeout=JOB_TIMEOUT)
        assert any(e.text.startswith("took the warm service") for e in client.describe(ref.job_id).events)
        report = ref.cancel()
        assert report.state == "CANCELLED" and not report.leaked
        sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "CANCELLED"}, teardown_timeout=0.1)


def test_a_supervisor_killed_while_its_pools_refill_is_replaced_cleanly(cluster, tmp_path_factory):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    directory = tmp_path_factory.mktemp("warm-kill")
    sid = f"tw-{secrets.token_hex(4)}"
    first = start_supervisor(directory, hostnames, sid=sid)
    second = None
    try:
        with first.client() as client:
            per_pool = devices_per_worker(client)
            wait_pool_full(sid, per_pool)
            old_idle = set(idle_warm(sid))
            ref = client.submit_call(sleeper, (6,), gpu=0.25, duration=120)
            wait_for("RUNNING", lambda: client.status(ref.job_id).state == "RUNNING", timeout=JOB_TIMEOUT)
            job_id = ref.job_id
        first.proc.kill()  # SIGKILL while the pool replaces the warm service the job took
        first.proc.wait(10)
        second = start_supervisor(directory, hostnames, sid=sid)
        with second.client() as client:
            assert client.job(job_id).result(timeout=JOB_TIMEOUT) == 6  # re-adopted in its warm container
            wait_for("new warm services", lambda: len(idle_warm(sid)) >= per_pool)
            assert not (set(idle_warm(sid)) & old_idle), "the killed supervisor's idle warm services were kept"
        second.assert_nothing_left([job_id], expect={job_id: "COMPLETED"})
    finally:
        for sup in (first, second):
            if sup is not None and sup.alive():
                assert sup.stop() == 0, sup.log_tail()
    assert swarm_services(sid) == [], "warm services left after the supervisor stopped"

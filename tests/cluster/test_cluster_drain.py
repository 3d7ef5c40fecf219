"""Worker drain and activate on the real local cluster, the way an operator does it: the ``cumulus`` CLI (admin
token) and the SDK for the jobs, against a REAL ``cumulus supervisor`` process of this checkout's code
(``supervisor_process.start_supervisor``: its own supervisor id, so nothing of the shared local supervisor is
touched; the drain labels are on the Swarm nodes, so every supervisor of the cluster sees them).

A job is steered to cw2 by draining cw1 while it is placed (then cw1 is activated again). Then: cw2 is drained
while that job runs there; a new job goes to cw1; the running job completes with its result; cw2 shows "drained".
A drain with a short ``--timeout`` cancels a long job there (its reason says the worker was drained) and
``--wait`` returns once it is gone; activate brings cw2 back. Both workers are activated in a ``finally``, and
every job of the test is cancelled there if still live. (Workers are never removed here: the join test removes
the node it added with ``cumulus worker remove``.)
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import pytest

from supervisor_process import start_supervisor

pytestmark = pytest.mark.cluster

JOB_TIMEOUT = 180.0
SETTLE_TIMEOUT = 180.0  # until a drained worker's jobs (ours, or another session's) have ended


def nap(seconds: float, value: str) -> str:
    import time

    time.sleep(seconds)
    return value


@pytest.fixture(scope="module")
def sup(cluster, tmp_path_factory):
    workers = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    assert {"cw1", "cw2"} <= set(workers), workers
    process = start_supervisor(tmp_path_factory.mktemp("drain-supervisor"), ["cw1", "cw2"])
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.log_tail()


def cumulus(sup, *args: str, check: bool = True) -> Any:
    res = sup.cli(*args)
    if check and res.returncode != 0:
        raise AssertionError(f"cumulus {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def availability(sup) -> dict[str, str]:
    return {w["hostname"]: w["availability"] for w in json.loads(cumulus(sup, "workers", "-o", "json").stdout)}


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)


@pytest.fixture
def client(sup):
    with sup.client() as connected:
        yield connected


@pytest.fixture
def drains(sup, client):
    """The job ids the test submitted; afterwards cw1 and cw2 are active again and those jobs are over."""
    submitted: list[str] = []
    try:
        yield submitted
    finally:
        for name in ("cw1", "cw2"):
            cumulus(sup, "worker", "activate", name, check=False)
        for job_id in submitted:
            try:
                if not client.status(job_id).finished:
                    client.cancel(job_id)
            except Exception as error:  # noqa: BLE001 - reported, the other jobs are still cancelled
                print(f"cleanup: cancelling {job_id} failed: {error}")
        now = availability(sup)
        assert (now["cw1"], now["cw2"]) == ("active", "active"), now
        assert not sup.leftovers(submitted)


def running_on(client, job_id: str) -> str:
    def placed() -> str:
        status = client.status(job_id)
        assert not status.finished, status
        return status.worker if status.state == "RUNNING" else ""

    return wait_for(f"job {job_id} running", placed, JOB_TIMEOUT)


def test_a_drained_worker_finishes_its_job_takes_no_new_one_and_a_timeout_cancels(sup, client, drains):
    # Steer a job to cw2: cw1 takes no new job while it is placed.
    drained = json.loads(cumulus(sup, "worker", "drain", "cw1", "-o", "json").stdout)
    assert drained["hostname"] == "cw1" and drained["availability"] in ("draining", "drained"), drained
    first = client.submit_call(nap, (25, "first"), gpu=0.5, duration=300)
    drains.append(first.job_id)
    assert running_on(client, first.job_id) == "cw2"
    assert "active" in cumulus(sup, "worker", "activate", "cw1").stdout

    # Drain cw2 while the job runs there.
    res = cumulus(sup, "worker", "drain", "cw2")
    assert res.stdout.startswith("worker cw2 draining: it takes no new job;"), res.stdout
    assert availability(sup)["cw2"] == "draining"
    table = cumulus(sup, "workers").stdout
    assert "AVAILABILITY" in table.splitlines()[0] and "draining" in table, table
    second = client.submit_call(nap, (0, "second"), gpu=0.5, duration=300)  # goes to cw1
    drains.append(second.job_id)
    assert second.result(timeout=JOB_TIMEOUT) == "second"
    assert client.status(second.job_id).worker == "cw1"
    assert first.result(timeout=JOB_TIMEOUT) == "first"  # the running job completes
    assert client.status(first.job_id).state == "COMPLETED"
    wait_for("cw2 drained", lambda: availability(sup)["cw2"] == "drained", SETTLE_TIMEOUT)

    # A drain with a short timeout cancels a long job; --wait returns once it is gone.
    cumulus(sup, "worker", "activate", "cw2")
    cumulus(sup, "worker", "drain", "cw1")
    long = client.submit_call(nap, (600, "never"), gpu=0.5, duration=900)
    drains.append(long.job_id)
    assert running_on(client, long.job_id) == "cw2"
    cumulus(sup, "worker", "activate", "cw1")
    began = time.monotonic()
    res = cumulus(sup, "worker", "drain", "cw2", "--timeout", "5", "--wait", "-o", "json")
    waited = time.monotonic() - began
    assert json.loads(res.stdout)["availability"] == "drained", res.stdout
    assert 4 <= waited <= 5 + SETTLE_TIMEOUT, waited
    status = client.status(long.job_id)
    assert status.state == "CANCELLED" and "worker cw2 was drained" in status.reason, status
    print(f"drain --timeout 5 --wait returned after {waited:.1f} s")

    # Activate restores it.
    res = cumulus(sup, "worker", "activate", "cw2", "-o", "json")
    assert json.loads(res.stdout)["availability"] == "active"
    assert availability(sup)["cw2"] == "active"


def test_unknown_and_non_worker_names_are_refused(sup):
    res = cumulus(sup, "worker", "drain", "no-such-host", check=False)
    assert res.returncode == 1 and "no Swarm node is named 'no-such-host'" in res.stderr, res.stderr
    assert "cw1 (id" in res.stderr and "cw2 (id" in res.stderr
    res = cumulus(sup, "worker", "remove", "cw0", check=False)
    assert res.returncode == 1 and "not a Cumulus worker" in res.stderr, res.stderr
    now = availability(sup)
    assert (now["cw1"], now["cw2"]) == ("active", "active"), now

"""The supervisor deployed as a Swarm service (deploy/swarm/stack.yml, the supervisor image built offline by
``cumulus.local.supervisor_image``) survives the death of its container.

The test deploys a stack of its own next to the local supervisor process that the other tests use: its own stack
name, ``supervisor_id`` (``dt-<hex>``: its services, holders and job dirs carry it, so nobody else's orphan
reaping touches them), ports on the manager's address 10.213.0.10 (host network in cw0's namespace), journal
volume, configs and secrets (the run's test certificate and admin token). Through the SDK from this machine it
submits a job that runs for ``JOB_SECONDS`` with no retries (so a result cannot come from a second run), waits
until it runs, starts a client thread waiting on the result, and ``docker kill``s the supervisor's container
through cw0's Docker socket. Then: Swarm starts a new container; the new supervisor serves (the time from the kill
is printed); it re-adopted the running job (its history says so, and it is still attempt 1); the waiting client
gets the result (the SDK re-attaches after UNAVAILABLE); nothing of the job is left. The image's HEALTHCHECK must
have reported the first container healthy. The stack, its configs, secrets and volume are removed at the end,
whatever happened.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cumulus.local import deployed, state, supervisor_image
from helpers import holder_processes, job_dirs, lingering_containers, swarm_services
from supervisor_process import torn_down_problems
from tests.credentials import run_credentials

JOB_SECONDS = 25  # long enough to still run when the new supervisor has re-adopted it
MANAGER = "10.213.0.10"
PORT_PAIRS = [(50061 + 2 * i, 50062 + 2 * i) for i in range(5)]
HEALTHY_TIMEOUT = 30.0  # the HEALTHCHECK's first probe comes 10 s after the start
SERVING_AFTER_KILL_TIMEOUT = 60.0


def sleep_then_answer(seconds):
    import time

    print("sleeping", seconds, flush=True)
    time.sleep(seconds)
    return f"slept {seconds} s"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((MANAGER, port)) != 0


def _free_ports() -> tuple[int, int]:
    for pair in PORT_PAIRS:
        if all(_port_free(p) for p in pair):
            return pair
    pytest.fail(f"no free port pair on {MANAGER} among {PORT_PAIRS}")


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    from cumulus.local.image import docker

    return subprocess.run([docker(), "-H", state.Node(0).docker_url, *args], capture_output=True, text=True,
                          timeout=60)


def _health(container: str) -> str:
    return _docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()


def _wait(what: str, timeout: float, check):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.2)


@pytest.fixture
def deployment(cluster, tmp_path):
    creds = run_credentials()
    sid = f"dt-{secrets.token_hex(4)}"
    grpc_port, http_port = _free_ports()
    d = deployed.Deployment(stack=f"cumulus-{sid}", supervisor_id=sid, grpc_listen=f"{MANAGER}:{grpc_port}",
                            http_listen=f"{MANAGER}:{http_port}", volume=f"cumulus-{sid}-data",
                            directory=tmp_path / "deployment", tls_cert=creds.server_cert, tls_key=creds.server_key,
                            admin_token_file=creds.admin_token_file, ca=creds.ca)
    try:
        yield d
    finally:
        print(deployed.remove(d, volume=True), flush=True)
        _remove_what_a_lost_job_left(sid)


def _remove_what_a_lost_job_left(sid: str) -> None:
    """After a failure, what a job of ``sid`` left that no supervisor of that id will ever reap: its service,
    its partition holder (it would expire with its lease anyway) and its job dir."""
    for service in swarm_services(sid):
        _docker("service", "rm", service)
    holders = subprocess.run(["pgrep", "-f", f"cumulus-partition-holder.*--job-id[ =]'?{sid}-"],
                             capture_output=True, text=True)
    for pid in holders.stdout.split():
        subprocess.run(["kill", "-TERM", pid], capture_output=True)
    for job_dir in Path(state.JOBS_DIR).glob(f"{sid}-*"):
        shutil.rmtree(job_dir, ignore_errors=True)


def test_a_killed_supervisor_container_is_replaced_and_the_waiting_client_gets_its_result(deployment, workers):
    from cumulus.client.client import CumulusClient

    d = deployment
    t0 = time.monotonic()
    image_id, note = supervisor_image.ensure_supervisor_image()
    print(f"supervisor image {image_id[:19]}: {note} ({time.monotonic() - t0:.1f}s)", flush=True)
    print(deployed.deploy(d, image_id, timeout=120), flush=True)
    first = deployed.running_container(d)
    assert first

    hostnames = {w["hostname"] for w in workers}
    with CumulusClient(d.grpc_listen, log_to_driver=False) as client:
        _wait("every worker healthy in the deployed supervisor", 60, lambda: hostnames <= {
            w.hostname for w in client.list_workers() if w.healthy})
        ref = client.submit_call(sleep_then_answer, (JOB_SECONDS,), gpu=0.25, retries=0)
        _wait(f"job {ref.job_id} RUNNING", 60, lambda: client.status(ref.job_id).state == "RUNNING")
        assert _wait("the first container healthy (HEALTHCHECK /healthz)", HEALTHY_TIMEOUT,
                     lambda: _health(first) == "healthy" or None)

        outcome: dict[str, object] = {}

        def wait_for_result() -> None:
            try:
                outcome["value"] = ref.result(JOB_SECONDS + 120)
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = error

        waiter = threading.Thread(target=wait_for_result, daemon=True)
        waiter.start()
        time.sleep(0.5)  # the waiting client is attached

        killed = _docker("kill", first)
        killed_at = time.monotonic()
        assert killed.returncode == 0, killed.stderr
        _wait("the killed container stopped", 10, lambda: _docker("inspect", "-f", "{{.State.Running}}",
                                                                     first).stdout.strip() == "false")
        second = deployed.wait_serving(d, timeout=SERVING_AFTER_KILL_TIMEOUT)  # the killed one cannot answer
        serving_after = time.monotonic() - killed_at
        assert second != first
        _wait("Swarm reporting the new task running (healthy)", HEALTHY_TIMEOUT,
              lambda: deployed.running_container(d, healthy=True) == second)
        healthy_after = time.monotonic() - killed_at
        print(f"kill -> new container {second[:12]} serving: {serving_after:.1f}s (healthy in Swarm's eyes: "
              f"{healthy_after:.1f}s)", flush=True)

        waiter.join(JOB_SECONDS + 150)
        assert not waiter.is_alive(), "the waiting client got no result"
        assert outcome.get("value") == f"slept {JOB_SECONDS} s", outcome
        assert client.status(ref.job_id).state == "COMPLETED"
        described = client.describe(ref.job_id)
        assert described.info.attempt == 1, described.info
        texts = [e.text for e in described.events]
        assert any("re-adopting after a supervisor restart" in t for t in texts), texts
        assert not torn_down_problems(client, ref.job_id, 30.0)

    problems = (swarm_services(d.supervisor_id, idle_warm=False) + lingering_containers([ref.job_id])
                + holder_processes([ref.job_id]) + job_dirs([ref.job_id], state.JOBS_DIR))
    assert not problems, problems
    assert serving_after < 30.0, f"the new supervisor served {serving_after:.1f}s after the kill (lease.ttl 30 s)"

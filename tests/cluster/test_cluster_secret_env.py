"""``secret_env`` end to end on the real local cluster, through a REAL ``cumulus supervisor`` process
(``supervisor_process.remote_supervisor``): the SDK and the CLI (``--secret-env-file``) submit a job whose secret
value the job reads from ``os.environ`` (it returns or prints a hash of it), and the value is nowhere else: not in
``docker service inspect`` of the job's service on the manager nor ``docker inspect`` of its container on the
worker (the service references a Swarm secret, labelled with the job, instead), not in the supervisor's journal
files, not in its log, not in the job's history (``describe``). Once the job is torn down its Swarm secret is gone
(``docker secret ls`` by label) and nothing else of it is left.

Each secret is made at run time (``os.urandom``): the test's own source goes into the job's package.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import threading

import docker
import pytest

from supervisor_process import remote_supervisor  # noqa: F401  (the module-scoped fixture)

JOB_TIMEOUT = 90.0


def holds_its_secret():
    import hashlib
    import os
    import time

    print("sha256=" + hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest(), flush=True)
    time.sleep(600)  # until cancelled: the test looks at its service, container and secret meanwhile


def new_secret() -> str:
    return "cs-" + os.urandom(16).hex()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture
def sup(remote_supervisor):  # noqa: F811
    assert remote_supervisor.alive(), remote_supervisor.log_tail()
    return remote_supervisor


def swarm_secrets(docker_manager, label: str) -> list[dict]:
    return docker_manager.api.secrets(filters={"label": label})


def job_container(cluster, job_id: str) -> dict:
    """``docker inspect`` of the job's container, from the dockerd of the worker it runs on."""
    for node in cluster["nodes"]:
        if node["role"] != "worker":
            continue
        client = docker.DockerClient(base_url=f"unix://{node['docker_socket']}", version="auto", timeout=30)
        try:
            found = client.api.containers(all=True, filters={"label": f"cumulus.job_id={job_id}"})
            if found:
                return client.api.inspect_container(found[0]["Id"])
        finally:
            client.close()
    raise AssertionError(f"no container of {job_id} on any worker")


def assert_secret_nowhere(sup, job_id: str, secret: str) -> None:
    """Not in the journal's files (the database and its WAL), the supervisor's log, the job's history."""
    files = sorted(sup.journal.parent.glob(sup.journal.name + "*"))
    assert files, f"no journal file at {sup.journal}"
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the secret is in clear in {path.name}"
    log = sup.log()
    assert "gRPC server listening" in log, log[-2000:]  # the supervisor's own log, read whole
    assert secret not in log, "the secret is in the supervisor's log"
    with sup.client() as client:
        description = client.describe(job_id)
    assert description.events, description
    assert secret not in json.dumps(description.to_dict())


def test_the_sdk_job_reads_its_secret_and_the_swarm_shows_only_a_reference(sup, cluster, docker_manager):
    secret = new_secret()
    lines: list[str] = []
    printed = threading.Event()

    def on_event(update):
        if update.kind == "log":
            lines.append(update.text)
            if update.text.startswith("sha256="):
                printed.set()

    with sup.client() as client:
        ref = client.submit_call(holds_its_secret, on_event=on_event, gpu=0.25, duration=900, env={"PLAIN": "1"},
                                 secret_env={"API_TOKEN": secret})
        assert printed.wait(JOB_TIMEOUT), (client.status(ref.job_id), lines)
        assert f"sha256={digest(secret)}" in lines
        info = client.status(ref.job_id)
        # the service, as anyone with access to the manager sees it: a reference to the secret, not its value
        service = docker_manager.api.inspect_service(info.service_id)
        assert secret not in json.dumps(service)
        container_spec = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        (reference,) = container_spec["Secrets"]
        assert reference["File"]["Name"] == "cumulus-secret-env" and reference["File"]["Mode"] == 0o400
        assert "PLAIN=1" in container_spec["Env"] and not any(e.startswith("API_TOKEN=") for e in container_spec["Env"])
        # the container, as anyone with access to the worker's dockerd sees it
        assert secret not in json.dumps(job_container(cluster, ref.job_id))
        # the secret itself, labelled with the job (Swarm never shows its data)
        (held,) = swarm_secrets(docker_manager, f"cumulus.job_id={ref.job_id}")
        assert held["ID"] == reference["SecretID"]
        assert held["Spec"]["Labels"]["cumulus.supervisor_id"] == sup.sid
        assert secret not in json.dumps(held)
        result = client.cancel(ref.job_id)
    assert result.state == "CANCELLED" and "secret env" in result.released, result
    assert swarm_secrets(docker_manager, f"cumulus.job_id={ref.job_id}") == []
    sup.assert_nothing_left([ref.job_id], expect={ref.job_id: "CANCELLED"})
    assert_secret_nowhere(sup, ref.job_id, secret)


def test_the_cli_reads_secrets_from_a_file_and_the_job_returns_their_hash(sup, docker_manager, tmp_path):
    secret = new_secret()
    jobfile = tmp_path / "secretjob.py"
    jobfile.write_text(textwrap.dedent("""
        import hashlib
        import os

        def token_digest():
            return hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest()
    """))
    secrets_file = tmp_path / "job.secrets"
    secrets_file.write_text(f"# for the job only\nAPI_TOKEN={secret}\n")
    secrets_file.chmod(0o600)
    res = sup.cli("submit", f"{jobfile}:token_digest", "--secret-env-file", str(secrets_file), "--gpu", "0.25",
                  "-o", "json", check_rc=0)
    out = json.loads(res.stdout)
    assert out["result"] == digest(secret)
    assert secret not in res.stdout + res.stderr
    job_id = out["job_id"]
    sup.assert_nothing_left([job_id], expect={job_id: "COMPLETED"})  # waits for its teardown
    assert swarm_secrets(docker_manager, f"cumulus.job_id={job_id}") == []
    assert swarm_secrets(docker_manager, f"cumulus.supervisor_id={sup.sid}") == []
    assert_secret_nowhere(sup, job_id, secret)

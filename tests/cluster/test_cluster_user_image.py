"""User images on the real local cluster (issue 17): an image built here from the offline bookworm base plus a module
of its own, pushed to a real registry (Debian's ``docker-registry``, TLS with the local CA, on the bridge address the
nodes reach), runs a job through a real supervisor process: the supervisor pins it to the registry's digest, the
node pulls it once and checks its python3, and the job runs with the worker's runner mounted read-only - the image
has nothing of Cumulus (its own Debian cloudpickle is older than the client's and is not the one used). An image
whose python3 is another version, a tag the registry does not have, and a registry the supervisor does not allow
each fail with a clear reason, before any partition is made."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import cumulus
from cumulus.errors import JobFailed, Unsatisfiable
from cumulus.local import image as local_image
from cumulus.local.registry_trust import CERTS_DIR

from supervisor_process import start_supervisor, swarm_services

REGISTRY_PORT = 5443
REGISTRY = f"10.213.0.1:{REGISTRY_PORT}"
TLS = Path("/var/lib/cumulus-local/tls")  # the local server certificate names 10.213.0.1
JOB_TIMEOUT = 180
USER_MODULE = "VALUE = 'from the user image'\n"


def dockerd(cluster) -> list[str]:
    return [local_image.docker(), "-H", f"unix://{cluster['manager_socket']}"]


@pytest.fixture(scope="module")
def registry(cluster, tmp_path_factory):
    """Debian's docker-registry on the bridge address, TLS with the local CA, which every node's dockerd trusts."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed (apt-get install docker-registry; .ci/run installs it)")
    root = tmp_path_factory.mktemp("registry")
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"http:\n  addr: {REGISTRY}\n  tls:\n    certificate: {TLS}/server.pem\n"
                      f"    key: {TLS}/server-key.pem\n")
    trust = CERTS_DIR / REGISTRY / "ca.crt"
    trust.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(TLS / "ca.pem", trust)
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("10.213.0.1", REGISTRY_PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"the registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield REGISTRY
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(trust.parent, ignore_errors=True)


def build_and_push(cluster, tmp_path: Path, name: str, base: str) -> str:
    """An image FROM ``base`` (an offline base on the manager) with a module of its own, pushed as ``name``."""
    context = tmp_path / name.replace("/", "_").replace(":", "_")
    context.mkdir()
    (context / "usermod.py").write_text(USER_MODULE)
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY usermod.py /usr/lib/python3/dist-packages/usermod.py\n"
                                        "LABEL org.opencontainers.image.title=cumulus-test-user-image\n")
    tag = f"{REGISTRY}/{name}"
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(dockerd(cluster) + ["build", "--network", "none", "-q", "-t", tag, str(context)], check=True,
                   env=env, capture_output=True, timeout=300)
    subprocess.run(dockerd(cluster) + ["push", tag], check=True, capture_output=True, timeout=300)
    subprocess.run(dockerd(cluster) + ["image", "rm", tag], capture_output=True, timeout=60)  # nodes pull it
    return tag


@pytest.fixture(scope="module")
def sup(cluster, registry, tmp_path_factory):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    sup = start_supervisor(tmp_path_factory.mktemp("supervisor"), hostnames,
                           extra=f"jobs:\n  image_registries: [\"{registry}\"]\n")
    try:
        yield sup
    finally:
        sup.stop()
        assert swarm_services(sup.sid) == []


def user_value():
    import sys

    import cloudpickle
    import usermod

    return usermod.VALUE, sys.version_info[:2], cloudpickle.__version__


def test_a_job_runs_in_a_user_image_built_here_with_the_runner_mounted(cluster, sup, tmp_path):
    reference = build_and_push(cluster, tmp_path, "team/user-image:1", local_image.base_tag("bookworm"))
    run = cumulus.remote(address=sup.address, log_to_driver=False, gpu=0.1, image=reference)(user_value)
    ref = run.remote()
    value, version, pickler = ref.result(timeout=JOB_TIMEOUT)
    import cloudpickle
    import sys

    assert value == "from the user image" and tuple(version) == sys.version_info[:2]
    assert pickler == cloudpickle.__version__  # the runner's copy, not the image's Debian one
    service_images = subprocess.run(dockerd(cluster) + ["service", "ls", "--format", "{{.Image}}"],
                                    capture_output=True, text=True).stdout
    assert reference not in service_images  # nothing of the job is left; it ran by digest (checked below)
    second = run.remote()
    assert second.result(timeout=JOB_TIMEOUT)[0] == "from the user image"
    sup.assert_nothing_left([ref.job_id, second.job_id])
    log = sup.log()
    assert f"job image {reference} -> {REGISTRY}/team/user-image@sha256:" in log, log[-3000:]


def test_an_image_with_another_python_fails_before_a_partition_with_the_reason(cluster, sup, tmp_path):
    reference = build_and_push(cluster, tmp_path, "team/py313:1", local_image.base_tag("trixie"))
    run = cumulus.remote(address=sup.address, log_to_driver=False, gpu=0.1, image=reference)(user_value)
    ref = run.remote()
    with pytest.raises(JobFailed) as failed:
        ref.result(timeout=JOB_TIMEOUT)
    assert "image_unavailable" in str(failed.value) and "not Python 3.11" in str(failed.value), failed.value
    sup.assert_nothing_left([ref.job_id])


def test_a_missing_tag_fails_with_the_registry_s_answer(sup):
    run = cumulus.remote(address=sup.address, log_to_driver=False, gpu=0.1,
                         image=f"{REGISTRY}/team/never-pushed:1")(user_value)
    ref = run.remote()
    with pytest.raises(JobFailed, match="image_unavailable"):
        ref.result(timeout=JOB_TIMEOUT)
    sup.assert_nothing_left([ref.job_id])


def test_a_registry_the_supervisor_does_not_allow_is_refused_at_submit(sup):
    run = cumulus.remote(address=sup.address, log_to_driver=False, gpu=0.1,
                         image="registry.example.com/team/torch:2.4")(user_value)
    with pytest.raises(Unsatisfiable, match="does not allow"):
        run.remote()

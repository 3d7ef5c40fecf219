"""Worker image distribution on the real local cluster (issue 15, item 2): the supervisor's registry on its HTTP port
serves an image it exported from the Swarm manager, a node's real dockerd (Docker 20.10) pulls it and gets the very
image id, and the image gate keeps a worker out of placement until its node has the image: after the image was
removed from a worker, and after an image upgrade (a supervisor started with another image id).

Each test runs its own registry or supervisor (its own supervisor id) on 10.213.0.1:<free port>, with the test
run's CA written to /etc/docker/certs.d/10.213.0.1:<port>/ca.crt for as long as it runs. What a test changes on
the shared cluster (a node's ``cumulus.worker_image`` label, the worker image on one worker's dockerd, a derived
image) is put back afterwards, also when the test fails. The pull times are printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import trio

from cumulus.actors.image_gate import LABEL_WORKER_IMAGE, PULLING
from cumulus.config import SecuritySettings
from cumulus.local.image import docker
from cumulus.metrics import Metrics
from cumulus.resources.image_store import ImageStore
from cumulus.resources.swarm_client import SwarmClient
from cumulus.rpc.http import serve_http
from helpers import swarm_services
from supervisor_process import SupervisorProcess, clean_env, free_port, python, write_config
from tests.credentials import run_credentials
from tests.trio_thread import serving_in_thread

pytestmark = pytest.mark.cluster

BRIDGE = "10.213.0.1"
CERTS_DIR = Path("/etc/docker/certs.d")
PULL_TIMEOUT = 300.0


def marker():
    with open("/cumulus-test-marker") as f:
        return f.read().strip()


def answer():
    return 42


# ---- tools ------------------------------------------------------------------------------------------------------

def dkr(sock: str, *args: str, timeout: float = PULL_TIMEOUT, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([docker(), "-H", f"unix://{sock}", *args], capture_output=True, text=stdin is None,
                          timeout=timeout, stdin=stdin)


def image_id_on(sock: str, ref: str) -> str | None:
    res = dkr(sock, "image", "inspect", "--format", "{{.Id}}", ref, timeout=30)
    return res.stdout.strip() if res.returncode == 0 else None


def free_bridge_port() -> int:
    with socket.socket() as s:
        s.bind((BRIDGE, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def trusted(registry: str) -> Iterator[None]:
    """The nodes' dockerd trust the test run's CA for ``registry`` (the nodes share this machine's /etc)."""
    directory = CERTS_DIR / registry
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_credentials().ca, directory / "ca.crt")
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def registry_on(store: ImageStore, port: int) -> Iterator[str]:
    """The real HTTP port (hypercorn, TLS with the run's certificate) on the bridge, serving ``store``."""
    creds = run_credentials()
    security = SecuritySettings(tls_cert=str(creds.server_cert), tls_key=str(creds.server_key))

    async def serve(ready) -> None:
        async with trio.open_nursery() as nursery:
            ready(await nursery.start(lambda task_status: serve_http(
                SimpleNamespace(image_store=store), Metrics(), f"{BRIDGE}:{port}", security=security,
                task_status=task_status)))

    with serving_in_thread(serve, name="registry") as url:
        yield url


@contextlib.contextmanager
def derived_image(manager_sock: str, base: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An image FROM ``base`` with one more small layer (a marker file), built on the manager; (id, marker)."""
    text = f"upgrade-{time.time_ns()}"
    context = tmp_path / "derived"
    context.mkdir()
    (context / "marker").write_text(text + "\n")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY marker /cumulus-test-marker\n")
    tag = f"cumulus-test-derived:{text}"
    res = subprocess.run([docker(), "-H", f"unix://{manager_sock}", "build", "--network", "none", "-q", "-t", tag,
                          str(context)], capture_output=True, text=True, timeout=300, env={**clean_env(),
                                                                                           "DOCKER_BUILDKIT": "0"})
    assert res.returncode == 0, res.stderr
    image_id = image_id_on(manager_sock, tag)
    assert image_id and image_id != base
    try:
        yield image_id, text
    finally:
        dkr(manager_sock, "image", "rm", "-f", image_id, timeout=60)


def node_labels(docker_manager, node_id: str) -> dict[str, str]:
    return dict(docker_manager.nodes.get(node_id).attrs["Spec"].get("Labels") or {})


def set_label(docker_manager, node_id: str, value: str | None) -> None:
    for _ in range(5):
        node = docker_manager.nodes.get(node_id)
        spec = node.attrs["Spec"]
        labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k != LABEL_WORKER_IMAGE}
        if value is not None:
            labels[LABEL_WORKER_IMAGE] = value
        try:
            node.update({**spec, "Labels": labels})
            return
        except Exception:  # noqa: BLE001 - another writer changed the node meanwhile: read it again
            time.sleep(0.2)
    raise AssertionError(f"could not set the label of {node_id}")


def worker_nodes(docker_manager) -> dict[str, str]:
    """Every worker node of the Swarm (also hosts other tests joined): node id -> hostname. A supervisor of a test
    gates them all."""
    return {n.id: n.attrs["Description"]["Hostname"] for n in docker_manager.nodes.list()
            if (n.attrs["Spec"].get("Labels") or {}).get("cumulus.worker") == "true"}


def node_socket(hostname: str) -> str | None:
    """The dockerd socket of a local cluster host (``cumulus local add-node`` hosts too)."""
    sock = Path("/var/lib/cumulus-local/nodes") / hostname / "docker.sock"
    return str(sock) if sock.exists() else None


@contextlib.contextmanager
def labels_restored(docker_manager) -> Iterator[None]:
    """Every worker node's ``cumulus.worker_image`` label as it was, afterwards."""
    node_ids = list(worker_nodes(docker_manager))
    before = {node_id: node_labels(docker_manager, node_id).get(LABEL_WORKER_IMAGE) for node_id in node_ids}
    try:
        yield
    finally:
        for node_id, value in before.items():
            with contextlib.suppress(Exception):  # a host another test joined may have left meanwhile
                set_label(docker_manager, node_id, value)


def new_sid() -> str:
    import secrets

    return f"tg-{secrets.token_hex(4)}"


def start_gated_supervisor(directory: Path, port: int, image: str | None = None, sid: str | None = None
                           ) -> SupervisorProcess:
    """A supervisor process whose HTTP port (and registry) is on the bridge and advertised to the workers."""
    directory.mkdir(parents=True, exist_ok=True)
    sid, address, registry = sid or new_sid(), f"127.0.0.1:{free_port()}", f"{BRIDGE}:{port}"
    config = write_config(directory / "sup.yaml", sid=sid, listen=address, journal=directory / "journal.sqlite3",
                          http_listen=registry)
    text = config.read_text().replace(f'  http_listen: "{registry}"\n',
                                      f'  http_listen: "{registry}"\n  http_advertise: "{registry}"\n')
    if image:
        text = text.replace("cluster:\n", f"cluster:\n  image: \"{image}\"\n")
    config.write_text(text)
    log_path = directory / "supervisor.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python(), "-m", "cumulus", "supervisor", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=directory, env=clean_env())
    sup = SupervisorProcess(sid=sid, address=address, proc=proc, config=config, journal=directory / "journal.sqlite3",
                            log_path=log_path)
    try:
        sup.wait_serving()
    except BaseException:
        sup.stop()
        raise
    return sup


def watch_until_healthy(sup: SupervisorProcess, hostnames: set[str], timeout: float = PULL_TIMEOUT
                        ) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Poll ``ListWorkers`` until every worker of ``hostnames`` is healthy: the reasons each showed meanwhile, and
    the seconds until each was healthy."""
    started = time.monotonic()
    reasons: dict[str, list[str]] = {h: [] for h in hostnames}
    healthy_after: dict[str, float] = {}
    with sup.client() as client:
        while set(healthy_after) != hostnames:
            assert time.monotonic() - started < timeout, (reasons, sup.log_tail())
            assert sup.alive(), sup.log_tail()
            for w in client.list_workers():
                if w.hostname not in hostnames or w.hostname in healthy_after:
                    continue
                if w.healthy:
                    healthy_after[w.hostname] = time.monotonic() - started
                elif w.reason and (not reasons[w.hostname] or reasons[w.hostname][-1] != w.reason):
                    reasons[w.hostname].append(w.reason)
            time.sleep(0.1)
    return reasons, healthy_after


def stop_cleanly(sup: SupervisorProcess) -> None:
    code = sup.stop()
    assert code == 0, sup.log_tail()
    assert not swarm_services(sup.sid), f"services of {sup.sid} left"


def run_jobs_until_one_ran_on(sup: SupervisorProcess, hostname: str, fn, *, rounds: int = 4) -> object:
    """Submit batches of small jobs (0.2 of a device each: six do not fit on one worker) until one ran on
    ``hostname``; return its result."""
    with sup.client() as client:
        for _ in range(rounds):
            refs = [client.submit_call(fn, (), gpu=0.2, duration=300) for _ in range(6)]
            results = [(ref.result(timeout=PULL_TIMEOUT), client.status(ref.job_id)) for ref in refs]
            assert all(info.state == "COMPLETED" for _, info in results), results
            for result, info in results:
                if info.worker == hostname:
                    return result
    raise AssertionError(f"no job ran on {hostname}")


# ---- the registry, pulled by a real dockerd --------------------------------------------------------------------

def test_a_node_pulls_an_exported_image_through_the_registry_and_gets_its_id(cluster, workers, tmp_path, capsys):
    manager, node = cluster["manager_socket"], workers[0]["docker_socket"]
    with derived_image(manager, cluster["image_id"], tmp_path) as (image_id, _):
        store = ImageStore(tmp_path / "images")
        client = SwarmClient(f"unix://{manager}")
        started = time.monotonic()
        export = trio.run(store.export, image_id, client.save_image)
        exported_in = time.monotonic() - started
        size = sum(blob.size for blob in export.blobs.values())
        port = free_bridge_port()
        registry = f"{BRIDGE}:{port}"
        reference = f"{registry}/cumulus/worker@{export.manifest_digest}"
        try:
            with registry_on(store, port):
                refused = dkr(node, "pull", reference, timeout=120)  # its dockerd does not trust the CA yet
                assert refused.returncode != 0 and ("x509" in refused.stderr or "certificate" in refused.stderr), \
                    refused.stderr
                with trusted(registry):
                    started = time.monotonic()
                    pulled = dkr(node, "pull", reference)
                    pulled_in = time.monotonic() - started
                    assert pulled.returncode == 0, pulled.stderr
                    assert image_id_on(node, reference) == image_id
                    by_tag = dkr(node, "pull", f"{registry}/cumulus/worker:{export.tag}")
                    assert by_tag.returncode == 0 and image_id_on(node, f"{registry}/cumulus/worker:{export.tag}") \
                        == image_id, by_tag.stderr
                    unknown = dkr(node, "pull", f"{registry}/cumulus/worker@sha256:{'0' * 64}", timeout=120)
                    assert unknown.returncode != 0 and "manifest unknown" in unknown.stderr, unknown.stderr
        finally:
            dkr(node, "image", "rm", "-f", image_id, timeout=60)  # the derived image only: the worker image stays
        assert image_id_on(node, image_id) is None and image_id_on(node, cluster["image_id"])
    with capsys.disabled():
        print(f"\nregistry: exported {size / 2**20:.1f} MiB ({len(export.blobs)} blobs) in {exported_in:.1f} s; "
              f"pulled by {workers[0]['name']}'s dockerd in {pulled_in:.1f} s")


# ---- the gate ----------------------------------------------------------------------------------------------------

def no_job_runs_on(sock: str) -> bool:
    res = dkr(sock, "ps", "-q", "--filter", "label=cumulus.job_id", timeout=30)
    return res.returncode == 0 and not res.stdout.strip()


def untag_pulled(sock: str, registry: str) -> None:
    """Remove the references a pull from ``registry`` left (the image stays under its other names)."""
    listed = dkr(sock, "image", "ls", "--digests", "--format", "{{.Repository}}@{{.Digest}}", timeout=30)
    for reference in listed.stdout.split():
        if reference.startswith(f"{registry}/"):
            dkr(sock, "image", "rm", reference, timeout=30)


def restore_worker_image(victim: dict, donor: dict, image_id: str) -> None:
    """The worker image back on the victim's dockerd, tagged as `cumulus local up` leaves it."""
    from cumulus.local.state import IMAGE_TAG

    if image_id_on(victim["docker_socket"], image_id) is None:
        save = subprocess.Popen([docker(), "-H", f"unix://{donor['docker_socket']}", "save", IMAGE_TAG],
                                stdout=subprocess.PIPE)
        loaded = dkr(victim["docker_socket"], "load", "-q", stdin=save.stdout)
        save.wait(60)
        assert loaded.returncode == 0, loaded.stderr
    dkr(victim["docker_socket"], "tag", image_id, IMAGE_TAG, timeout=30)


def test_a_worker_without_the_image_pulls_it_before_it_takes_jobs(cluster, workers, docker_manager, tmp_path,
                                                                  capsys):
    victim, donor = workers[-1], workers[0]
    image_id = cluster["image_id"]
    every_image = ",".join(sorted(set((cluster.get("images") or {"3.11": image_id}).values())))  # the gate's label
    if not no_job_runs_on(victim["docker_socket"]):
        pytest.skip(f"a job runs on {victim['name']}: its image cannot be taken away now")
    port = free_bridge_port()
    sup = None
    assert image_id_on(donor["docker_socket"], image_id) == image_id
    with labels_restored(docker_manager):
        try:
            with trusted(f"{BRIDGE}:{port}"):
                set_label(docker_manager, donor["node_id"], every_image)  # true: it has the images
                set_label(docker_manager, victim["node_id"], None)
                removed = dkr(victim["docker_socket"], "image", "rm", "-f", image_id, timeout=60)
                if removed.returncode != 0:
                    pytest.skip(f"the worker image is in use on {victim['name']}: {removed.stderr}")
                assert image_id_on(victim["docker_socket"], image_id) is None
                sup = start_gated_supervisor(tmp_path / "sup", port)
                reasons, healthy_after = watch_until_healthy(sup, {victim["hostname"], donor["hostname"]})
                assert reasons[victim["hostname"]][-1:] == [PULLING], reasons
                assert PULLING not in reasons[donor["hostname"]], reasons  # its label named the image: no pull
                assert image_id_on(victim["docker_socket"], image_id) == image_id
                assert node_labels(docker_manager, victim["node_id"])[LABEL_WORKER_IMAGE] == every_image
                assert run_jobs_until_one_ran_on(sup, victim["hostname"], answer) == 42
                pulled = [line.split(": ", 1)[-1] for line in sup.log().splitlines()
                          if "image store: exported" in line or "has the worker image" in line]
                stop_cleanly(sup)
        finally:
            if sup is not None and sup.alive():
                sup.stop()
            restore_worker_image(victim, donor, image_id)
            for sock in filter(None, map(node_socket, worker_nodes(docker_manager).values())):
                untag_pulled(sock, f"{BRIDGE}:{port}")
    with capsys.disabled():
        print(f"\nimage gate: {victim['name']} healthy {healthy_after[victim['hostname']]:.1f} s after the "
              f"supervisor served (reasons {reasons[victim['hostname']]}); " + "; ".join(pulled))


def stale_pull_service(docker_manager, sid: str, node_id: str, image: str):
    """What a supervisor that crashed mid-pull leaves: a pull service labelled with its id."""
    from docker.types import RestartPolicy

    return docker_manager.services.create(
        image, ["sleep", "600"], name=f"cumulus-pull-stale-{sid}", user="65534:65534",
        labels={"cumulus.supervisor_id": sid, "cumulus.role": "image-pull"}, constraints=[f"node.id=={node_id}"],
        restart_policy=RestartPolicy(condition="none"))


def test_an_image_upgrade_reaches_every_worker_before_its_jobs(cluster, workers, docker_manager, tmp_path, capsys):
    hostnames = {w["hostname"] for w in workers}
    port = free_bridge_port()
    with derived_image(cluster["manager_socket"], cluster["image_id"], tmp_path) as (new_image, text), \
            labels_restored(docker_manager), trusted(f"{BRIDGE}:{port}"):
        sid = new_sid()
        stale = stale_pull_service(docker_manager, sid, workers[0]["node_id"], cluster["image_id"])
        sup = start_gated_supervisor(tmp_path / "sup", port, image=new_image, sid=sid)
        try:
            reasons, healthy_after = watch_until_healthy(sup, hostnames)
            assert stale.id not in {s.id for s in docker_manager.services.list()}  # reaped at start
            assert all(PULLING in reasons[h] for h in hostnames), reasons
            for w in workers:
                assert image_id_on(w["docker_socket"], new_image) == new_image
                assert node_labels(docker_manager, w["node_id"])[LABEL_WORKER_IMAGE] == new_image
            assert run_jobs_until_one_ran_on(sup, workers[-1]["hostname"], marker) == text  # jobs use the new one
            stop_cleanly(sup)
        finally:
            if sup.alive():
                sup.stop()
            with contextlib.suppress(Exception):  # gone already when the supervisor reaped it
                stale.remove()
            for sock in filter(None, map(node_socket, worker_nodes(docker_manager).values())):
                dkr(sock, "image", "rm", "-f", new_image, timeout=60)
    with capsys.disabled():
        print(f"\nimage upgrade: workers healthy after {json.dumps({h: round(s, 1) for h, s in healthy_after.items()})}"
              " s")

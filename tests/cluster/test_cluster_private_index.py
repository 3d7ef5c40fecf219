"""A private package index end to end on the real local cluster (issue 17, item 5), through a REAL ``cumulus
supervisor`` process configured with ``jobs.package_indexes``.

The test serves a PEP 503 simple index over HTTP with Basic auth on 10.213.0.1 (the host side of the local
cluster's bridge), holding a wheel it builds itself. Workers' job bridges refuse private addresses, so the test
does what an operator of such an index does with ``setup-worker.sh --job-allow ADDR:PORT``: it re-applies each
worker's egress filter with this repository's ``cumulus-job-network apply --allow 10.213.0.1:PORT`` (and applies
it again without, at the end).

A user stores their credentials with ``cumulus index login URL --password-stdin``; their job with
``requirements=[pkg]`` and ``index_url=URL`` imports the package from the node's cache and returns its value, and
sees no credentials (no ``NETRC``, no secret file); a second job with the same requirements on the same node
starts without installing (no installer service, no request to the index, the log says it was installed already);
a user who stored no credentials gets pip's 401 in the job's failure with what to do. The credentials appear in no
service spec (installer or job), no Swarm secret's metadata, no job log, not in the supervisor's log nor in its
journal files. The measured start times of the first and the cached job are printed (``-s``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import shutil
import subprocess
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cumulus.client.connection import ClientConfig
from cumulus.resources.index_netrc import NETRC_PATH
from cumulus.resources.requirements_cache import CACHE_DIRNAME
from cumulus.resources.requirements_install import LABEL_ROLE, ROLE_INSTALL
from supervisor_process import REPO, clean_env, python, start_supervisor
from tests.credentials import run_credentials

HOST = "10.213.0.1"
NAME = f"cumulus_pidx_{secrets.token_hex(4)}"  # this run's own package: an earlier run's cache entry never counts
REQUIREMENT = f"{NAME.replace('_', '-')}==1.0"
USERNAME = f"pidx-{secrets.token_hex(3)}"
PASSWORD = f"pw-{secrets.token_hex(12)}"
JOB_TIMEOUT = 180
FILTER_TOOL = REPO / "worker_image" / "cumulus-job-network"


def wheel(name: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel of ``name`` 1.0 (VALUE = 4242)."""
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 4242\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return f"{name}-1.0-py3-none-any.whl", buf.getvalue()


class Index:
    """A PEP 503 simple index with one project, behind HTTP Basic auth; counts the requests it answered."""

    def __init__(self) -> None:
        filename, blob = wheel(NAME)
        project = NAME.replace("_", "-")
        expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        self.requests: list[tuple[str, int]] = []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("Authorization") != expected:
                    return self._answer(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="test"'})
                if self.path.rstrip("/") == f"/simple/{project}":
                    link = f'<a href="/files/{filename}#sha256={hashlib.sha256(blob).hexdigest()}">{filename}</a>'
                    return self._answer(200, f"<html><body>{link}</body></html>".encode(), "text/html")
                if self.path == f"/files/{filename}":
                    return self._answer(200, blob, "application/octet-stream")
                return self._answer(404, b"", "text/plain")

            def _answer(self, code: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                index.requests.append((self.path, code))
                self.send_response(code)
                for key, value in {"Content-Type": kind, "Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{HOST}:{self.port}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def apply_filter(cluster: dict, *args: str) -> None:
    for node in cluster["nodes"]:
        if node["role"] == "worker":
            netns = node["netns"] if node["netns"].startswith("/") else f"/var/run/netns/{node['netns']}"
            subprocess.run(["nsenter", f"--net={netns}", "bash", str(FILTER_TOOL), "apply", *args], check=True,
                           capture_output=True, timeout=60)


@pytest.fixture
def index(cluster):
    served = Index()
    apply_filter(cluster, "--allow", f"{HOST}:{served.port}")
    try:
        yield served
    finally:
        apply_filter(cluster)
        served.close()


@pytest.fixture
def sup(cluster, index, tmp_path):
    hostnames = [n["hostname"] for n in cluster["nodes"] if n["role"] == "worker"]
    process = start_supervisor(tmp_path / "sup", hostnames,
                               extra=f"jobs:\n  package_indexes: [\"{index.url}\"]\n")
    try:
        yield process
    finally:
        process.stop()


def imports_the_package(name: str):
    """The job: its package's value and what of the credentials it can see (nothing, or the test fails)."""
    import importlib
    import os

    module = importlib.import_module(name)
    secrets_dir = "/run/secrets"
    return (module.VALUE, os.path.dirname(os.path.dirname(module.__file__)), "NETRC" in os.environ,
            sorted(os.listdir(secrets_dir)) if os.path.isdir(secrets_dir) else [])


def client_for(sup, token: str):
    from cumulus.client.client import CumulusClient

    return CumulusClient(config=ClientConfig(sup.address, token=token, ca=str(run_credentials().ca)),
                         log_to_driver=False)


def index_cli(sup, token: str, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([python(), "-m", "cumulus", "index", *argv, "--address", sup.address], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**clean_env(), "CUMULUS_TOKEN": token})


class SpecWatch:
    """Records every service and Swarm secret of the supervisor while a job runs (the installer lives seconds)."""

    def __init__(self, docker_manager, sid: str) -> None:
        self.api, self.sid = docker_manager.api, sid
        self.services: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpecWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        label = {"label": f"cumulus.supervisor_id={self.sid}"}
        while not self._stop.is_set():
            try:
                for service in self.api.services(filters=label):
                    self.services.setdefault(service["ID"], service)
                for secret in self.api.secrets(filters=label):
                    self.secrets.setdefault(secret["ID"], secret)
            except Exception:  # noqa: BLE001 - a service removed while listed: look again
                pass
            time.sleep(0.1)

    def installers(self) -> list[dict]:
        return [s for s in self.services.values() if s["Spec"]["Labels"].get(LABEL_ROLE) == ROLE_INSTALL]


def run_job(client, index_url: str) -> tuple[object, float, object]:
    """Submit the job and wait for it; returns (ref, seconds from submit to RUNNING, value or the exception)."""
    submitted = time.time()
    ref = client.submit(imports_the_package, NAME, requirements=[REQUIREMENT], index_url=index_url, gpu=1.0,
                        network="none", duration=300)
    try:
        value = ref.result(timeout=JOB_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - the failing case is checked by the caller
        value = error
    events = client.describe(ref.job_id).events
    running = next((e.at for e in events if e.kind == "state" and e.state == "RUNNING"), None)
    return ref, (running - submitted) if running else float("nan"), value


def test_a_private_index_with_per_user_credentials_and_the_node_cache(cluster, sup, index, docker_manager):
    user = sup.cli("token", "create", f"pidx-user-{secrets.token_hex(2)}", check_rc=0).stdout.strip()
    stranger = sup.cli("token", "create", f"pidx-none-{secrets.token_hex(2)}", check_rc=0).stdout.strip()
    login = index_cli(sup, user, "login", index.url, "--username", USERNAME, "--password-stdin",
                      stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    listed = index_cli(sup, user, "list")
    assert index.url in listed.stdout and PASSWORD not in listed.stdout, listed
    client = client_for(sup, user)
    job_ids: list[str] = []
    entries: set[Path] = set()
    try:
        with SpecWatch(docker_manager, sup.sid) as first_watch:
            first, first_start, value = run_job(client, index.url)
        job_ids.append(first.job_id)
        refs = [first]
        first_log = "\n".join(first.logs())
        assert value == (4242, "/cumulus/deps", False, []), (value, first_log)
        assert f"installing 1 requirement(s) on this node from {index.url}" in first_log, first_log
        assert (f"/files/{NAME}-1.0-py3-none-any.whl", 200) in index.requests, index.requests
        (installer,) = first_watch.installers()
        container = installer["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert f"NETRC={NETRC_PATH}" in container["Env"] and len(container["Secrets"]) == 1, container
        assert f"--index-url {index.url}" in " ".join(container.get("Command") or container.get("Args") or [])
        key = installer["Spec"]["Labels"]["cumulus.requirements_key"]
        entries.add(Path(cluster.get("jobs_dir", "/var/lib/cumulus/jobs")) / CACHE_DIRNAME / key)
        jobs = [s for s in first_watch.services.values() if s not in first_watch.installers()]
        assert jobs and not any("Secrets" in s["Spec"]["TaskTemplate"]["ContainerSpec"] for s in jobs)

        # The same list again, on the first job's node: no install at all.
        second = second_start = None
        for _ in range(4):
            requests_before = len(index.requests)
            with SpecWatch(docker_manager, sup.sid) as watch:
                again, again_start, value = run_job(client, index.url)
            job_ids.append(again.job_id)
            refs.append(again)
            assert value == (4242, "/cumulus/deps", False, []), value
            if again.status().worker == first.status().worker:
                second, second_start = again, again_start
                break
            entries.update(Path(cluster.get("jobs_dir", "/var/lib/cumulus/jobs")) / CACHE_DIRNAME /
                           s["Spec"]["Labels"]["cumulus.requirements_key"] for s in watch.installers())
        else:
            pytest.fail("no second job landed on the first job's worker")
        second_log = "\n".join(second.logs())
        assert not watch.installers() and len(index.requests) == requests_before, (watch.installers(),
                                                                                   index.requests)
        assert "installed already on this node" in second_log and "[pip]" not in second_log, second_log
        print(f"\nprivate index: first job (installs) RUNNING {first_start:.1f} s after submit; the same "
              f"requirements again on that node (cache) RUNNING {second_start:.1f} s after submit")

        # A user without credentials: pip's 401, and what to do.
        stranger_client = client_for(sup, stranger)
        failed, _, error = run_job(stranger_client, index.url)
        job_ids.append(failed.job_id)
        refs.append(failed)
        text = str(error)
        assert "401" in text and "cumulus index login" in text and "none are stored" in text, text
        assert ("/simple/" + NAME.replace("_", "-") + "/", 401) in index.requests

        # The credentials are nowhere but in the sealed journal row and the (removed) Swarm secret.
        logs = "\n".join(line for ref in refs for line in ref.logs())
        specs = json.dumps([first_watch.services, first_watch.secrets, watch.services, watch.secrets], default=str)
        journal = b"".join(p.read_bytes() for p in sup.journal.parent.glob(sup.journal.name + "*")
                           if not p.name.endswith(".lock"))
        for where, text in (("job logs", logs), ("service specs", specs), ("supervisor log", sup.log())):
            assert PASSWORD not in text and USERNAME not in text, where
        assert PASSWORD.encode() not in journal and USERNAME.encode() not in journal
        assert not docker_manager.api.secrets(filters={"label": f"cumulus.supervisor_id={sup.sid}"})
        sup.assert_nothing_left(job_ids)
    finally:
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)

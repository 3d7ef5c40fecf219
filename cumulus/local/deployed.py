"""`cumulus local up --deployed`: the local cluster's supervisor as a Swarm service (deploy/swarm/stack.yml) on the
manager cw0, instead of a process on this machine; `cumulus local up` without the flag goes back to the process.

The service runs the supervisor image (:mod:`cumulus.local.supervisor_image`) with host networking, so in cw0's
network namespace: gRPC on 10.213.0.10:50051, HTTP on 10.213.0.10:50052 (the local server certificate names that
address). Its settings, the server certificate and its CA and the workers' known hosts are Swarm configs; the
TLS key, the admin token, the supervisor's SSH key and the journal's secret key are Swarm secrets; the journal is
on the volume ``cumulus-local-supervisor-data`` of cw0's dockerd (kept when the service is removed; the process
keeps its own journal in the state dir, so a switch of modes loses the jobs that run: the process is stopped
cleanly, the service is killed and its jobs stop when their leases expire, and both modes' supervisor id is
``local``, so either reaps what the other left). Files the deployment writes: ``<state>/deployed/``
(``supervisor.yaml``, ``journal.key``). The client config points at the service.

:class:`Deployment` describes one such stack; tests deploy their own (own stack name, supervisor id, ports and
volume) next to whatever else runs, with :func:`deploy` and :func:`remove`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cumulus.local import daemons, image, state
from cumulus.local import supervisor as local_supervisor
from cumulus.local.supervisor_image import ensure_supervisor_image
from cumulus.local.util import LocalClusterError, run

STACK_FILE = state.worker_image_dir().parent / "deploy" / "swarm" / "stack.yml"
LOCAL_STACK = "cumulus-local"
SERVICE_NAME = "supervisor"  # the service in stack.yml; Swarm names it <stack>_supervisor
IN_CONTAINER_WORKER_FILES = "/opt/cumulus/worker_image"
STOP_TIMEOUT = 60.0
GIVE_UP_AFTER_FAILED_STARTS = 3  # containers of the new spec that failed: the deployment is broken, say why


@dataclass(frozen=True)
class Deployment:
    """One supervisor stack on the local cluster's manager, and the files it is made from."""

    stack: str
    supervisor_id: str
    grpc_listen: str
    http_listen: str
    volume: str
    directory: Path  # on this machine: supervisor.yaml and journal.key are written here
    tls_cert: Path
    tls_key: Path
    admin_token_file: Path
    ca: Path  # what clients trust (the CA that signed tls_cert)

    @property
    def service(self) -> str:
        return f"{self.stack}_{SERVICE_NAME}"

    @property
    def settings_file(self) -> Path:
        return self.directory / "supervisor.yaml"

    @property
    def journal_key(self) -> Path:
        return self.directory / "journal.key"


def local_deployment() -> Deployment:
    """The deployment `cumulus local up --deployed` makes: the local cluster's own supervisor."""
    creds = local_supervisor.credentials()
    manager = state.Node(0).address
    return Deployment(LOCAL_STACK, local_supervisor.SUPERVISOR_ID, f"{manager}:50051", f"{manager}:50052",
                      "cumulus-local-supervisor-data", state.STATE_DIR / "deployed", creds.server_cert,
                      creds.server_key, creds.admin_token_file, creds.ca)


def _docker(*args: str) -> list[str]:
    return [image.docker(), "-H", state.Node(0).docker_url, *args]


def _api(path: str, query: str = "", **filters: list[str]) -> Any:
    """GET ``path`` on the manager's Docker API with ``filters``; ``query``: other parameters (``all=1``)."""
    params = ([f"filters={urllib.parse.quote(json.dumps(filters))}"] if filters else []) + ([query] if query else [])
    query = ("?" + "&".join(params)) if params else ""
    status, body = daemons.docker_api(state.Node(0).docker_socket, path + query, timeout=10)
    if status != 200:
        raise LocalClusterError(f"manager {path}: {status} {body}")
    return body


def settings_text(d: Deployment) -> str:
    """The supervisor's settings inside its container (paths as deploy/swarm/stack.yml mounts them)."""
    described = state.load_cluster()
    images = sorted((described.get("images") or {}).items())  # the worker image of each Python version
    images_yaml = "  images:\n" + "".join(f"    \"{v}\": \"{i}\"\n" for v, i in images) if images else ""
    return (
        f"# Written by cumulus.local.deployed for the stack {d.stack}.\n"
        f"supervisor_id: \"{d.supervisor_id}\"\n"
        f"grpc:\n  listen: \"{d.grpc_listen}\"\n"
        f"server:\n  http_listen: \"{d.http_listen}\"\n  http_advertise: \"{d.http_listen}\"\n"
        "security:\n  tls_cert: \"/etc/cumulus/tls/server.pem\"\n  tls_key: \"/run/secrets/tls_key\"\n"
        "  tls_ca: \"/etc/cumulus/tls/ca.pem\"\n"
        "  admin_token_file: \"/run/secrets/admin_token\"\n  secret_key_file: \"/run/secrets/journal_key\"\n"
        "cluster:\n  docker_host: \"unix:///var/run/docker.sock\"\n"
        f"  image: \"{described['image_id']}\"\n  ssh_user: \"{described['ssh_user']}\"\n"
        + images_yaml +
        "  ssh_key: \"/run/secrets/ssh_key\"\n  known_hosts: \"/etc/cumulus/known_hosts\"\n"
        f"  holder: \"{described['holder']}\"\n  jobs_dir: \"{described['jobs_dir']}\"\n"
        "  allow_non_gpu_devices: true   # this machine has no GPU: jobs use the CPU OpenCL device\n"
        "  poll_interval: 0.1\n"
        f"  worker_files: \"{IN_CONTAINER_WORKER_FILES}\"\n"
        "journal:\n  path: \"/var/lib/cumulus/journal.sqlite3\"\n"
    )


def _write_files(d: Deployment) -> None:
    d.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not d.journal_key.exists():
        fd = os.open(d.journal_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.urlsafe_b64encode(os.urandom(32)) + b"\n")
    text = settings_text(d)
    if not d.settings_file.exists() or d.settings_file.read_text() != text:
        d.settings_file.write_text(text)


def stack_environment(d: Deployment, image_ref: str) -> dict[str, str]:
    """The variables of deploy/swarm/stack.yml for ``d`` (each documented there)."""
    manager = state.Node(0)
    files = {
        "CUMULUS_CONFIG_FILE": d.settings_file, "CUMULUS_TLS_CERT_FILE": d.tls_cert, "CUMULUS_TLS_CA_FILE": d.ca,
        "CUMULUS_KNOWN_HOSTS_FILE": state.known_hosts(), "CUMULUS_TLS_KEY_FILE": d.tls_key,
        "CUMULUS_ADMIN_TOKEN_FILE": d.admin_token_file, "CUMULUS_SSH_KEY_FILE": state.supervisor_key(),
        "CUMULUS_JOURNAL_KEY_FILE": d.journal_key,
    }
    revision = hashlib.sha256(f"{d.stack}\0{image_ref}\0".encode())
    for name, path in sorted(files.items()):
        revision.update(name.encode() + b"\0" + Path(path).read_bytes())
    return {
        "CUMULUS_SUPERVISOR_IMAGE": image_ref, "CUMULUS_SUPERVISOR_NODE": _hostname_of_manager(),
        "CUMULUS_DOCKER_GID": str(os.stat(manager.docker_socket).st_gid),
        "CUMULUS_DOCKER_SOCKET": str(manager.docker_socket), "CUMULUS_DATA_VOLUME": d.volume,
        "CUMULUS_REVISION": revision.hexdigest()[:16],
        **{name: str(path) for name, path in files.items()},
    }


def _hostname_of_manager() -> str:
    return str(_api("/info")["Name"])


def deploy(d: Deployment, image_ref: str, *, timeout: float = 120.0) -> str:
    """`docker stack deploy` ``d`` with the image ``image_ref`` and wait until it serves; returns a note.

    Configs and secrets that no longer match are replaced (their names carry a hash of their content), and the
    stack's older ones are removed once neither the service's spec nor its previous one (a rollback's) uses them."""
    _write_files(d)
    env = stack_environment(d, image_ref)
    t0 = time.monotonic()
    run(_docker("stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), d.stack), env=env,
        timeout=120)
    wait_serving(d, env["CUMULUS_REVISION"], timeout=timeout)
    _remove_unused(d)
    return f"{d.service} serving on {d.grpc_listen} ({time.monotonic() - t0:.1f}s)"


def service_tasks(d: Deployment) -> list[dict[str, Any]]:
    return list(_api("/tasks", service=[d.service]))


def running_container(d: Deployment, revision: str | None = None, *, healthy: bool = False) -> str | None:
    """The id of the container of ``d``'s task that runs (of the spec with ``revision``, if given), else None.

    Swarm reports a task "starting" from its container's start until the image's HEALTHCHECK first passed (its
    first probe comes after the 10 s interval), "running" after that: ``healthy`` asks for the latter."""
    for task in service_tasks(d):
        states = ("running",) if healthy else ("starting", "running")
        if task.get("Status", {}).get("State") not in states or task.get("DesiredState") != "running":
            continue
        configs = [c.get("ConfigName", "") for c in task.get("Spec", {}).get("ContainerSpec", {}).get("Configs", [])]
        if revision and not any(name.endswith(revision) for name in configs):
            continue
        return task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
    return None


def serving(d: Deployment, timeout: float = 2.0) -> bool:
    from cumulus.client.connection import ClientConfig
    from cumulus.client.health import check_health

    token = d.admin_token_file.read_text().strip()
    ok, _ = check_health(timeout=timeout, config=ClientConfig(d.grpc_listen, token, str(d.ca)))
    return ok


def wait_serving(d: Deployment, revision: str | None = None, *, timeout: float = 120.0) -> str:
    """Wait until a container of ``d`` (of ``revision``) runs and the supervisor in it answers SERVING; returns
    the container's id."""
    deadline = time.monotonic() + timeout
    failed_before = _failed_starts(d, revision)
    while True:
        container = running_container(d, revision)
        if container and serving(d, timeout=1.0):
            return container
        broken = len(_failed_starts(d, revision) - failed_before) >= GIVE_UP_AFTER_FAILED_STARTS
        if broken or time.monotonic() > deadline:
            raise LocalClusterError(f"{d.service} not serving on {d.grpc_listen} "
                                    f"{'(its containers keep failing)' if broken else f'after {timeout:g}s'}; see "
                                    f"`docker -H {state.Node(0).docker_url} service ps --no-trunc {d.service}` "
                                    f"and `... service logs {d.service}`\n{_task_errors(d)}")
        time.sleep(0.25)


def _failed_starts(d: Deployment, revision: str | None) -> set[str]:
    """Tasks (of ``revision``) that failed: each is a container that would not start or died."""
    failed = set()
    for task in service_tasks(d):
        configs = [c.get("ConfigName", "") for c in task.get("Spec", {}).get("ContainerSpec", {}).get("Configs", [])]
        if task.get("Status", {}).get("State") in ("failed", "rejected") and (
                not revision or any(name.endswith(revision) for name in configs)):
            failed.add(task["ID"])
    return failed


def _task_errors(d: Deployment) -> str:
    try:
        return "\n".join(f"task {t['ID'][:12]}: {t['Status'].get('State')} {t['Status'].get('Err', '')}"
                         for t in service_tasks(d)[-5:])
    except (OSError, LocalClusterError, KeyError):
        return ""


def _stack_objects(kind: str, stack: str) -> list[str]:
    return [o["Spec"]["Name"] for o in _api(f"/{kind}", label=[f"com.docker.stack.namespace={stack}"])]


def _remove_unused(d: Deployment) -> None:
    """Remove the stack's configs and secrets that neither the service's spec nor its previous spec (what a
    rollback goes back to) uses. One still in use by a task that is stopping stays, for the next time."""
    services = [s for s in _api("/services", name=[d.service]) if s["Spec"]["Name"] == d.service]
    used = {ref.get(key, "") for service in services for spec in (service.get("Spec"), service.get("PreviousSpec"))
            if spec for kind, key in (("Configs", "ConfigName"), ("Secrets", "SecretName"))
            for ref in spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get(kind) or []}
    for kind in ("configs", "secrets"):
        for name in _stack_objects(kind, d.stack):
            if name not in used:
                run(_docker(kind[:-1], "rm", name), check=False)


def exists(d: Deployment) -> bool:
    return any(s["Spec"]["Name"] == d.service for s in _api("/services", name=[d.service]))


def _volume_exists(name: str) -> bool:
    return any(v["Name"] == name for v in _api("/volumes", name=[name]).get("Volumes") or [])


def remove(d: Deployment, *, volume: bool = False, timeout: float = STOP_TIMEOUT) -> str:
    """Remove the stack (its service, configs and secrets), wait until its containers are gone, and with
    ``volume`` its journal volume too. Idempotent; raises LocalClusterError if something stays."""
    if not daemons.docker_ping(state.Node(0).docker_socket):
        return "manager not running"
    run(_docker("stack", "rm", d.stack), check=False, timeout=60)
    deadline = time.monotonic() + timeout
    label = f"com.docker.stack.namespace={d.stack}"
    while True:
        left = [c["Id"][:12] for c in _api("/containers/json", "all=1", label=[label])]
        left += [f"service {s['Spec']['Name']}" for s in _api("/services", label=[label])]
        objects = [(kind, name) for kind in ("config", "secret") for name in _stack_objects(kind + "s", d.stack)]
        for kind, name in objects:  # what `stack rm` could not remove while a task still used it
            run(_docker(kind, "rm", name), check=False)
        if volume and not left and _volume_exists(d.volume):
            run(_docker("volume", "rm", d.volume), check=False)
        volume_left = volume and _volume_exists(d.volume)
        if not left and not objects and not volume_left:
            return f"removed {d.stack}" + (f" and volume {d.volume}" if volume else "")
        if time.monotonic() > deadline:
            raise LocalClusterError(f"stack {d.stack} not fully removed after {timeout:g}s: {left}, "
                                    f"configs/secrets {objects}, volume left: {volume_left}")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ `local up`
def ensure_supervisor(deployed: bool, on_line: Callable[[str], None] | None = None) -> str:
    """The last step of `cumulus local up`: the supervisor as a Swarm service (``deployed``) or as a process."""
    d = local_deployment()
    if not deployed:
        note = ""
        if exists(d):
            note = remove(d) + "; "
        return note + local_supervisor.ensure_running()
    stopped = local_supervisor.stop()
    image_id, image_note = ensure_supervisor_image(state.Node(0), on_line)
    note = deploy(d, image_id)
    local_supervisor.write_client_configs(local_supervisor.credentials(), d.grpc_listen)
    state.write_json(local_supervisor.info_path(), {"mode": "deployed", "address": d.grpc_listen,
                                                    "service": d.service, "config": str(d.settings_file)})
    return f"{image_note}; {note}" + (f"; process {stopped}" if stopped != "not running" else "")


def status() -> dict[str, Any]:
    """`cumulus local status`'s supervisor part: which mode, where, and whether it serves."""
    d = local_deployment()
    try:
        deployed = daemons.docker_ping(state.Node(0).docker_socket) and exists(d)
    except (OSError, LocalClusterError):
        deployed = False
    if not deployed:
        found = local_supervisor.status()
        return {**found, "supervisor_mode": "process" if found["supervisor_pid"] else "stopped"}
    container = running_container(d)
    return {"supervisor_mode": "deployed", "supervisor_pid": None, "supervisor_address": d.grpc_listen,
            "supervisor_service": d.service, "supervisor_container": container,
            "supervisor_serving": bool(container) and serving(d, timeout=1.0)}


def status_line(c: dict[str, Any]) -> str:
    serving_text = "serving" if c.get("supervisor_serving") else "NOT serving"
    if c.get("supervisor_mode") == "deployed":
        container = c.get("supervisor_container")
        return (f"supervisor: {c.get('supervisor_address')} Swarm service {c.get('supervisor_service')} (deployed), "
                + (f"container {container[:12]}, {serving_text}" if container else "no running container"))
    return (f"supervisor: {c.get('supervisor_address')} "
            + (f"process pid {c['supervisor_pid']}, {serving_text}" if c.get("supervisor_pid")
               else "not running (run `cumulus local up`)"))

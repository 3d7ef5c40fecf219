"""The trusted install step's Swarm service: a short-lived, one-task service pinned to a worker that pip-installs
a job's requirements (``pip install --target``) into a fresh directory of that worker's requirements cache.

:func:`build_install_spec` turns an :class:`InstallService` into the keyword arguments of
``docker.APIClient.create_service`` (pure); :func:`run_install_service` creates it, waits for its task to end
(relaying the install's output meanwhile) and always removes it. The cache around it (keys, the atomic rename,
eviction) is :mod:`cumulus.resources.requirements_cache`.

The installer runs the job's image (same Python, same pip as the job) hardened like a job: a non-root uid (the
worker's SSH user, so the supervisor can later evict what it wrote), every capability dropped, a read-only root
with a tmpfs at /tmp (its HOME), memory, CPU and pids limits. It sees only its own install directory
(read-write, at :data:`INSTALL_MOUNT`) and, if the worker has one, the wheelhouse (read-only): never the cache
itself, nor any job's files, so a requirement whose build runs hostile code cannot touch other jobs' packages.
No shared pip cache either (a build could poison it for other users): ``--no-cache-dir``.

With a private index (``index_url``, one of ``jobs.package_indexes``) pip gets ``--index-url`` and no other source
(``--isolated``: no ``PIP_*`` variable or pip.conf of the image adds one; no wheelhouse), ``--trusted-host`` for an
``http://`` index (only a private or loopback address is allowed one), and the job owner's credentials, if stored,
only as the netrc file of a Swarm secret made for this install (``netrc``; :mod:`cumulus.resources.index_netrc`):
the spec has its path in ``NETRC``, never a credential. pip says why an index refused (401, 403) only in its debug
log: on a failure, those lines are added to the install log as ``ERROR: the index answered ...``.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import docker.errors
import trio
from urllib.parse import urlsplit

from docker.types import (ContainerSpec, Mount, Placement, Resources, RestartPolicy, SecretReference, ServiceMode,
                          TaskTemplate)

from cumulus.resources.swarm_client import TERMINAL_STATES, SwarmClient, SwarmError
from cumulus.resources.index_netrc import NETRC_FILE, NETRC_PATH
from cumulus.resources.swarm_spec import LABEL_SUPERVISOR, SecretEnvRef

log = logging.getLogger(__name__)

INSTALL_MOUNT = "/cumulus/install"  # where the installer sees site/ (pip's target), log/install.log, requirements.txt
WHEELHOUSE_MOUNT = "/cumulus/wheelhouse"
SITE = "site"
REQUIREMENTS_FILE = "requirements.txt"
LOG_DIR = "log"
LOG_FILE = "log/install.log"
LABEL_ROLE = "cumulus.role"
ROLE_INSTALL = "requirements-install"
LABEL_KEY = "cumulus.requirements_key"
LABEL_FOR_JOB = "cumulus.install_for_job"  # never cumulus.job_id: the job's task watch must not see the installer
POLL_SECONDS = 0.5
PIP_DEBUG_LOG = "/tmp/pip-debug.log"  # in the installer's tmpfs: gone with its container


@dataclass(frozen=True)
class InstallService:
    """One install: where (``node_id``), with what (``image``, by id), as whom (``uid``/``gid``), into which
    worker directory (``install_dir``, made beforehand, holding ``requirements.txt``). ``wheelhouse``: a worker
    directory of wheels to offer pip (``--find-links``), ``no_index``: only those (an offline cluster).
    ``networks``: Swarm networks to attach (``None``: the worker dockerd's default network). ``index_url``: the
    job's private index (then the only source); ``netrc``: the Swarm secret holding the owner's credentials for it."""

    name: str
    image: str
    node_id: str
    supervisor_id: str
    job_id: str
    key: str
    install_dir: str
    uid: int
    gid: int
    wheelhouse: str | None = None
    no_index: bool = False
    networks: tuple[str, ...] | None = None
    memory_mb: int = 4096
    cpus: float = 2.0
    pids_limit: int = 4096
    tmpfs_mb: int = 1024
    index_url: str = ""
    netrc: SecretEnvRef | None = None

    @property
    def labels(self) -> dict[str, str]:
        # The supervisor label: a restarted supervisor reaps an installer its predecessor left (no cumulus.job_id,
        # so never a live job's service).
        return {LABEL_SUPERVISOR: self.supervisor_id, LABEL_ROLE: ROLE_INSTALL, LABEL_KEY: self.key,
                LABEL_FOR_JOB: self.job_id}


def pip_command(svc: InstallService) -> list[str]:
    """The installer's command line: pip into ``site/``, its output into ``install.log`` (read over SSH while it
    runs: a short-lived service's Swarm log is not reliable enough to be the only copy)."""
    pip = ["python3", "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--no-warn-script-location",
           "--progress-bar", "off", "--no-cache-dir", "--target", f"{INSTALL_MOUNT}/{SITE}",
           "-r", f"{INSTALL_MOUNT}/{REQUIREMENTS_FILE}"]
    log_file = f"{INSTALL_MOUNT}/{LOG_FILE}"
    if svc.index_url:
        parts = urlsplit(svc.index_url)
        pip[4:4] = ["--isolated"]
        pip += ["--index-url", svc.index_url, "--log", PIP_DEBUG_LOG]
        if parts.scheme == "http":  # pip ignores a plain-http index unless told; only private hosts are allowed one
            pip += ["--trusted-host", parts.netloc]
        refused = (f"sed -n 's/.*Could not fetch URL [^ ]*: \\(4[0-9][0-9] Client Error: .*\\) - skipping.*/ERROR: "
                   f"the index answered \\1/p' {PIP_DEBUG_LOG} | sort -u | head -n 3 >> {log_file}")
        return ["sh", "-c", f"{shlex.join(pip)} > {log_file} 2>&1 || {{ rc=$?; {refused}; exit $rc; }}"]
    if svc.wheelhouse:
        pip += ["--find-links", WHEELHOUSE_MOUNT] + (["--no-index"] if svc.no_index else [])
    return ["sh", "-c", f"exec {shlex.join(pip)} > {log_file} 2>&1"]


def build_install_spec(svc: InstallService) -> dict[str, Any]:
    """The keyword arguments of ``docker.APIClient.create_service`` for ``svc`` (pure; no Docker needed)."""
    if svc.uid <= 0 or svc.gid < 0:
        raise ValueError(f"the installer must run as a non-root uid, got {svc.uid}:{svc.gid}")
    # Only site/ and log/ are writable, each its own mount: the installer runs code of the packages it builds, and
    # a mount point cannot be replaced from inside the container (by a symlink to elsewhere on the worker, which
    # the job's own bind mount of site/ would then follow).
    install = svc.install_dir.rstrip("/")
    mounts = [Mount(target=f"{INSTALL_MOUNT}/{SITE}", source=f"{install}/{SITE}", type="bind", read_only=False),
              Mount(target=f"{INSTALL_MOUNT}/{LOG_DIR}", source=f"{install}/{LOG_DIR}", type="bind", read_only=False),
              Mount(target=f"{INSTALL_MOUNT}/{REQUIREMENTS_FILE}", source=f"{install}/{REQUIREMENTS_FILE}",
                    type="bind", read_only=True),
              Mount(target="/tmp", source=None, type="tmpfs", tmpfs_size=svc.tmpfs_mb * 2**20)]
    if svc.wheelhouse and not svc.index_url:  # a private index is the only source
        mounts.append(Mount(target=WHEELHOUSE_MOUNT, source=svc.wheelhouse, type="bind", read_only=True))
    env = ["HOME=/tmp", "TMPDIR=/tmp", "PIP_NO_INPUT=1", "PIP_DISABLE_PIP_VERSION_CHECK=1",
           "NVIDIA_VISIBLE_DEVICES=void"]
    secrets = None
    if svc.netrc is not None:
        if not svc.index_url:
            raise ValueError("index credentials without an index URL")
        # The path only: the credentials are in the secret's file, readable by the installer's uid alone.
        secrets = [SecretReference(svc.netrc.id, svc.netrc.name, filename=NETRC_FILE, uid=str(svc.uid),
                                   gid=str(svc.gid), mode=0o400)]
        env.append(f"NETRC={NETRC_PATH}")
    container = ContainerSpec(
        image=svc.image, command=pip_command(svc), user=f"{svc.uid}:{svc.gid}", labels=svc.labels, mounts=mounts,
        env=env, secrets=secrets, read_only=True, cap_drop=["ALL"], init=True, stop_grace_period=int(1e9),
    )
    resources = Resources(cpu_limit=int(svc.cpus * 1e9), mem_limit=svc.memory_mb * 2**20)
    resources["Limits"]["Pids"] = svc.pids_limit  # docker-py has no argument for it; the API (1.41+) has
    template = TaskTemplate(
        container_spec=container, resources=resources,
        restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
        placement=Placement(constraints=[f"node.id=={svc.node_id}"]),
        networks=list(svc.networks) if svc.networks else None,
    )
    return {"task_template": template, "name": svc.name, "labels": svc.labels,
            "mode": ServiceMode("replicated", replicas=1)}


@dataclass(frozen=True)
class InstallEnd:
    """How the installer's task ended: ``state`` (Swarm's), ``exit_code`` (None if no container ran), ``error``
    (Swarm's message, e.g. why it was rejected); ``timed_out`` when it was stopped after the time limit."""

    state: str
    exit_code: int | None
    error: str
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state == "complete" and self.exit_code == 0


async def run_install_service(client: SwarmClient, svc: InstallService, *, timeout: float, remove_timeout: float,
                              on_poll: Callable[[], Awaitable[None]]) -> InstallEnd:
    """Create the installer's service, wait (at most ``timeout`` s) until its task has ended, calling
    ``on_poll()`` every :data:`POLL_SECONDS` meanwhile and once after the end (to relay the install's output), and
    remove the service. Raises :class:`SwarmError` if the Swarm cannot be asked.

    Leaving (normally, on an error, on a timeout, by cancellation) always removes the service and waits until its
    task is gone (its container no longer writes into the install dir): shielded, bounded by ``remove_timeout``;
    a removal that was not confirmed is logged (the caller's cleanup of the install dir may then race the
    container; the cache's stale-directory sweep removes what is left).
    """
    service_id: str | None = None
    try:
        try:
            created: dict[str, Any] = await client._call(f"create service {svc.name}", "create_service", abandon=False,
                                         **build_install_spec(svc))
            service_id = created["ID"]
        except docker.errors.NotFound as exc:  # e.g. the image is not on the manager
            raise SwarmError(f"create service {svc.name}: {exc}") from exc
        end: InstallEnd | None = None
        with trio.move_on_after(timeout):
            while end is None:
                await trio.sleep(POLL_SECONDS)
                end = await _ended(client, service_id)
                await on_poll()
        if end is None:
            return InstallEnd("running", None, f"did not finish within {timeout:g} s", timed_out=True)
        return end
    finally:
        with trio.move_on_after(remove_timeout, shield=True) as removing:
            try:
                await client.remove_service(service_id or svc.name)
            except SwarmError as exc:
                log.warning("remove install service %s: %s", svc.name, exc)
            # By the task's name: once the service is gone, asking by service id is answered "not found" while
            # its task may still be shutting down (and would be asked again until the bound).
            while service_id is not None and await _tasks(client, {"name": svc.name}, tolerant=True):
                await trio.sleep(0.1)
        if removing.cancelled_caught:
            log.warning("install service %s: removal not confirmed within %g s", svc.name, remove_timeout)


async def _tasks(client: SwarmClient, filters: dict[str, str], *, tolerant: bool = False) -> list[dict[str, Any]]:
    try:
        tasks: list[dict[str, Any]] = await client._call("list tasks", "tasks", filters=filters)
        return tasks
    except (SwarmError, docker.errors.NotFound):
        if tolerant:  # still being asked until the removal's bound: a manager that blinks is asked again
            return [{}]
        raise


async def _ended(client: SwarmClient, service_id: str) -> InstallEnd | None:
    for task in await _tasks(client, {"service": service_id}):
        status = task.get("Status") or {}
        state = str(status.get("State", "")).lower()
        if state in TERMINAL_STATES:
            exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
            return InstallEnd(state, exit_code if isinstance(exit_code, int) else None,
                              str(status.get("Err") or status.get("Message") or ""))
    return None


__all__ = ["INSTALL_MOUNT", "InstallEnd", "InstallService", "LABEL_FOR_JOB", "LABEL_KEY", "LABEL_ROLE", "LOG_DIR",
           "LOG_FILE", "REQUIREMENTS_FILE", "ROLE_INSTALL", "SITE", "WHEELHOUSE_MOUNT", "build_install_spec", "pip_command",
           "run_install_service"]

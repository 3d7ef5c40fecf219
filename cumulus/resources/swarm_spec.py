"""A job's Swarm service spec: what a job asks for (:class:`ServiceRequest`), the labels and mount points Cumulus
puts on every job service, and :func:`build_service_spec`, the one place a request becomes the keyword arguments
of ``docker.APIClient.create_service`` (pure: validates, no Docker needed).

Every job container is hardened to Kubernetes' "restricted" bar (docs/design.md, "Job isolation"): a non-root
uid:gid, every capability dropped, a read-only root filesystem with a tmpfs at /tmp (also ``HOME``), memory, CPU
and pids limits, and Docker's default seccomp profile. ``no-new-privileges`` is asked for in the spec
(``Privileges.NoNewPrivileges``), which only Docker API >= 1.44 honours; older engines (API 1.41, Docker 20.10)
ignore the field, so setup-worker.sh also runs every worker's dockerd with ``--no-new-privileges``.

Re-exported by :mod:`cumulus.resources.swarm`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, SecretReference, ServiceMode, TaskTemplate

from cumulus.errors import InvalidRequest

LABEL_JOB = "cumulus.job_id"
LABEL_SUPERVISOR = "cumulus.supervisor_id"
LABEL_PARTITION = "cumulus.partition_id"
LABEL_DEVICE = "cumulus.device_index"
LABEL_WARM = "cumulus.warm"  # a warm service (made before its job; its task keeps the warm id as its job id)
CODE_MOUNT = "/cumulus/code"
OUTPUT_MOUNT = "/cumulus/output"
LEASE_MOUNT = "/cumulus/lease"
DEPS_MOUNT = "/cumulus/deps"
TMP_MOUNT = "/tmp"
DEFAULT_COMMAND = ("python3", "/opt/cumulus/runner.py")
RUNNER_MOUNT = "/opt/cumulus"  # a user image's job gets the worker's runner here (cumulus.resources.user_image)
_IMAGE = re.compile(r"sha256:[0-9a-f]{64}|[A-Za-z0-9.\-\[\]:]+(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}")
_VOLUME = re.compile(r"cumulus-runner-[0-9a-f]{16}")
JOB_NETWORK = "cumulus-jobs"
"""The Swarm-scoped network of ``internet`` jobs (its bridge and egress filter are made by setup-worker.sh)."""
NETWORKS = ("internet", "none")
SERVICE_PREFIX = "cumulus-"
SECRET_ENV_FILE = "cumulus-secret-env"
"""The file name of a job's secret env in its container: ``/run/secrets/cumulus-secret-env`` (the runner reads it)."""
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ID = re.compile(r"^[a-z0-9]{10,64}$")
_USER = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
_SECRET_ID = re.compile(r"[a-z0-9]{10,64}")
_SECRET_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9]")
MiB = 1 << 20


@dataclass(frozen=True)
class SecretEnvRef:
    """A Docker Swarm secret that holds a job's secret env (made by :mod:`cumulus.resources.swarm_secrets`): what a
    service needs to reference it. Never the values."""

    id: str
    name: str


@dataclass(frozen=True)
class ServiceRequest:
    """Everything needed to run one job as a one-task Swarm service pinned to one node.

    ``network``: ``"none"`` (default) or ``"internet"``. ``"internet"`` attaches the task to :data:`JOB_NETWORK`,
    whose bridge on each worker has an egress filter (no private, link-local or the host's own addresses).
    Swarm cannot attach a service to the local ``none`` network (moby/moby#44403), so ``"none"`` means *no
    attachment*: the container gets the worker dockerd's default network mode, which is loopback only because
    setup-worker.sh runs every worker's dockerd with ``--bridge=none`` (checked when the worker registers).
    ``user``: required ``uid:gid`` of the container process; uid 0 is refused (jobs never run as root).
    ``memory_bytes``, ``cpus``, ``pids_limit``: the container's limits; ``tmpfs_bytes``: size of the /tmp tmpfs.
    ``lease_dir``: optional worker directory of the job's partition lease (``JobFiles.lease_dir``), mounted
    read-only at ``/cumulus/lease``: the runner's watchdog kills the job when the holder writes ``expired`` there.
    ``deps_dir``: optional worker directory holding the job's installed requirements (made by the trusted install
    step), mounted read-only at ``/cumulus/deps``.
    ``secret_env``: optional Swarm secret holding the job's secret env, given to the container as the file
    ``/run/secrets/cumulus-secret-env`` (owned by ``user``, mode 0400); its values are never in the spec's env.
    ``image``: the worker image by id, or a user image by digest (``REGISTRY/NAME@sha256:...``), which then needs
    ``runner_volume``: the node's named volume holding the worker's runner, mounted read-only at /opt/cumulus.
    """

    job_id: str
    supervisor_id: str
    node_id: str
    image: str
    device_index: int
    partition_id: str
    code_dir: str
    output_dir: str
    env: dict[str, str] = field(default_factory=dict)
    network: str = "none"
    command: list[str] | None = None
    gpu_uuid: str | None = None
    stop_grace: float = 1.0
    user: str | None = None
    lease_dir: str | None = None
    deps_dir: str | None = None
    runner_volume: str | None = None
    memory_bytes: int = 4096 * MiB
    cpus: float = 2.0
    pids_limit: int = 4096
    tmpfs_bytes: int = 1024 * MiB
    secret_env: SecretEnvRef | None = None
    warm: bool = False  # a warm service: its runner waits for the job (cumulus.resources.warm)

    @property
    def service_name(self) -> str:
        return SERVICE_PREFIX + self.job_id

    def create_time_key(self) -> tuple[Any, ...]:
        """What a container gets at its creation and keeps: a job may take a warm service only if its own request
        has the same key (the rest - its id, partition, share, env - reaches a warm container with its job)."""
        return (self.node_id, self.image, self.device_index, self.gpu_uuid, self.network, self.user,
                self.memory_bytes, self.cpus, self.pids_limit, self.tmpfs_bytes, self.stop_grace,
                self.lease_dir is not None, self.deps_dir, self.runner_volume, self.secret_env,
                tuple(self.command or ()))


def build_service_spec(req: ServiceRequest) -> dict[str, Any]:
    """The keyword arguments of ``docker.APIClient.create_service`` for ``req`` (pure; no Docker needed).

    Raises :class:`InvalidRequest` if a field cannot be turned into a safe spec (job id, node id, image not
    referenced by id, network, env names, stop grace, paths, a missing or root user, limits out of range).
    """
    from cumulus.resources.files import check_job_id  # one job-id rule for files and services

    check_job_id(req.job_id)
    if not _NODE_ID.fullmatch(req.node_id or ""):
        raise InvalidRequest(f"invalid node id {req.node_id!r}")
    if not _IMAGE.fullmatch(req.image):
        raise InvalidRequest(f"image must be referenced by id (sha256:<64 hex>) or digest (REGISTRY/NAME@sha256:"
                             f"<64 hex>), got {req.image!r}")
    if not req.image.startswith("sha256:") and not (req.runner_volume and _VOLUME.fullmatch(req.runner_volume)):
        raise InvalidRequest(f"a user image ({req.image}) needs the runner volume, got {req.runner_volume!r}")
    if req.network not in NETWORKS:
        raise InvalidRequest(f"network must be one of {', '.join(NETWORKS)}, got {req.network!r}")
    _check_hardening(req)
    if not (0 <= req.stop_grace <= 300) or math.isnan(req.stop_grace):
        raise InvalidRequest(f"stop_grace must be within 0..300 s, got {req.stop_grace!r}")
    optional = tuple(p for p in (req.lease_dir, req.deps_dir) if p is not None)
    for path in (req.code_dir, req.output_dir) + optional:
        if not path.startswith("/") or ".." in path.split("/"):
            raise InvalidRequest(f"mount source must be an absolute path without '..': {path!r}")
    if not req.supervisor_id or "=" in req.supervisor_id:
        raise InvalidRequest(f"invalid supervisor id {req.supervisor_id!r}")
    secrets = [_secret_reference(req.secret_env, req.user)] if req.secret_env is not None else None

    env = container_env(req)
    labels = {
        LABEL_JOB: req.job_id,
        LABEL_SUPERVISOR: req.supervisor_id,
        LABEL_PARTITION: req.partition_id,
        LABEL_DEVICE: str(int(req.device_index)),
    }
    if req.warm:
        env["CUMULUS_WARM"] = "1"
        labels[LABEL_WARM] = "1"
    mounts = [
        Mount(target=CODE_MOUNT, source=req.code_dir, type="bind", read_only=True),
        Mount(target=OUTPUT_MOUNT, source=req.output_dir, type="bind", read_only=False),
    ]
    if req.lease_dir is not None:
        mounts.append(Mount(target=LEASE_MOUNT, source=req.lease_dir, type="bind", read_only=True))
    if req.deps_dir is not None:
        mounts.append(Mount(target=DEPS_MOUNT, source=req.deps_dir, type="bind", read_only=True))
    if req.runner_volume is not None:  # never copied into: the job's image has no runner to copy
        mounts.append(Mount(target=RUNNER_MOUNT, source=req.runner_volume, type="volume", read_only=True,
                            no_copy=True))
    mounts.append(Mount(target=TMP_MOUNT, source=None, type="tmpfs", tmpfs_size=int(req.tmpfs_bytes),
                        tmpfs_mode=0o1777))
    container = ContainerSpec(
        image=req.image,
        command=list(req.command) if req.command else list(DEFAULT_COMMAND),
        env=[f"{k}={v}" for k, v in sorted(env.items())],
        labels=dict(labels),
        mounts=mounts,
        stop_grace_period=int(req.stop_grace * 1e9),
        init=True,
        user=req.user,
        read_only=True,
        cap_drop=["ALL"],
        secrets=secrets,
    )
    # API >= 1.44 only (older engines ignore it: their dockerd runs with --no-new-privileges instead).
    container["Privileges"] = {"NoNewPrivileges": True}
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
        placement=Placement(constraints=[f"node.id=={req.node_id}"]),
        networks=[JOB_NETWORK] if req.network == "internet" else None,
    )
    # Raw: docker-py's Resources has no pids limit (Swarm API >= 1.41 has Limits.Pids).
    template["Resources"] = {"Limits": {"NanoCPUs": int(round(req.cpus * 1e9)), "MemoryBytes": int(req.memory_bytes),
                                        "Pids": int(req.pids_limit)}}
    return {
        "task_template": template,
        "name": req.service_name,
        "labels": dict(labels),
        "mode": ServiceMode("replicated", replicas=1),
    }


def container_env(req: ServiceRequest) -> dict[str, str]:
    """The job's environment in its container: its own variables, then Cumulus's, which win. A warm container
    gets it with its job (``start.json``). Raises :class:`InvalidRequest` for a bad variable name."""
    env: dict[str, str] = {}
    for key, value in req.env.items():
        if not _ENV_KEY.fullmatch(str(key)):
            raise InvalidRequest(f"invalid environment variable name {key!r}")
        env[str(key)] = str(value)
    # Cumulus's own variables win over the user's. The root filesystem is read-only: HOME and TMPDIR are the tmpfs.
    env["HOME"] = TMP_MOUNT
    env["TMPDIR"] = TMP_MOUNT
    env["PYTHONUNBUFFERED"] = "1"  # the worker image sets these; a user image need not
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["CUMULUS_JOB_ID"] = req.job_id
    env["CUMULUS_PARTITION_ID"] = req.partition_id
    env["CUMULUS_DEVICE_INDEX"] = str(int(req.device_index))
    # Under the NVIDIA runtime, expose exactly the leased GPU, or none at all.
    env["NVIDIA_VISIBLE_DEVICES"] = req.gpu_uuid if req.gpu_uuid else "void"

    return env


def _secret_reference(ref: SecretEnvRef, user: str | None) -> SecretReference:
    """The job's secret env as a file of the container, readable by the job's user only (checked by the caller)."""
    if not _SECRET_ID.fullmatch(ref.id) or not _SECRET_NAME.fullmatch(ref.name):
        raise InvalidRequest(f"invalid secret reference {ref.id!r} / {ref.name!r}")
    uid, gid = str(user).split(":")
    return SecretReference(ref.id, ref.name, filename=SECRET_ENV_FILE, uid=uid, gid=gid, mode=0o400)


def _check_hardening(req: ServiceRequest) -> None:
    """The user and the limits: a job container never runs as root nor without limits."""
    if not isinstance(req.user, str) or not _USER.fullmatch(req.user):
        raise InvalidRequest(f"user must be 'uid:gid' (the worker's job identity), got {req.user!r}")
    if int(req.user.split(":")[0]) == 0:
        raise InvalidRequest("user: uid 0 (root) is refused: job containers never run as root")
    limits = (("memory_bytes", req.memory_bytes, 16 * MiB, 1 << 44), ("cpus", req.cpus, 0.01, 4096),
              ("pids_limit", req.pids_limit, 16, 1 << 22), ("tmpfs_bytes", req.tmpfs_bytes, MiB, 1 << 40))
    for name, value, low, high in limits:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
            raise InvalidRequest(f"{name} must be within {low}..{high}, got {value!r}")


__all__ = [
    "CODE_MOUNT", "DEFAULT_COMMAND", "DEPS_MOUNT", "LABEL_DEVICE", "LABEL_WARM", "container_env", "LABEL_JOB", "LABEL_PARTITION", "LABEL_SUPERVISOR", "LEASE_MOUNT",
    "OUTPUT_MOUNT", "SECRET_ENV_FILE", "SERVICE_PREFIX", "SecretEnvRef", "ServiceRequest", "build_service_spec",
    "JOB_NETWORK", "NETWORKS", "TMP_MOUNT",
]

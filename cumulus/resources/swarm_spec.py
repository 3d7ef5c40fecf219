"""A job's Swarm service spec: what a job asks for (:class:`ServiceRequest`), the labels and mount points Cumulus
puts on every job service, and :func:`build_service_spec`, the one place a request becomes the keyword arguments
of ``docker.APIClient.create_service`` (pure: validates, no Docker needed).

Re-exported by :mod:`cumulus.resources.swarm`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from docker.types import ContainerSpec, Mount, Placement, RestartPolicy, ServiceMode, TaskTemplate

from cumulus.errors import InvalidRequest

LABEL_JOB = "cumulus.job_id"
LABEL_SUPERVISOR = "cumulus.supervisor_id"
LABEL_PARTITION = "cumulus.partition_id"
LABEL_DEVICE = "cumulus.device_index"
CODE_MOUNT = "/cumulus/code"
OUTPUT_MOUNT = "/cumulus/output"
LEASE_MOUNT = "/cumulus/lease"
DEPS_MOUNT = "/cumulus/deps"
DEFAULT_COMMAND = ("python3", "/opt/cumulus/runner.py")
SERVICE_PREFIX = "cumulus-"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ID = re.compile(r"^[a-z0-9]{10,64}$")


@dataclass(frozen=True)
class ServiceRequest:
    """Everything needed to run one job as a one-task Swarm service pinned to one node.

    ``network``: ``"none"`` (default) or ``"host"``. Swarm cannot attach a service to the local ``none`` network
    (moby/moby#44403), so ``"none"`` means *no attachment*: the container gets the worker dockerd's default
    network mode, which is loopback only when that dockerd runs with ``--bridge=none`` (as the local cluster's
    do; real workers must be configured the same way for ``none`` to mean no network).
    ``user``: optional ``uid[:gid]`` for the container process (default: the image's, i.e. root).
    ``lease_dir``: optional worker directory of the job's partition lease (``JobFiles.lease_dir``), mounted
    read-only at ``/cumulus/lease``: the runner's watchdog kills the job when the holder writes ``expired`` there.
    ``deps_dir``: optional worker directory holding the job's installed requirements (made by the trusted install
    step), mounted read-only at ``/cumulus/deps``.
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

    @property
    def service_name(self) -> str:
        return SERVICE_PREFIX + self.job_id


def build_service_spec(req: ServiceRequest) -> dict[str, Any]:
    """The keyword arguments of ``docker.APIClient.create_service`` for ``req`` (pure; no Docker needed).

    Raises :class:`InvalidRequest` if a field cannot be turned into a safe spec (job id, node id, image not
    referenced by id, network, env names, stop grace, paths).
    """
    from cumulus.resources.files import check_job_id  # one job-id rule for files and services

    check_job_id(req.job_id)
    if not _NODE_ID.match(req.node_id or ""):
        raise InvalidRequest(f"invalid node id {req.node_id!r}")
    if not req.image.startswith("sha256:") or not re.match(r"^sha256:[0-9a-f]{64}$", req.image):
        raise InvalidRequest(f"image must be referenced by id (sha256:<64 hex>), got {req.image!r}")
    if req.network not in ("none", "host"):
        raise InvalidRequest(f"network must be 'none' or 'host', got {req.network!r}")
    if not (0 <= req.stop_grace <= 300) or math.isnan(req.stop_grace):
        raise InvalidRequest(f"stop_grace must be within 0..300 s, got {req.stop_grace!r}")
    optional = tuple(p for p in (req.lease_dir, req.deps_dir) if p is not None)
    for path in (req.code_dir, req.output_dir) + optional:
        if not path.startswith("/") or ".." in path.split("/"):
            raise InvalidRequest(f"mount source must be an absolute path without '..': {path!r}")
    if not req.supervisor_id or "=" in req.supervisor_id:
        raise InvalidRequest(f"invalid supervisor id {req.supervisor_id!r}")

    env: dict[str, str] = {}
    for key, value in req.env.items():
        if not _ENV_KEY.match(str(key)):
            raise InvalidRequest(f"invalid environment variable name {key!r}")
        env[str(key)] = str(value)
    # Cumulus's own variables win over the user's.
    env["CUMULUS_JOB_ID"] = req.job_id
    env["CUMULUS_PARTITION_ID"] = req.partition_id
    env["CUMULUS_DEVICE_INDEX"] = str(int(req.device_index))
    # Under the NVIDIA runtime, expose exactly the leased GPU, or none at all.
    env["NVIDIA_VISIBLE_DEVICES"] = req.gpu_uuid if req.gpu_uuid else "void"

    labels = {
        LABEL_JOB: req.job_id,
        LABEL_SUPERVISOR: req.supervisor_id,
        LABEL_PARTITION: req.partition_id,
        LABEL_DEVICE: str(int(req.device_index)),
    }
    mounts = [
        Mount(target=CODE_MOUNT, source=req.code_dir, type="bind", read_only=True),
        Mount(target=OUTPUT_MOUNT, source=req.output_dir, type="bind", read_only=False),
    ]
    if req.lease_dir is not None:
        mounts.append(Mount(target=LEASE_MOUNT, source=req.lease_dir, type="bind", read_only=True))
    if req.deps_dir is not None:
        mounts.append(Mount(target=DEPS_MOUNT, source=req.deps_dir, type="bind", read_only=True))
    container = ContainerSpec(
        image=req.image,
        command=list(req.command) if req.command else list(DEFAULT_COMMAND),
        env=[f"{k}={v}" for k, v in sorted(env.items())],
        labels=dict(labels),
        mounts=mounts,
        stop_grace_period=int(req.stop_grace * 1e9),
        init=True,
        user=req.user,
    )
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="none", delay=0, max_attempts=0),
        placement=Placement(constraints=[f"node.id=={req.node_id}"]),
        networks=["host"] if req.network == "host" else None,
    )
    return {
        "task_template": template,
        "name": req.service_name,
        "labels": dict(labels),
        "mode": ServiceMode("replicated", replicas=1),
    }


__all__ = [
    "CODE_MOUNT", "DEFAULT_COMMAND", "DEPS_MOUNT", "LABEL_DEVICE", "LABEL_JOB", "LABEL_PARTITION", "LABEL_SUPERVISOR", "LEASE_MOUNT",
    "OUTPUT_MOUNT", "SERVICE_PREFIX", "ServiceRequest", "build_service_spec",
]

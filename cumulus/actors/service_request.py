"""The one place a job's service request is made from the supervisor's settings and the job's spec: for a job's
own (cold) service, and for a warm service made before its job (no spec: the defaults), so that a job takes a warm
service exactly when its own request would have created the same container (``create_time_key``)."""

from __future__ import annotations

from cumulus.config import Settings
from cumulus.jobs import JobSpec
from cumulus.resources.swarm import ServiceRequest

NO_PATH = "/nonexistent"  # a path not known yet (a request made to compare keys, before the job's files exist)


def job_service_request(settings: Settings, spec: JobSpec | None, *, job_id: str, node_id: str, device_index: int,
                        gpu_uuid: str | None, job_user: str, lease_dir: str | None, partition_id: str = "pending",
                        code_dir: str = NO_PATH, output_dir: str = NO_PATH,
                        env: dict[str, str] | None = None) -> ServiceRequest:
    """A job's service request: the job's own limits, else the defaults, never above the maxima (``spec`` None:
    a warm service, which has the defaults and the worker image of ``cluster.default_image``)."""
    limits = settings.containers
    memory = spec.memory_bytes if spec is not None and spec.memory_bytes else limits.memory_mb << 20
    cpus = spec.cpus if spec is not None and spec.cpus else limits.cpus
    return ServiceRequest(
        user=job_user, network=(spec.network if spec is not None else "") or limits.network,
        pids_limit=limits.pids_limit, memory_bytes=min(memory, limits.max_memory_mb << 20),
        cpus=min(cpus, limits.max_cpus), tmpfs_bytes=limits.tmpfs_mb << 20,
        job_id=job_id, supervisor_id=settings.supervisor_id, node_id=node_id,
        image=settings.cluster.image_for(spec.python) if spec is not None else settings.cluster.default_image(),
        device_index=device_index, partition_id=partition_id, code_dir=code_dir, output_dir=output_dir,
        env=dict(env or {}), gpu_uuid=gpu_uuid, stop_grace=settings.jobs.stop_grace, lease_dir=lease_dir,
        warm=spec is None)


def starts_early(spec: JobSpec) -> bool:
    """Whether a job's container can be made before its partition and files (and then wait for them like a warm
    one): nothing of it must be made before its container (a user image, requirements, a secret env) and it asks
    for a share of one device, not whole devices."""
    return not spec.image and not spec.requirements and not spec.secret_env and spec.gpu < 1


def warm_eligible(settings: Settings, spec: JobSpec) -> bool:
    """Whether a job could take a warm service at all: the pool is on and the job could start early."""
    return settings.jobs.warm_per_device > 0 and starts_early(spec)


__all__ = ["NO_PATH", "job_service_request", "starts_early", "warm_eligible"]

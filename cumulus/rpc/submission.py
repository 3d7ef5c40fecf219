"""The validation of job submissions: :func:`spec_from_submission` turns a ``JobSubmission`` into a
:class:`~cumulus.jobs.JobSpec` or raises :class:`~cumulus.errors.InvalidRequest` whose message names the field,
what was sent and what is allowed (the servicer answers ``INVALID_ARGUMENT``).

The job format's own rules (gpu share, requirements, env, the package) come from :mod:`cumulus.jobformat`, the
same functions the SDK checks a request with before sending it; this module adds the fields only the supervisor
judges (duration against its settings, names, priority, retries, queue time). It never imports ``cumulus.client``.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from cumulus.config import python_minor_key
from cumulus.errors import InvalidRequest, Unsatisfiable
from cumulus.jobformat import MiB, check_env, check_gpu_share, check_requirements, validate_package
from cumulus.jobformat.request import check_secret_env
from cumulus.jobformat.sources import check_index_url, parse_image_reference
from cumulus.jobs import JobSpec
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

MAX_NAME_LEN = 128
MAX_IDEMPOTENCY_KEY_LEN = 128
PRIORITY_RANGE = (-1000, 1000)
MAX_RETRIES = 10
MAX_QUEUE_SECONDS = 7 * 86400


def spec_from_submission(request: pb.JobSubmission, settings: Any, *, trace_id: str = "") -> JobSpec:
    """Validate ``request`` against ``settings`` (a :class:`cumulus.config.Settings`) and build the JobSpec, whose
    ``trace_id`` is ``trace_id`` (the servicer's, from the call's ``traceparent`` or made anew).

    Raises InvalidRequest (or its subclass PackageTooLarge) naming the first problem found.
    """
    jobs = settings.jobs
    gpu = check_gpu_share(request.gpu)  # 0 (unset) is refused too: the message lists the allowed values
    duration = check_duration(request.duration_seconds, default=jobs.default_duration, maximum=jobs.max_duration)
    name = check_text("name", request.name, MAX_NAME_LEN)
    key = check_text("idempotency_key", request.idempotency_key, MAX_IDEMPOTENCY_KEY_LEN)
    _check_range("priority", request.priority, *PRIORITY_RANGE)
    _check_range("retries", request.retries, 0, MAX_RETRIES)
    _check_range("max_queue_seconds", request.max_queue_seconds, 0, MAX_QUEUE_SECONDS,
                 hint="0 waits as long as the queue allows")
    env = check_env(dict(request.env))
    secret_env = check_secret_env(dict(request.secret_env), env)  # its messages name variables, never values
    requirements = check_requirements(list(request.requirements))
    memory_bytes, cpus, network = check_container_options(request, settings.containers)
    info = validate_package(request.code_package, jobs.max_package_mb * MiB)  # its requirements and env too
    if requirements and requirements != info.requirements:
        raise InvalidRequest(
            f"requirements {requirements} differ from the package's requirements.txt {info.requirements}; "
            f"the worker installs the package's list: build the package with the same requirements "
            f"(cumulus.client.packaging.build_package(..., requirements=...)) or leave the field empty")
    check_instance(request, info.manifest)
    image = check_user_image(request.image, jobs.image_registries)
    index_url = check_package_index(request.index_url, jobs.package_indexes)
    # A user image brings its own python3 (the runner checks its version); requirements are installed with the
    # worker image of the job's version, whose pip and ABI match it.
    needs_worker_image = not image or bool(requirements or info.requirements)
    python = check_python(info.python, settings.cluster.worker_images(),
                          why="installing requirements" if image else "") if needs_worker_image else \
        python_minor(info.python)
    return JobSpec(
        python=python,
        image=image,
        index_url=index_url,
        package=bytes(request.code_package),
        gpu=gpu,
        duration=duration,
        requirements=tuple(requirements or info.requirements),
        env=env,
        name=name,
        idempotency_key=key,
        retries=request.retries,
        instance=request.instance,
        max_restarts=request.max_restarts,
        retry_exceptions=request.retry_exceptions,
        resume_on_timeout=request.resume_on_timeout,
        priority=request.priority,
        max_queue_seconds=request.max_queue_seconds,
        memory_bytes=memory_bytes,
        cpus=cpus,
        network=network,
        secret_env=secret_env,
        trace_id=trace_id,
    )


def check_instance(request: pb.JobSubmission, manifest: dict[str, Any]) -> None:
    """A class instance says so in the request and in its package's manifest alike; ``max_restarts`` is its own
    (0..MAX_RETRIES), and the options of function jobs that rerun a job (retries, retry_exceptions,
    resume_on_timeout) are not."""
    packaged = manifest.get("instance") is True
    if request.instance != packaged:
        raise InvalidRequest(f"instance={request.instance} but the package's manifest says "
                             f"{'a class instance' if packaged else 'a function job'}: build the package with "
                             f"build_package(..., instance={packaged}) and send the same")
    _check_range("max_restarts", request.max_restarts, 0, MAX_RETRIES)
    if request.max_restarts and not request.instance:
        raise InvalidRequest("max_restarts is for class instances; a function job uses retries")
    if request.instance and (request.retries or request.retry_exceptions or request.resume_on_timeout):
        raise InvalidRequest("retries, retry_exceptions and resume_on_timeout are for function jobs; an instance "
                             "is made again after it died with max_restarts")


def check_container_options(request: pb.JobSubmission, containers: Any) -> tuple[int, float, str]:
    """The job's container memory (bytes), CPUs and network; 0 / 0.0 / "" mean ``containers``' defaults.

    Raises InvalidRequest for memory below 16 MiB or above ``containers.max_memory_mb``, CPUs not within
    0.01..``containers.max_cpus``, a network other than ``internet`` or ``none``."""
    memory, cpus, network = request.memory_bytes, request.cpus, request.network
    max_memory = containers.max_memory_mb * MiB
    if memory and not 16 * MiB <= memory <= max_memory:
        raise InvalidRequest(f"memory_bytes={memory} is out of range; allowed {16 * MiB}..{max_memory} "
                             f"(16 MiB..{containers.max_memory_mb} MiB; 0 means the default, "
                             f"{containers.memory_mb} MiB)")
    if cpus and not (math.isfinite(cpus) and 0.01 <= cpus <= containers.max_cpus):
        raise InvalidRequest(f"cpus={cpus!r} is out of range; allowed 0.01..{containers.max_cpus:g} cores "
                             f"(0 means the default, {containers.cpus:g})")
    if network not in ("", "internet", "none"):
        raise InvalidRequest(f"network={network[:40]!r} is not allowed; use 'internet' (filtered egress), 'none' "
                             f"(no network) or leave it empty (the default, {containers.network!r})")
    return memory, cpus, network


def python_minor(version: str) -> str:
    """``3.13.1`` -> ``3.13``."""
    return ".".join(version.split(".")[:2])


def check_python(version: str, images: dict[str, str], *, why: str = "") -> str:
    """The minor version (``3.13``) of the client's Python ``version`` (the manifest's ``3.13.1``), which must be
    one the cluster has a worker image for (``images``; no images at all: no check, a cluster without workers).
    ``why``: what the worker image is needed for, when not for running the job.

    Raises :class:`~cumulus.errors.Unsatisfiable` (FAILED_PRECONDITION) naming the versions the cluster serves: a
    pickle of one Python minor does not load in another, so such a job could only crash."""
    minor = python_minor(version)
    if images and minor not in images:
        served = ", ".join(sorted(images, key=python_minor_key))
        raise Unsatisfiable(f"the job was packaged by Python {version}, and this cluster runs jobs on Python "
                            f"{served} only{' for ' + why if why else ''} (a function pickled by one "
                            f"Python version does not load in another): "
                            f"submit from a Python {served} client (e.g. a virtualenv made with that python), or "
                            f"ask the operator for a worker image of Python {minor} (cluster.images)")
    return minor


def check_user_image(reference: str, registries: list[str]) -> str:
    """``reference`` normalised (:func:`~cumulus.jobformat.sources.parse_image_reference`; "" stays ""), from one
    of ``registries`` (``jobs.image_registries``), else :class:`~cumulus.errors.Unsatisfiable` naming them."""
    if not reference:
        return ""
    parsed = parse_image_reference(reference)
    if parsed.registry not in {r.lower() for r in registries}:
        allowed = ", ".join(registries) if registries else "none: this cluster runs jobs on its worker images only"
        raise Unsatisfiable(f"image={reference!r} is from the registry {parsed.registry}, which this cluster does not "
                            f"allow (jobs.image_registries: {allowed}); push the image to an allowed registry or "
                            f"leave image= out")
    return str(parsed)


def check_package_index(url: str, indexes: list[str]) -> str:
    """``url`` normalised (a trailing ``/``; "" stays ""), one of ``indexes`` (``jobs.package_indexes``), else
    :class:`~cumulus.errors.Unsatisfiable` naming them."""
    if not url:
        return ""
    normalised = check_index_url(url)
    if normalised not in {i.rstrip("/") + "/" for i in indexes}:
        allowed = ", ".join(indexes) if indexes else "none: requirements come from the cluster's default index"
        raise Unsatisfiable(f"index_url={url[:200]!r} is not a package index this cluster allows "
                            f"(jobs.package_indexes: {allowed})")
    return normalised


def check_duration(seconds: int, *, default: int, maximum: int) -> int:
    if seconds == 0:
        return default
    if not 1 <= seconds <= maximum:
        raise InvalidRequest(f"duration_seconds={seconds!r} is not allowed; use 1..{maximum} seconds "
                             f"(0 means the default, {default} s)")
    return seconds


def check_text(field: str, value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise InvalidRequest(f"{field} is {len(value)} characters long; at most {max_len} are allowed")
    bad = [c for c in value if unicodedata.category(c).startswith("C")]
    if bad:
        raise InvalidRequest(f"{field} {value[:40]!r} contains control character {bad[0]!r}; "
                             f"use printable characters only")
    return value


def _check_range(field: str, value: int, low: int, high: int, *, hint: str = "") -> None:
    if not low <= value <= high:
        extra = f" ({hint})" if hint else ""
        raise InvalidRequest(f"{field}={value} is out of range; allowed {low}..{high}{extra}")

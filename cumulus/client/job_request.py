"""The ``JobSubmission`` of one call: :func:`submission` packs a call (:mod:`cumulus.client.packaging`) and puts it
with its checked options into the request that ``CumulusClient.submit_call`` sends.

A function's call and a class's construction (``@remote`` on a class: ``instance=True``) go the same way; an
instance's request says so (``instance``, with ``max_restarts``) and its package's manifest too.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping, Sequence

from cumulus.client import packaging
from cumulus.client.collect import function_name
from cumulus.client.options import DEFAULT_GPU
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

__all__ = ["submission"]


def submission(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any] | None,
               opts: Mapping[str, Any], *, max_bytes: int, instance: bool = False) -> pb.JobSubmission:
    """The request for ``func(*args, **kwargs)`` with ``opts`` (as :func:`~cumulus.client.options.normalize_options`
    returns them; the client's own ones, ``address``, ``log_to_driver`` and ``timeout``, are not read here).
    Raises what :func:`~cumulus.client.packaging.build_package` raises."""
    requirements = list(opts.get("requirements", ()))
    env = dict(opts.get("env") or {})
    package = packaging.build_package(func, tuple(args), dict(kwargs or {}), requirements=requirements, env=env,
                                      project_root=opts.get("project_root"), max_bytes=max_bytes,
                                      py_modules=opts.get("py_modules", ()), working_dir=opts.get("working_dir"),
                                      files=opts.get("files", ()), instance=instance)
    return pb.JobSubmission(
        code_package=package,
        requirements=requirements,
        gpu=float(opts.get("gpu", DEFAULT_GPU)),
        duration_seconds=int(opts.get("duration", 0)),
        env=env,
        idempotency_key=opts.get("idempotency_key") or f"sdk-{uuid.uuid4().hex}",
        name=opts.get("name") or function_name(func).removeprefix("__main__."),
        retries=int(opts.get("retries", 0)),
        retry_exceptions=bool(opts.get("retry_exceptions", False)),
        resume_on_timeout=bool(opts.get("resume_on_timeout", False)),
        priority=int(opts.get("priority", 0)),
        max_queue_seconds=int(opts.get("max_queue_seconds", 0)),
        memory_bytes=int(opts.get("memory", 0)),  # 0, "", 0.0: the supervisor's containers defaults
        cpus=float(opts.get("cpus", 0.0)),
        network=opts.get("network", ""),
        image=opts.get("image") or "",
        index_url=opts.get("index_url") or "",
        secret_env=opts.get("secret_env") or {},  # in the request only: never in the package or its manifest
        instance=instance,
        max_restarts=int(opts.get("max_restarts", 0)),
    )

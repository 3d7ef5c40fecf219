"""A job attempt's trusted requirements step: the job's requirements installed on its node before its container
starts (:mod:`cumulus.resources.requirements_cache`), mounted read-only at /cumulus/deps, with the install's
output in the job's log and a failed install as the job's typed failure.

Used by :class:`cumulus.actors.attempt.Attempt` next to the partition and the job files.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.backends import DockerSwarmBackend, NodeBackend, SshNodeBackend
from cumulus.jobformat import encode_result
from cumulus.jobs import FailureReason
from cumulus.resources.requirements_cache import (CacheSettings, RequirementsInstallFailed, cache_root,
                                                  open_requirements)
from cumulus.resources.swarm_spec import JOB_NETWORK


def cache_settings(settings: Any) -> CacheSettings:
    """The node cache's settings from the supervisor's: the installer is limited like a job container, attached
    to the jobs' filtered network (it needs the package index, never the cluster), and an entry counts as in use
    for as long as a job may run."""
    limits = settings.containers
    return CacheSettings(root=cache_root(settings.cluster.jobs_dir), remove_timeout=settings.jobs.release_timeout,
                         min_idle_s=float(settings.jobs.max_duration), memory_mb=limits.memory_mb, cpus=limits.cpus,
                         pids_limit=limits.pids_limit, tmpfs_mb=limits.tmpfs_mb, networks=(JOB_NETWORK,))


@asynccontextmanager
async def job_requirements(ctx: Any, node: NodeBackend, node_id: str) -> AsyncIterator[str | None]:
    """Yield the worker directory holding the job's installed requirements (for ``ServiceRequest.deps_dir``), or
    ``None`` when the job has none.

    Also ``None`` on backends that are not a real worker and Swarm (the in-memory fakes of the unit tests): their
    job runs the runner in a local process, which then installs the requirements itself (its fallback).
    A failed install ends the attempt with ``container_failed`` and an envelope whose ``exc_type`` is
    ``cumulus.RequirementsInstallFailed`` (what the caller's ``result()`` raises), not retried: the same list
    would fail again. SSH or Swarm errors propagate (an infrastructure failure, retried).
    """
    record, swarm = ctx.record, ctx.swarm
    if not record.spec.requirements or not isinstance(node, SshNodeBackend) or \
            not isinstance(swarm, DockerSwarmBackend):
        yield None
        return
    settings = ctx.settings
    entered = False
    try:
        async with open_requirements(
                node.conn, swarm.client, requirements=record.spec.requirements, image=settings.cluster.image_for(record.spec.python),
                node_id=node_id, supervisor_id=settings.supervisor_id, job_id=record.job_id,
                settings=cache_settings(settings), on_line=lambda line: record.add_log("stderr", line)) as deps_dir:
            entered = True
            yield deps_dir
    except RequirementsInstallFailed as failed:
        if entered:
            raise
        envelope = encode_result(False, exc_type=failed.EXC_TYPE, exc_message=failed.message, traceback=failed.output)
        raise JobStopped(Outcome.failed(FailureReason.CONTAINER_FAILED, f"requirements: {failed.message}",
                                        result=envelope, retry=False)) from None

"""A job attempt's trusted requirements step: the job's requirements installed on its node before its container
starts (:mod:`cumulus.resources.requirements_cache`), mounted read-only at /cumulus/deps, with the install's
output in the job's log and a failed install as the job's typed failure.

A job with a private index (``spec.index_url``) installs from it alone, with its owner's credentials for it as the
journal keeps them (:mod:`cumulus.index_credentials`, asked for at install time; none stored: pip goes without).
They reach the installer only, as a netrc file (:mod:`cumulus.resources.index_netrc`); the job's container, its
env and its log never see them. Where no trusted install step can run (the in-memory test backends, whose runner
would install from the default index), such a job fails at once instead of installing from elsewhere.

Used by :class:`cumulus.actors.attempt.Attempt` next to the partition and the job files.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, NoReturn

from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.backends import DockerSwarmBackend, NodeBackend, SshNodeBackend
from cumulus.errors import Unsatisfiable
from cumulus.index_credentials import CredentialsFor
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
    record, swarm, spec = ctx.record, ctx.swarm, ctx.record.spec
    real = isinstance(node, SshNodeBackend) and isinstance(swarm, DockerSwarmBackend)
    if spec.requirements and spec.index_url and not real:
        _fail(f"index_url={spec.index_url} needs the supervisor's install step, which this backend has not "
              f"(the job's own runner would install from the default index)")
    if not spec.requirements or not real:
        yield None
        return
    settings = ctx.settings
    entered = False
    try:
        credential = None
        if spec.index_url:
            credential = await _owner_credential(ctx)
        async with open_requirements(
                node.conn, swarm.client, requirements=spec.requirements, image=settings.cluster.image_for(spec.python),
                node_id=node_id, supervisor_id=settings.supervisor_id, job_id=record.job_id,
                settings=cache_settings(settings), on_line=lambda line: record.add_log("stderr", line),
                index_url=spec.index_url, owner=spec.owner, credential=credential) as deps_dir:
            entered = True
            yield deps_dir
    except RequirementsInstallFailed as failed:
        if entered:
            raise
        message = failed.message
        if spec.index_url and "answered 401" in failed.output + message:
            message += (f" (the index {spec.index_url} wants credentials: "
                        f"{'the ones stored were refused' if credential else 'none are stored'} for user "
                        f"{spec.owner!r}; store them with `cumulus index login {spec.index_url}`)")
        _fail(message, failed.output)


async def _owner_credential(ctx: Any) -> Any:
    """The job owner's stored credentials for its index (None when none), from the journal."""
    spec = ctx.record.spec
    if ctx.journal is None:
        return None
    try:
        return await ctx.journal.call(CredentialsFor(spec.owner, spec.index_url))
    except Unsatisfiable as error:  # sealed with another key: the user must store them again
        _fail(str(error))


def _fail(message: str, output: str = "") -> NoReturn:
    """End the attempt as a failed install (not retried: it would fail again)."""
    envelope = encode_result(False, exc_type=RequirementsInstallFailed.EXC_TYPE, exc_message=message, traceback=output)
    raise JobStopped(Outcome.failed(FailureReason.CONTAINER_FAILED, f"requirements: {message}", result=envelope,
                                    retry=False)) from None

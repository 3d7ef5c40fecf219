"""A job's attempt and a warm service: taking one from its worker's pool (:func:`claim_warm`) and handing it the
job (:func:`start_warm`). The pool is :mod:`cumulus.actors.warm_pool`; the files' side, :mod:`cumulus.resources.warm`.
"""

from __future__ import annotations

import logging
from typing import Any

from cumulus import metrics
from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.actors.warm_pool import ClaimWarm, WarmService
from cumulus.backends import NodeBackend
from cumulus.errors import ActorDied
from cumulus.jobs import FailureReason
from cumulus.resources.swarm_spec import ServiceRequest, container_env
from cumulus.resources.warm import WarmServiceGone, start_message

log = logging.getLogger(__name__)


async def claim_warm(ctx: Any, node_id: str, request: ServiceRequest) -> WarmService | None:
    """A warm service of the job's worker whose container is what the job's own ``request`` would create, now the
    caller's to own; ``None``: none is ready (the job starts cold). Its env must fit a start message."""
    worker = ctx.workers(node_id) if ctx.workers is not None else None
    if worker is None or start_message(container_env(request)) is None:
        return None
    try:
        return await worker.call(ClaimWarm(request.create_time_key()))
    except ActorDied:  # the worker is going: cold, like any job placed there now
        return None


async def start_warm(node: NodeBackend, request: ServiceRequest, worker: str) -> None:
    """Hand the job (whose partition and files are in place, ``request`` complete) to its warm container. One that
    does not take it ends the attempt as an infrastructure failure, retried: the job never started there."""
    message = start_message(container_env(request))
    assert message is not None  # checked when it was claimed; the partition id is all that changed
    try:
        await node.start_warm_job(request.job_id, message)
    except WarmServiceGone as gone:
        metrics.current().warm_failures.labels(worker, "start").inc()
        raise JobStopped(Outcome.failed(FailureReason.INFRASTRUCTURE, str(gone), retry=True)) from None


__all__ = ["claim_warm", "start_warm"]

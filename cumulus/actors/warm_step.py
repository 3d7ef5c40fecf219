"""A job's attempt and a warm service: taking one from its worker's pool (:func:`take_warm`) and handing it the
job (:func:`start_warm`). The pool is :mod:`cumulus.actors.warm_pool`; the files' side, :mod:`cumulus.resources.warm`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.actors.warm_pool import CLAIM_SECONDS, ClaimWarm, WarmService
from cumulus.backends import NodeBackend
from cumulus.errors import ActorDied
from cumulus.jobs import FailureReason
from cumulus.resources.swarm_spec import ServiceRequest, container_env
from cumulus.resources.warm import WarmServiceGone, start_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakenWarm:
    """A warm service a job's attempt took and owns: its service handle, and its directories on the worker, held
    (removed on release) until the attempt has renamed them to its own and sets ``dirs.handed_over``."""

    warm: WarmService
    service: Any  # the ServiceHandle
    dirs: Any  # the WarmDirs


async def take_warm(ctx: Any, own: Any, node: NodeBackend, node_id: str, request: ServiceRequest) -> TakenWarm | None:
    """Take a warm service of the job's worker whose container is what the job's own ``request`` would create,
    and own it and its directories with ``own`` (the attempt's owner: leaving it removes them like the job's own);
    ``None``: none is ready (the job starts cold). Its env must fit a start message.

    Cancellation: the claim runs shielded (bounded), and what it hands over is owned before the next checkpoint,
    so a warm service is never dropped between the pool and the attempt."""
    worker = ctx.workers(node_id) if ctx.workers is not None else None
    if worker is None or start_message(container_env(request)) is None:
        return None
    warm = None
    with trio.move_on_after(CLAIM_SECONDS + 5, shield=True):
        try:
            warm = await worker.call(ClaimWarm(request.create_time_key()))
        except ActorDied:  # the worker is going: cold, like any job placed there now
            pass
    if warm is None:
        return None
    # Entering these does not checkpoint: a cancel pending now is delivered once both are owned.
    service = await own(ctx.swarm.claim_service(warm.service_id, warm.name, warm.warm_id), what="service",
                        same_task=True)
    dirs = await own(node.open_warm_dirs(warm.warm_id, claimed=True), what="warm dirs", same_task=True)
    return TakenWarm(warm, service, dirs)


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


__all__ = ["TakenWarm", "start_warm", "take_warm"]

"""A job's attempt and a waiting service: taking a warm one from its worker's pool (:func:`take_warm`), or making
the job's own the same way before its partition and files (:func:`make_early`), and handing it the job
(:func:`start_warm`). The pool is :mod:`cumulus.actors.warm_pool`; the files' side, :mod:`cumulus.resources.warm`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.actors.warm_pool import CLAIM_SECONDS, ClaimWarm, WarmService
from cumulus.backends import NodeBackend
from cumulus.errors import ActorDied
from cumulus.jobs import FailureReason
from cumulus.resources.swarm import TaskState
from cumulus.resources.swarm_spec import ServiceRequest, container_env
from cumulus.resources.warm import EARLY_START_TIMEOUT, START_TIMEOUT, WarmServiceGone, start_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakenWarm:
    """A warm service a job's attempt took and owns: its service handle, and its directories on the worker, held
    (removed on release) until its files and partition steps hold them and it sets ``dirs.handed_over``."""

    warm: WarmService
    service: Any  # the ServiceHandle
    dirs: Any  # the WarmDirs
    early: bool = False  # made for this job just now (its container may still be starting), not from the pool


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
    # Entering these does not checkpoint: a cancel pending now is delivered once both are owned. In the order of
    # a service made early (its directories first): the service is removed before them.
    dirs = await own(node.open_warm_dirs(warm.warm_id, claimed=True), what="warm dirs", same_task=True)
    service = await own(ctx.swarm.claim_service(warm.service_id, warm.name, warm.warm_id), what="service",
                        same_task=True)
    return TakenWarm(warm, service, dirs)


async def make_early(ctx: Any, own: Any, node: NodeBackend, request: ServiceRequest) -> TakenWarm | None:
    """The job's own service, made before its partition and files and waiting for them like a warm one: Swarm
    schedules and starts its container (the cold path's longest step) while the partition is made and the package
    uploaded into its directories, which are made first (the job's own, with the FIFO). Owned with ``own`` like a
    taken warm service (its directories until the files and partition steps hold them). ``None``: its env does not
    fit a start message (the job's service is then made after its partition and files, with its env)."""
    if start_message(container_env(request)) is None:
        return None
    # Under the job's own name: the container mounts them when it starts, after the files step filled them (a
    # rename, as a warm service's take, would leave it a missing mount source).
    dirs = await own(node.open_warm_dirs(request.job_id), what="warm dirs", same_task=True)
    early = replace(request, warm=True, env={}, code_dir=dirs.code_dir, output_dir=dirs.output_dir)
    service = await own(ctx.swarm.open_service(early), what="service", same_task=True)
    return TakenWarm(WarmService(service.id, service.name, request.job_id), service, dirs, early=True)


async def start_warm(node: NodeBackend, request: ServiceRequest, worker: str, taken: TakenWarm,
                     updates: trio.MemoryReceiveChannel[TaskState]) -> None:
    """Hand the job (whose partition and files are in place, ``request`` complete) to its warm container, waiting
    for it to be up if it was made just now (its task's end meanwhile is the container's failure). One that does
    not take it ends the attempt as an infrastructure failure, retried: the job never started there."""
    message = start_message(container_env(request))
    assert message is not None  # checked when it was claimed or made; the partition id is all that changed
    failure, ended = None, []
    async with trio.open_nursery() as nursery:
        if taken.early:
            nursery.start_soon(_watch_for_end, updates, taken.service.id, ended, nursery.cancel_scope)
        try:
            await node.start_warm_job(request.job_id, message,
                                      timeout=EARLY_START_TIMEOUT if taken.early else START_TIMEOUT)
        except WarmServiceGone as gone:
            failure = str(gone)
        nursery.cancel_scope.cancel()
    if ended:
        task = ended[0]
        failure = (f"its container ended before it took the job: {task.state}"
                   f"{f' ({task.error or task.message})' if task.error or task.message else ''}")
    if failure is not None:
        metrics.current().warm_failures.labels(worker, "start").inc()
        raise JobStopped(Outcome.failed(FailureReason.INFRASTRUCTURE, failure, retry=True))


async def _watch_for_end(updates: trio.MemoryReceiveChannel[TaskState], service_id: str, ended: list[TaskState],
                         handing: trio.CancelScope) -> None:
    """Until cancelled: the service's task ending (a container that failed to start) stops the hand-over. The
    states read here before that are not missed: the job is RUNNING from its hand-over on."""
    async for task in updates:
        if task.service_id == service_id and task.terminal:
            ended.append(task)
            handing.cancel()
            return


__all__ = ["TakenWarm", "make_early", "start_warm", "take_warm"]

"""Docker Swarm, through the manager's API (docker-py): job services, their tasks, their logs, the node list.

This module owns a job service's lifecycle: :func:`open_service` (create, and remove on exit until its task is
seen gone) and :func:`adopt_service` (take over one an earlier supervisor created). The rest lives beside it and
is re-exported here, so ``cumulus.resources.swarm`` stays the one name to import from:

* :mod:`cumulus.resources.swarm_spec` - :class:`ServiceRequest`, labels and mount points, :func:`build_service_spec`;
* :mod:`cumulus.resources.swarm_client` - :class:`SwarmClient`, :class:`SwarmError`, and the read models
  (:class:`NodeInfo`, :class:`TaskState`, :class:`ServiceInfo`, :class:`ServiceHandle`);
* :mod:`cumulus.resources.swarm_logs` - :func:`follow_logs`.

Only the manager's socket is used; nothing here talks to a worker's own dockerd.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import docker.errors
import trio

from cumulus.resources.swarm_client import (
    TERMINAL_STATES, NodeInfo, ServiceHandle, ServiceInfo, SwarmClient, SwarmError, TaskState,
)
from cumulus.resources.swarm_logs import MAX_PENDING_LINES, follow_logs
from cumulus.resources.swarm_spec import (
    CODE_MOUNT, DEFAULT_COMMAND, LABEL_DEVICE, LABEL_JOB, LABEL_PARTITION, LABEL_SUPERVISOR, LEASE_MOUNT, OUTPUT_MOUNT,
    SERVICE_PREFIX, ServiceRequest, build_service_spec,
)

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_service(
    client: SwarmClient, request: ServiceRequest, *, remove_timeout: float = 20.0
) -> AsyncIterator[ServiceHandle]:
    """Create the job's service and yield its :class:`ServiceHandle`.

    Leaving the block (normally, by exception or by cancellation) removes the service and waits until its task
    is gone, i.e. the container was stopped (SIGTERM to the init, SIGKILL after ``stop_grace``) and removed on
    the worker. Shielded and bounded by ``remove_timeout``; idempotent (already removed = fine). Afterwards
    ``handle.removal_confirmed`` tells whether the disappearance was seen (``False``: node down, or the manager
    unreachable; the service is then found again by its labels).
    If creation is cancelled after Docker accepted it, the service is removed by name before re-raising.
    """
    handle = None
    try:
        handle = await client.create_service(request)
    finally:
        if handle is None:
            # The create call may have gone through even though we did not see its answer (it is never
            # abandoned, but a Cancelled arriving right after, or a timeout, could hide it): remove by name.
            with trio.move_on_after(remove_timeout, shield=True):
                try:
                    await client.remove_service(request.service_name)
                except SwarmError:
                    pass
    async with _removed_on_exit(client, handle, remove_timeout):
        yield handle


@asynccontextmanager
async def adopt_service(
    client: SwarmClient, service_id: str, job_id: str, *, remove_timeout: float = 20.0
) -> AsyncIterator[ServiceHandle]:
    """Take charge of a job's service that already exists (created by an earlier supervisor, e.g. before a
    restart; found by its labels); yield its :class:`ServiceHandle` (its ``job_id``: its task's job label, the warm
    id for a warm service a job took). ``service_id``: id or name.

    Raises :class:`SwarmError` if there is no such service (or the manager cannot be asked). Leaving the block
    removes the service and waits until its task is gone, exactly as :func:`open_service` does.
    """
    try:
        info = await client._call(f"inspect service {service_id}", "inspect_service", service_id)
    except docker.errors.NotFound as exc:
        raise SwarmError(f"adopt service {service_id}: no such service") from exc
    spec = info.get("Spec") or {}
    # Its task's job label: a warm service a job took keeps its warm id there.
    task_key = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(LABEL_JOB, job_id)
    handle = ServiceHandle(info["ID"], spec.get("Name", ""), task_key)
    async with _removed_on_exit(client, handle, remove_timeout):
        yield handle


@asynccontextmanager
async def claim_service(
    client: SwarmClient, service_id: str, name: str, task_key: str, *, remove_timeout: float = 20.0
) -> AsyncIterator[ServiceHandle]:
    """Take charge of a service another owner created and handed over (a warm service a job took, known by its
    id, name and the ``cumulus.job_id`` label of its task, ``task_key``); no Docker call. Leaving the block removes
    it exactly as :func:`open_service` does."""
    handle = ServiceHandle(service_id, name, task_key)
    async with _removed_on_exit(client, handle, remove_timeout):
        yield handle


@asynccontextmanager
async def _removed_on_exit(client: SwarmClient, handle: ServiceHandle, remove_timeout: float) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if not handle.handed_over:  # else its new owner removes it
            await _remove_and_confirm(client, handle, remove_timeout)


async def _remove_and_confirm(client: SwarmClient, handle: ServiceHandle, remove_timeout: float) -> None:
    with trio.move_on_after(remove_timeout, shield=True):
        try:
            await client.remove_service(handle.id)
        except SwarmError as exc:
            log.warning("remove service %s: %s", handle.name, exc)
        if not handle.confirm_removal:
            return
        handle.removal_confirmed = await client.wait_gone(
            handle.id, handle.job_id, timeout=remove_timeout, give_up=lambda: handle.node_unreachable)
    if not handle.removal_confirmed:
        log.warning("service %s (%s): removal not confirmed %s", handle.name, handle.id,
                    "(its node is unreachable)" if handle.node_unreachable else f"within {remove_timeout:.0f} s")



__all__ = [
    "CODE_MOUNT", "DEFAULT_COMMAND", "LABEL_DEVICE", "LABEL_JOB", "LABEL_PARTITION", "LABEL_SUPERVISOR", "LEASE_MOUNT",
    "MAX_PENDING_LINES", "OUTPUT_MOUNT", "SERVICE_PREFIX", "TERMINAL_STATES", "NodeInfo", "ServiceHandle",
    "ServiceInfo", "ServiceRequest", "SwarmClient", "SwarmError", "TaskState", "adopt_service", "build_service_spec",
    "claim_service",
    "follow_logs", "open_service",
]

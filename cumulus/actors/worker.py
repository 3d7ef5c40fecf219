"""WorkerActor: one per Swarm worker node. Owns the node's SSH connection, its health, the renewal of the partition
leases held through it, and the reaping of orphans on it.

The connection is kept in a background task that reconnects with backoff; while it is up, jobs reach the node
through it (:class:`~cumulus.backends.NodeConnections`) and the Scheduler is told the node can take jobs
(:class:`~cumulus.actors.scheduler.WorkerHealth`), unless the node failed its job isolation check (then it is
reported unhealthy with the check's reason, and checked again on each reconnect); when it drops, every lease held
through it is lost (its jobs stop: node_lost) and the Scheduler is told at once. Once connected, the actor reaps
orphans on its node: partition holders and job directories of this supervisor that no live job owns (it asks the
cluster which jobs are live). Device shares are not kept here: the Scheduler owns them. While connected and
taking jobs it keeps the node's warm services (:mod:`cumulus.actors.warm_pool`) and hands them to jobs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.image_gate import WorkerImages
from cumulus.actors.ownership import Leak
from cumulus.actors.scheduler import WorkerHealth
from cumulus.actors.warm_pool import ClaimWarm, WarmPool, warm_devices
from cumulus.backends import Backends, NodeBackend, NodeConnections, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied
from cumulus.devices import DeviceInfo
from cumulus.resources.job_network import WorkerNotIsolated
from cumulus.resources.warm import is_other_nodes_warm
from cumulus.resources.swarm import NodeInfo

log = logging.getLogger(__name__)

HEALTH_PROBE_SECONDS = 5.0
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTH_REPORT_SECONDS = 30.0


@dataclass(frozen=True)
class NodeUpdate:
    """Cast by the cluster: the Swarm's description of the node changed (labels, state)."""

    node: NodeInfo


@dataclass(frozen=True)
class LiveJobs:
    """Call to the cluster: the ids of the jobs that are not torn down yet (a frozenset)."""


def parse_devices(labels: dict[str, str]) -> list[DeviceInfo]:
    """The device inventory from a node's ``cumulus.devices`` label (written by setup-worker.sh)."""
    try:
        raw = json.loads(labels.get("cumulus.devices", "[]"))
    except ValueError:
        return []
    devices = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            devices.append(DeviceInfo(
                index=int(entry["index"]), name=str(entry.get("name", "")), kind=str(entry.get("kind", "")),
                is_gpu=bool(entry.get("is_gpu", False)), memory_bytes=int(entry.get("memory_bytes") or 0),
                uuid=entry.get("uuid"),
            ))
        except (KeyError, TypeError, ValueError):
            continue
    return devices


class WorkerActor(Actor):
    mailbox_size = 256

    def __init__(
        self,
        node: NodeInfo,
        settings: Settings,
        backends: Backends,
        *,
        connections: NodeConnections,
        scheduler: ActorRef,
        cluster: ActorRef,
        job_prefix: str,
        images: WorkerImages | None = None,
        swarm: SwarmBackend | None = None,
        watcher: ActorRef | None = None,
    ) -> None:
        super().__init__(f"worker:{node.hostname}")
        self.node = node
        self.settings = settings
        self.backends = backends
        self.connections = connections
        self.scheduler = scheduler
        self.cluster = cluster
        self.job_prefix = job_prefix
        self.reaped: list[str] = []
        self.images = images  # the worker image gate (cumulus.actors.image_gate); None: off
        self.warm = WarmPool(node.hostname, settings, swarm, watcher) \
            if swarm is not None and watcher is not None and settings.jobs.warm_per_device else None

    async def on_start(self) -> None:
        self.start_soon(self._keep_connected)

    async def handle(self, message: Any) -> Any:
        match message:
            case NodeUpdate(node):
                self.node = node
                return None
            case ClaimWarm(key):
                return await self.warm.claim(key) if self.warm is not None else None
        raise TypeError(f"{self.name}: unknown message {message!r}")

    async def _tell_health(self, connected: bool, reason: str = "", *, takes_jobs: bool = True) -> None:
        """Tell the Scheduler (waiting if its mailbox is full: a lost word would leave the node wrongly marked)."""
        with trio.move_on_after(HEALTH_REPORT_SECONDS, shield=True) as scope:
            try:
                await self.scheduler.cast(WorkerHealth(self.node.id, connected, reason, takes_jobs))
            except ActorDied:  # the Scheduler is stopping; a new one hears from this worker's next incarnation
                pass
        if scope.cancelled_caught:
            log.error("%s: could not tell the Scheduler that the node is %s within %g s", self.name,
                      "connected" if connected else "lost", HEALTH_REPORT_SECONDS)

    # ---- connection and orphans -------------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        attempt = 0
        while True:
            reason = "connection closed"
            backend: NodeBackend | None = None
            try:
                async with self.backends.connect_node(self.node, self.settings) as backend:
                    attempt = 0
                    await self._reap_orphans(backend)
                    if backend.isolation_problem:  # unsafe for jobs: none is placed here (checked on each connect)
                        raise WorkerNotIsolated(backend.isolation_problem)
                    with self.connections.serving(self.node.id, backend):
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._renew_leases, backend)
                            nursery.start_soon(self._take_jobs, backend)
                            while await backend.is_alive():
                                await trio.sleep(HEALTH_PROBE_SECONDS)
                            nursery.cancel_scope.cancel()
                        reason = "SSH health probe failed"
                        # Now, not after closing the connection (which can take its timeout on a cut network):
                        # no new reservations here, and the jobs held through it stop (node_lost).
                        await self._lost(backend, reason)
                        backend = None
            except Exception as error:  # a failed connection is a state of the node, not a crash of this actor
                reason = str(error) if isinstance(error, WorkerNotIsolated) else f"SSH: {error}"
                log.warning("%s: %s", self.name, reason)
                if backend is None:  # it never connected: say why (ListWorkers shows it)
                    await self._tell_health(False, reason)
            finally:
                if backend is not None:
                    # Nothing held through this connection can be renewed or released any more: its jobs
                    # stop now (node_lost) instead of waiting for a connection that may never return.
                    await self._lost(backend, reason)
            await trio.sleep(RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)])
            attempt += 1

    async def _take_jobs(self, backend: NodeBackend) -> None:
        """Connected: the node takes new jobs once its worker image is there (the image gate). Meanwhile it is
        "preparing" with the gate's reason, and its running jobs are followed and re-adopted (leases renewed)."""
        if self.images is not None:
            self.node = await self.images.ensure(lambda: self.node, self._preparing) or self.node
        await self._tell_health(True)
        log.info("%s: connected (%s)", self.name, backend.label)
        if self.warm is not None:
            devices = warm_devices(parse_devices(self.node.labels), self.settings.cluster.allow_non_gpu_devices)
            await self.warm.run(backend, self.node.id, devices)

    async def _preparing(self, reason: str) -> None:
        await self._tell_health(True, reason, takes_jobs=False)

    async def _lost(self, backend: NodeBackend, reason: str) -> None:
        backend.fail_leases(f"connection lost to {self.node.hostname}: {reason}")
        await self._tell_health(False, reason)

    async def _renew_leases(self, backend: NodeBackend) -> None:
        """Renew the partition leases of every job on this node, one SSH command per interval."""
        while True:
            try:
                renewed = await backend.renew_leases()
                metrics.current().leases_renewed.labels(self.node.hostname).inc(renewed or 0)
            except Exception as error:  # one missed renewal is survivable (ttl >= 2 intervals); log it
                log.warning("%s: renewing leases failed: %s", self.name, error)
            await trio.sleep(self.settings.lease.renew_interval)

    async def _reap_orphans(self, backend: NodeBackend) -> None:
        """Stop holders and remove job dirs of this supervisor's jobs that no live job owns.

        A reaping step that fails is logged and recorded in ``self.owner.leaks``; it never keeps the worker from
        serving (the orphan is tried again on the next connection).
        """
        orphans = await backend.find_orphans(self.job_prefix)
        # Any live job of this supervisor is ours: also one re-adopted or retried elsewhere, because on hosts that
        # share a filesystem or process table (the local cluster) this node sees other nodes' holders too. Asked
        # after the listing, so a job started meanwhile is not taken for an orphan.
        live: frozenset[str] = await self.cluster.call(LiveJobs()) if (orphans.holders or orphans.job_dirs) \
            else frozenset()

        def ours(job: str) -> bool:  # another worker's warm directories (a shared filesystem) are its own
            return job in live or is_other_nodes_warm(job, self.node.id)

        steps = [(f"holder:{job}", backend.kill_holder, pid)
                 for job, pids in orphans.holders.items() if not ours(job) for pid in pids]
        steps += [(f"dir:{job}", backend.remove_job_dir, job)
                  for job in orphans.job_dirs if not ours(job)]
        for what, step, arg in steps:
            try:
                await step(arg)
                self.reaped.append(what)
                metrics.current().leaks.labels("orphan", what.split(":", 1)[0]).inc()
            except Exception as error:  # recorded as a leak; retried on the next connection
                log.error("%s: reaping %s failed: %s", self.name, what, error)
                self.owner.leaks.append(Leak(self.name, what, f"reap failed: {error}", time.time()))
        try:
            stale = await backend.reap_stale_locks()
            if stale:
                self.reaped.append(f"{stale} stale chronos lock file(s)")
        except Exception as error:  # cosmetic for Chronos (it never reads them back); logged, retried next time
            log.warning("%s: removing stale chronos lock files failed: %s", self.name, error)
        if self.reaped:
            log.warning("%s: reaped orphans %s", self.name, ", ".join(self.reaped))


__all__ = ["LiveJobs", "NodeUpdate", "WorkerActor", "parse_devices"]

"""ClusterActor: the job table, placement, and the node list kept in sync with the Swarm.

* Nodes: every few seconds the Swarm's node list is read; each node labelled ``cumulus.worker=true`` gets a
  WorkerActor (under the ``workers`` dynamic supervisor), node state changes are forwarded, vanished nodes'
  actors are stopped.
* Jobs: :class:`Submit` validates that some worker could ever run the job, creates its :class:`JobRecord` and
  starts its JobActor (under the ``jobs`` dynamic supervisor, temporary). The same idempotency key returns the
  same job.
* Placement: :class:`~cumulus.actors.job.Place` asks workers in packing order (those already running jobs first)
  for a reservation; the cluster remembers which worker holds each job's reservation, so ``Unplace`` always finds
  it - also after a cancelled ``Place``.
* At start, services labelled with this supervisor's id that no live job owns are removed (orphans of a crash).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import trio

from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.job import Cancel, JobActor, Place, Unplace
from cumulus.actors.worker import CanEverFit, GetInfo, NodeUpdate, Release, Reserve, WorkerActor
from cumulus.backends import Backends, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CapacityExhausted, NotFound, RequestRejected, Unsatisfiable
from cumulus.jobs import JobRecord, JobSpec, JobState, WorkerInfo
from cumulus.resources.swarm import LABEL_JOB, LABEL_SUPERVISOR, NodeInfo
from cumulus.supervisor import DynamicSupervisor

log = logging.getLogger(__name__)

NODE_SYNC_SECONDS = 2.0


@dataclass(frozen=True)
class Submit:
    spec: JobSpec


@dataclass(frozen=True)
class GetJob:
    job_id: str


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class ListJobs:
    include_finished: bool = True


@dataclass(frozen=True)
class ListWorkers:
    pass


@dataclass(frozen=True)
class SyncNodes:
    pass


class ClusterActor(Actor):
    name = "cluster"
    mailbox_size = 4096

    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        swarm: SwarmBackend,
        *,
        workers: DynamicSupervisor,
        jobs: DynamicSupervisor,
        watcher: ActorRef,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.backends = backends
        self.swarm = swarm
        self.workers = workers
        self.jobs_supervisor = jobs
        self.watcher = watcher
        self.job_prefix = f"{settings.supervisor_id}-"
        self.jobs: dict[str, JobRecord] = {}
        self.by_key: dict[str, str] = {}
        self.placements: dict[str, str] = {}  # job id -> worker actor name
        self.worker_refs: dict[str, ActorRef] = {}  # node id -> ref
        self.nodes: dict[str, NodeInfo] = {}
        self.reaped_services: list[str] = []

    async def on_start(self) -> None:
        self._reaped = False
        try:
            await self._sync_nodes()
        except Exception as error:  # no Swarm reachable yet: serve anyway, keep trying in the background
            log.warning("cluster: cannot reach the Swarm manager (%s): %s", self.settings.cluster.docker_host
                        or "no cluster.docker_host set", error)
        self.start_soon(self._sync_forever)

    async def handle(self, message: Any) -> Any:
        match message:
            case Submit(spec):
                return await self._submit(spec)
            case Place(job_id, record):
                return await self._place(job_id, record)
            case Unplace(job_id):
                return await self._unplace(job_id)
            case GetJob(job_id):
                return self._job(job_id)
            case CancelJob(job_id):
                return await self._cancel(job_id)
            case ListJobs(include_finished):
                self._forget_expired()
                return [r for r in self.jobs.values() if include_finished or not r.torn_down.is_set()]
            case ListWorkers():
                return await self._list_workers()
            case SyncNodes():
                return await self._sync_nodes()
        raise TypeError(f"cluster: unknown message {message!r}")

    # ---- jobs -------------------------------------------------------------------------------------------------

    def is_live_job(self, job_id: str) -> bool:
        record = self.jobs.get(job_id)
        return record is not None and not record.torn_down.is_set()

    def _job(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for "
                           f"{self.settings.jobs.result_retention} s)")
        return record

    async def _submit(self, spec: JobSpec) -> JobRecord:
        if spec.idempotency_key and spec.idempotency_key in self.by_key:
            existing = self.jobs.get(self.by_key[spec.idempotency_key])
            if existing is not None:
                return existing
        await self._check_can_ever_fit(spec)
        job_id = self.job_prefix + secrets.token_hex(6)
        record = JobRecord(job_id, spec)
        self.jobs[job_id] = record
        if spec.idempotency_key:
            self.by_key[spec.idempotency_key] = job_id
        await self.jobs_supervisor.start_actor(job_id, lambda: JobActor(
            record, settings=self.settings, swarm=self.swarm, cluster=self.ref, watcher=self.watcher))
        return record

    async def _check_can_ever_fit(self, spec: JobSpec) -> None:
        allow = self.settings.cluster.allow_non_gpu_devices
        for ref in list(self.worker_refs.values()):
            try:
                if await ref.call(CanEverFit(spec, allow)):
                    return
            except ActorDied:
                continue
        what = "devices" if allow else "GPUs"
        if not self.worker_refs:
            raise Unsatisfiable("the cluster has no workers; add one with setup-worker.sh")
        raise Unsatisfiable(f"no worker has enough {what} for gpu={spec.gpu:g}"
                            + ("" if allow else " (non-GPU devices are not used: cluster.allow_non_gpu_devices)"))

    async def _place(self, job_id: str, record: JobRecord) -> Any:
        allow = self.settings.cluster.allow_non_gpu_devices
        busy = {name: 0 for name in (ref.name for ref in self.worker_refs.values())}
        for worker in self.placements.values():
            busy[worker] = busy.get(worker, 0) + 1
        refs = sorted(self.worker_refs.values(), key=lambda r: (-busy.get(r.name, 0), r.name))
        reasons = []
        for ref in refs:
            try:
                allocation = await ref.call(Reserve(job_id, record.spec, allow))
            except (RequestRejected, ActorDied) as error:
                reasons.append(str(error))
                continue
            self.placements[job_id] = ref.name
            return allocation
        raise CapacityExhausted("no capacity free now: " + "; ".join(reasons or ["no workers"]))

    async def _unplace(self, job_id: str) -> None:
        worker = self.placements.pop(job_id, None)
        if worker is None:
            return
        for ref in self.worker_refs.values():
            if ref.name == worker:
                try:
                    await ref.call(Release(job_id))
                except ActorDied:
                    pass  # its accounting died with it

    async def _cancel(self, job_id: str) -> tuple[JobRecord, bool]:
        record = self._job(job_id)
        if record.torn_down.is_set():
            return record, False
        ref = self.jobs_supervisor.whereis(job_id)
        if ref is not None:
            try:
                await ref.call(Cancel())
            except ActorDied:
                pass
        return record, True

    def _forget_expired(self) -> None:
        horizon = time.time() - self.settings.jobs.result_retention
        for job_id in [j for j, r in self.jobs.items() if r.torn_down.is_set() and (r.finished_at or 0) < horizon]:
            record = self.jobs.pop(job_id)
            if record.spec.idempotency_key:
                self.by_key.pop(record.spec.idempotency_key, None)

    # ---- workers ----------------------------------------------------------------------------------------------

    async def _list_workers(self) -> list[WorkerInfo]:
        infos = []
        for ref in list(self.worker_refs.values()):
            try:
                infos.append(await ref.call(GetInfo()))
            except ActorDied:
                continue
        return sorted(infos, key=lambda w: w.hostname)

    async def _sync_forever(self) -> None:
        while True:
            await trio.sleep(NODE_SYNC_SECONDS)
            try:
                await self._sync_nodes()
            except Exception as error:  # the manager is unreachable for a moment; keep the last known nodes
                log.warning("cluster: node sync failed: %s", error)

    async def _sync_nodes(self) -> None:
        if not self._reaped:
            await self._reap_orphan_services()
            self._reaped = True
        nodes = {n.id: n for n in await self.swarm.list_nodes() if n.labels.get("cumulus.worker") == "true"}
        for node_id in list(self.worker_refs):
            if node_id not in nodes:
                log.warning("cluster: node %s left the Swarm", self.nodes[node_id].hostname)
                self.worker_refs.pop(node_id)
                self.nodes.pop(node_id)
                await self.workers.terminate_child(node_id)
        for node_id, node in nodes.items():
            ref = self.worker_refs.get(node_id)
            if ref is None or not ref.alive:
                self.worker_refs[node_id] = await self.workers.start_actor(
                    node_id,
                    lambda node=node: WorkerActor(node, self.settings, self.backends,
                                                  is_live_job=self.is_live_job, job_prefix=self.job_prefix),
                )
            elif self.nodes.get(node_id) != node:
                await ref.cast(NodeUpdate(node))
            self.nodes[node_id] = node

    async def _reap_orphan_services(self) -> None:
        services = await self.swarm.list_services({LABEL_SUPERVISOR: self.settings.supervisor_id})
        for service in services:
            job_id = service.labels.get(LABEL_JOB, "")
            if not self.is_live_job(job_id):
                await self.swarm.remove_service(service.id)
                self.reaped_services.append(service.id)
        if self.reaped_services:
            log.warning("cluster: removed %d orphan services", len(self.reaped_services))


__all__ = ["CancelJob", "ClusterActor", "GetJob", "ListJobs", "ListWorkers", "Submit", "SyncNodes", "JobState"]

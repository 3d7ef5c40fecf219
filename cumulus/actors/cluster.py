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

import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.job import Cancel, Enqueue, JobActor, Place, Placed, Unplace
from cumulus.actors.worker import (GetInfo, NodeUpdate, Release, Reserve, WorkerActor, WorkerUnavailable,
                                   parse_devices)
from cumulus.backends import Backends, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CapacityExhausted, NotFound, RequestRejected, Unsatisfiable
from cumulus.jobs import JobRecord, JobSpec, JobState, TeardownReport, WorkerInfo
from cumulus.journal import AddEvent, FindKey, Load, LoadEvents, Save, Unfinished, record_of, row_of
from cumulus.resources.swarm import LABEL_JOB, LABEL_SUPERVISOR, NodeInfo
from cumulus.supervisor import DynamicSupervisor

log = logging.getLogger(__name__)

NODE_SYNC_SECONDS = 2.0
QUEUE_POLL_SECONDS = 0.25  # waiting jobs are also retried this often (workers coming up, nodes returning)
#: States in which a job's container has not been created yet: a restart may start such a job afresh.
NOT_STARTED = frozenset({JobState.QUEUED, JobState.SCHEDULING, JobState.CREATING_PARTITION})


@dataclass(frozen=True)
class Submit:
    spec: JobSpec


@dataclass(frozen=True)
class GetJob:
    job_id: str


@dataclass(frozen=True)
class DescribeJob:
    """The job's record and its history from the journal (``(JobRecord, list[HistoryEvent])``)."""

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


@dataclass(frozen=True)
class DrainQueue:
    pass


@dataclass(eq=False)
class QueueTicket:
    """A job waiting for capacity. The cluster sets ``allocation`` and then ``ready`` when it placed the job."""

    job_id: str
    record: JobRecord
    priority: int
    seq: int
    ready: trio.Event = field(default_factory=trio.Event)
    allocation: Any = None
    position: int = 0


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
        journal: ActorRef,
    ) -> None:
        super().__init__()
        self.journal = journal
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
        self._restart_later: list[JobRecord] = []
        self._adopt_later: list[JobRecord] = []
        # Re-adoptions not yet reserved at their worker (job id -> node id): no new job is placed on such a
        # worker until they are, so that the shares the running jobs hold are theirs again first.
        self._adopting: dict[str, str] = {}
        self._full: set[str] = set()  # workers whose last answer was "no capacity"
        self._drained: set[str] = set()  # jobs placed from the queue that have not acknowledged it yet
        self.queue: list[QueueTicket] = []  # kept sorted: higher priority first, then arrival order
        self._queue_seq = itertools.count()

    async def on_start(self) -> None:
        await self._recover()
        self._reaped = False
        try:
            await self._sync_nodes()
        except Exception as error:  # no Swarm reachable yet: serve anyway, keep trying in the background
            log.warning("cluster: cannot reach the Swarm manager (%s): %s", self.settings.cluster.docker_host
                        or "no cluster.docker_host set", error)
        self.start_soon(self._sync_forever)
        for record in self._adopt_later:
            assert record.placement is not None
            self._adopting[record.job_id] = record.placement.node_id
            await self._start_job(record, adopt=True)
        for record in self._restart_later:
            await self._start_job(record)
        self._restart_later.clear()
        self._adopt_later.clear()

    async def handle(self, message: Any) -> Any:
        match message:
            case Submit(spec):
                return await self._submit(spec)
            case Place(job_id, record, adopt):
                if adopt:
                    return self._worker_of(record)
                return self._candidates_or_ticket(job_id, record)
            case Enqueue(job_id, record):
                return self._enqueue(job_id, record, "no worker has room now")
            case Placed(job_id, worker):
                self.placements[job_id] = worker
                self._drained.discard(job_id)  # the job knows where it holds its share and releases it there
                if self._adopting.pop(job_id, None) is not None:
                    self._wake_queue()
                return None
            case Unplace(job_id):
                return await self._unplace(job_id)
            case GetJob(job_id):
                return await self._job(job_id)
            case DescribeJob(job_id):
                record = await self._job(job_id)
                return record, await self.journal.call(LoadEvents(job_id))
            case CancelJob(job_id):
                return await self._cancel(job_id)
            case ListJobs(include_finished):
                self._forget_expired()
                return [r for r in self.jobs.values() if include_finished or not r.torn_down.is_set()]
            case ListWorkers():
                return await self._list_workers()
            case SyncNodes():
                try:
                    await self._sync_nodes()
                except Exception as error:  # the manager is unreachable for a moment: keep the known nodes
                    log.warning("cluster: node sync failed: %s", error)
                return await self._drain_queue()
            case DrainQueue():
                return await self._drain_queue()
        raise TypeError(f"cluster: unknown message {message!r}")

    # ---- jobs -------------------------------------------------------------------------------------------------

    def is_live_job(self, job_id: str) -> bool:
        record = self.jobs.get(job_id)
        return record is not None and not record.torn_down.is_set()

    async def _job(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            row = await self.journal.call(Load(job_id))
            if row is not None:
                record = self.jobs[job_id] = record_of(row)
        if record is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for "
                           f"{self.settings.jobs.result_retention} s)")
        return record

    async def _submit(self, spec: JobSpec) -> JobRecord:
        if spec.idempotency_key:
            existing = await self._find_key(spec.idempotency_key)
            if existing is not None:
                return existing
        self._check_can_ever_fit(spec)
        if len(self.queue) >= self.settings.jobs.max_queue:  # strict order: it would have to wait behind them
            raise CapacityExhausted(f"the queue is full ({len(self.queue)} jobs waiting for capacity; "
                                    "jobs.max_queue): try again later")
        job_id = self.job_prefix + secrets.token_hex(6)
        record = JobRecord(job_id, spec)
        self.jobs[job_id] = record
        if spec.idempotency_key:
            self.by_key[spec.idempotency_key] = job_id
        self.journal.cast_nowait(Save(row_of(record, with_package=True)))
        record.on_history = self._journal_event
        record.announce()  # QUEUED, before anything else happens to it
        record.on_change = self._persist
        await self._start_job(record)
        return record

    async def _start_job(self, record: JobRecord, *, adopt: bool = False) -> None:
        await self.jobs_supervisor.start_actor(record.job_id, lambda: JobActor(
            record, settings=self.settings, swarm=self.swarm, cluster=self.ref, watcher=self.watcher,
            adopt=adopt))

    async def _find_key(self, key: str) -> JobRecord | None:
        job_id = self.by_key.get(key)
        if job_id is not None and job_id in self.jobs:
            return self.jobs[job_id]
        row = await self.journal.call(FindKey(key))
        if row is None:
            return None
        record = self.jobs[row["job_id"]] = record_of(row)
        self.by_key[key] = record.job_id
        return record

    def _adoptable(self, record: JobRecord) -> bool:
        """A job whose partition may still be held (leases on) and whose service and placement are known (its
        service was created: RUNNING, or about to be)."""
        return bool(self.settings.lease.ttl and record.state in (JobState.CREATING_PARTITION, JobState.RUNNING)
                    and record.service_id and record.partition_id and record.placement)

    async def _remove_services_of(self, job_id: str) -> int | None:
        """Remove the job's labelled services; how many there were (``None``: the manager could not be asked)."""
        try:
            services = await self.swarm.list_services({LABEL_JOB: job_id})
            for service in services:
                await self.swarm.remove_service(service.id)
            return len(services)
        except Exception as error:  # the manager is unreachable: the orphan is reaped at the next start
            log.warning("cluster: could not remove the services of lost job %s: %s", job_id, error)
            return None

    def _persist(self, record: JobRecord) -> None:
        try:
            self.journal.cast_nowait(Save(row_of(record, with_package=False)))
        except (ActorDied, trio.WouldBlock) as error:
            log.error("cluster: could not journal job %s: %s", record.job_id, error)

    def _journal_event(self, event: Any) -> None:
        try:
            self.journal.cast_nowait(AddEvent(event))
        except (ActorDied, trio.WouldBlock) as error:
            log.error("cluster: could not journal an event of job %s: %s", event.job_id, error)

    async def _recover(self) -> None:
        """Jobs the journal has as unfinished were running under a previous supervisor process.

        Their partitions died with that process's SSH sessions; their services, holders and job dirs are
        orphans, reaped by this start-up (cluster: services; workers: holders and dirs). They end FAILED with
        the reason, or - if their retry policy allows another attempt - run again.
        """
        for row in await self.journal.call(Unfinished()):
            record = record_of(row)
            self.jobs[record.job_id] = record
            record.on_change = self._persist
            record.on_history = self._journal_event
            if record.spec.idempotency_key:
                self.by_key[record.spec.idempotency_key] = record.job_id
            if record.state.terminal:  # ended, but its teardown was never recorded
                record.set_torn_down(TeardownReport(released=("orphans reaped at restart",)))
                continue
            lost_in = record.state.value
            if self._adoptable(record):
                self._adopt_later.append(record)
                continue
            services = await self._remove_services_of(record.job_id)  # what the lost attempt left in the Swarm
            if services == 0 and not record.service_id and record.state in NOT_STARTED:
                # Its container was never created, so it never ran: starting it now runs it once, not twice.
                # (What the interrupted attempt made on a worker - a partition holder - is replaced then.)
                record.attempt += 1
                record.add_message(f"supervisor restarted while {lost_in}, before the job's container was "
                                   f"created: starting it (attempt {record.attempt})")
                self._restart_later.append(record)
                continue
            if record.attempt <= record.spec.retries:
                record.attempt += 1
                record.add_message(f"supervisor restarted while {lost_in}: attempt {record.attempt}")
                self._restart_later.append(record)
                continue
            record.set_state(JobState.FAILED, f"lost: the supervisor restarted while the job was {lost_in}")
            record.set_torn_down(TeardownReport(released=("orphans reaped at restart",)))
        if self.jobs:
            log.warning("cluster: recovered %d unfinished jobs from the journal", len(self.jobs))

    def _check_can_ever_fit(self, spec: JobSpec) -> None:
        """Refuse a request no worker could ever run, from the node inventories (no actor round trips)."""
        allow = self.settings.cluster.allow_non_gpu_devices
        needed = max(1, spec.whole_devices)
        for node_id in self.worker_refs:
            devices = parse_devices(self.nodes[node_id].labels)
            if sum(1 for d in devices if d.is_gpu or allow) >= needed:
                return
        what = "devices" if allow else "GPUs"
        if not self.worker_refs:
            raise Unsatisfiable("the cluster has no workers; add one with setup-worker.sh")
        raise Unsatisfiable(f"no worker has enough {what} for gpu={spec.gpu:g}"
                            + ("" if allow else " (non-GPU devices are not used: cluster.allow_non_gpu_devices)"))

    def _candidates_or_ticket(self, job_id: str, record: JobRecord) -> Any:
        """Workers to ask, in packing order (the job asks them itself, so this mailbox never waits on a
        worker's), or a QueueTicket when jobs are already waiting (nobody overtakes them)."""
        if self.queue:
            return self._enqueue(job_id, record, "jobs are waiting")
        return self._packing_order()

    def _packing_order(self) -> list[ActorRef]:
        busy: dict[str, int] = {}
        for worker in self.placements.values():
            busy[worker] = busy.get(worker, 0) + 1
        # Busiest first (packing); workers that recently said "full" last; none still re-adopting its jobs.
        adopting = set(self._adopting.values())
        return sorted((ref for node_id, ref in self.worker_refs.items() if ref.alive and node_id not in adopting),
                      key=lambda r: (r.name in self._full, -busy.get(r.name, 0), r.name))

    def _enqueue(self, job_id: str, record: JobRecord, reason: str) -> QueueTicket:
        """Queue the job (CapacityExhausted when the queue is full); the queue is drained in order."""
        if len(self.queue) >= self.settings.jobs.max_queue:
            raise CapacityExhausted(f"{reason}, and the queue is full ({self.settings.jobs.max_queue} jobs "
                                    "waiting; jobs.max_queue)")
        ticket = QueueTicket(job_id, record, record.spec.priority, next(self._queue_seq))
        self.queue.append(ticket)
        self.queue.sort(key=lambda t: (-t.priority, t.seq))
        self._number_queue()
        return ticket

    def _worker_of(self, record: JobRecord) -> list[ActorRef]:
        """The worker a re-adopted job runs on; WorkerUnavailable until it is known."""
        placement = record.placement
        ref = self.worker_refs.get(placement.node_id) if placement else None
        if ref is None or not ref.alive:
            raise WorkerUnavailable(f"worker {placement.worker if placement else '?'} is not known (yet)")
        return [ref]

    async def _try_place(self, job_id: str, record: JobRecord) -> Any:
        allow = self.settings.cluster.allow_non_gpu_devices
        refs = self._packing_order()
        reasons = []
        for ref in refs:
            try:
                allocation = await ref.call(Reserve(job_id, record.spec, allow))
            except (RequestRejected, ActorDied) as error:
                if isinstance(error, CapacityExhausted):
                    self._full.add(ref.name)
                reasons.append(str(error))
                continue
            self.placements[job_id] = ref.name
            return allocation
        raise CapacityExhausted("no capacity free now: " + "; ".join(reasons or ["no workers"]))

    async def _drain_queue(self) -> None:
        """Place waiting jobs in order (priority, then arrival) until the head does not fit."""
        while self.queue:
            head = self.queue[0]
            try:
                head.allocation = await self._try_place(head.job_id, head.record)
                self._drained.add(head.job_id)
            except CapacityExhausted:
                break
            self.queue.pop(0)
            head.record.set_queue_position(0)
            head.ready.set()
        self._number_queue()

    def _number_queue(self) -> None:
        for position, ticket in enumerate(self.queue, start=1):
            ticket.position = position
            ticket.record.set_queue_position(position)

    async def _unplace(self, job_id: str) -> None:
        if self._adopting.pop(job_id, None) is not None:  # the re-adoption gave up
            self._wake_queue()
        for ticket in self.queue:
            if ticket.job_id == job_id:
                self.queue.remove(ticket)
                ticket.record.set_queue_position(0)
                self._number_queue()
                break
        worker = self.placements.pop(job_id, None)
        if worker is None:
            return
        if job_id in self._drained:
            # Placed for the job from the queue while the job stopped waiting: it never saw the allocation, so
            # the release is ours. (Otherwise the job released at its worker itself, before telling us.)
            self._drained.discard(job_id)
            for ref in self.worker_refs.values():
                if ref.name == worker:
                    try:
                        await ref.cast(Release(job_id))
                    except ActorDied:
                        pass  # its accounting died with it
        self._full.discard(worker)
        self._wake_queue()

    def _wake_queue(self) -> None:
        if self.queue and self.ref is not None:
            try:
                self.ref.cast_nowait(DrainQueue())
            except trio.WouldBlock:
                pass  # the periodic sync drains it too

    async def _cancel(self, job_id: str) -> tuple[JobRecord, bool]:
        record = await self._job(job_id)
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
        """Ask ourselves to sync nodes (and drain the queue) periodically; the work runs in the mailbox order."""
        ticks = 0
        while True:
            await trio.sleep(QUEUE_POLL_SECONDS)
            ticks += 1
            if ticks * QUEUE_POLL_SECONDS >= NODE_SYNC_SECONDS:
                ticks = 0
                await self.ref.cast(SyncNodes())
            elif self.queue:
                await self.ref.cast(DrainQueue())

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


__all__ = ["CancelJob", "ClusterActor", "DescribeJob", "GetJob", "ListJobs", "ListWorkers", "Submit", "SyncNodes", "JobState"]

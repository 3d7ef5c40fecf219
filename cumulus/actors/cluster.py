"""ClusterActor: the job table, the node list kept in sync with the Swarm, and recovery after a restart.

* Nodes: every few seconds the Swarm's node list is read; each node labelled ``cumulus.worker=true`` gets a
  WorkerActor (under the ``workers`` dynamic supervisor), node changes are forwarded to it, vanished nodes' actors
  are stopped, and the Scheduler gets the inventory (:class:`~cumulus.actors.scheduler.NodesChanged`). Workers are
  drained, activated and removed here too (:mod:`cumulus.actors.drain`: their state is on the nodes' labels).
* Jobs: :class:`Submit` asks the Scheduler whether the job could ever run and may queue
  (:class:`~cumulus.actors.scheduler.Admit`), then starts its JobActor (under the ``jobs`` dynamic supervisor,
  temporary), which creates and alone writes the job's record; the cluster keeps a reference for readers.
* Users: every job message carries its :class:`~cumulus.identity.Caller`. A job belongs to the user who submitted
  it (``JobSpec.owner``, journaled with it): another user's job answers :class:`~cumulus.errors.NotFound` with
  the very message of an unknown id (its existence is not leaked), admins see every job, and a list holds the
  caller's jobs only. An idempotency key is the user's own: (owner, key) names one job; the same request again
  returns it, another request with that key is refused (:mod:`cumulus.idempotency`). Each submission is held to
  the caller's limits (:mod:`cumulus.quotas`: rate, running, queued, GPU share), counted from this job table.
* Recovery: at start, the journal's unfinished jobs are each given a JobActor that re-adopts, restarts, or ends
  them (the cluster decides which, :class:`~cumulus.actors.job.Start`), and services labelled with this
  supervisor's id that no live job owns are removed (orphans of a crash), then such jobs' secret env (Swarm secrets).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import trio

from cumulus import metrics
from cumulus.actors.attempt import STOP_WAIT_SECONDS
from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.call_routing import CallRouter
from cumulus.actors.cluster_messages import (CancelJob, DescribeJob, GetJob, ListJobs, PauseJob, ResumeJob, Submit,
                                             SyncNodes)
from cumulus.actors.drain import DrainMessage, Drains, node_inventory
from cumulus.actors.job import Cancel, JobActor, Pause, Resume, Start
from cumulus.actors.scheduler import Admit, ExpectAdoptions, NodesChanged
from cumulus.actors.worker import LiveJobs, NodeUpdate, WorkerActor, WorkerImages
from cumulus.backends import Backends, NodeConnections, SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError, NotFound, WrongJobState
from cumulus.identity import LOCAL_ADMIN, Caller
from cumulus.idempotency import RequestFingerprint, check_same_request
from cumulus.jobs import JobRecord, JobSpec, JobState
from cumulus.logs import job_log_fields
from cumulus.journal import SECRETS_UNREADABLE, FindKey, Load, LoadEvents, Unfinished, record_of
from cumulus.quotas import SubmissionRates, Usage, check_limits
from cumulus.resources.checkpoint_store import CheckpointStore
from cumulus.resources.swarm import LABEL_JOB, LABEL_SUPERVISOR, NodeInfo
from cumulus.supervisor import DynamicSupervisor
from cumulus.tracing import new_trace_id

log = logging.getLogger(__name__)

NODE_SYNC_SECONDS = 2.0
#: A stopped job releases at most this many resources in turn, each bounded by jobs.release_timeout: its actor's
#: shutdown bound (after which it is reported overdue).
JOB_SHUTDOWN_RELEASES = 9
#: States in which a job's container has not been created yet: a restart may start such a job afresh.
NOT_STARTED = frozenset({JobState.QUEUED, JobState.SCHEDULING, JobState.CREATING_PARTITION})


class ClusterActor(Actor):
    name = "cluster"
    mailbox_size = 4096

    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        swarm: SwarmBackend,
        *,
        connections: NodeConnections,
        workers: DynamicSupervisor,
        jobs: DynamicSupervisor,
        scheduler: ActorRef,
        watcher: ActorRef,
        journal: ActorRef,
        images: WorkerImages | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.backends = backends
        self.swarm = swarm
        self.connections = connections
        self.workers = workers
        self.jobs_supervisor = jobs
        self.scheduler = scheduler
        self.watcher = watcher
        self.journal = journal
        self.images = images  # the worker image gate, handed to every WorkerActor
        self.checkpoints = checkpoints  # the jobs' checkpoint store, handed to every JobActor
        self.job_prefix = f"{settings.supervisor_id}-"
        self.jobs: dict[str, JobRecord] = {}  # read here, written by each job's actor
        self.by_key: dict[tuple[str, str], str] = {}  # (owner, idempotency key) -> job id
        self.fingerprints: dict[str, RequestFingerprint] = {}  # of the jobs with an idempotency key
        self.maybe_live: dict[str, dict[str, JobRecord]] = {}  # owner -> their jobs not yet seen ended
        self.rates = SubmissionRates()
        self.worker_refs: dict[str, ActorRef] = {}  # node id -> ref
        self.nodes: dict[str, NodeInfo] = {}
        self.reaped_services: list[str] = []
        self._reaped = False
        self._recovered: list[tuple[JobRecord, Start, str]] = []
        self.drains = Drains(self)  # worker drain / activate / remove (cumulus.actors.drain)

    async def on_start(self) -> None:
        await self._recover()
        try:
            await self._sync_nodes()
        except Exception as error:  # no Swarm reachable yet: serve anyway, keep trying in the background
            log.warning("cluster: cannot reach the Swarm manager (%s): %s", self.settings.cluster.docker_host
                        or "no cluster.docker_host set", error)
        self.start_soon(self._sync_forever)
        adopting = tuple((r.job_id, r.placement.node_id) for r, start, _ in self._recovered
                         if start is Start.ADOPT and r.placement is not None)
        if adopting:  # before any job starts: no new job goes to their nodes until they hold their shares again
            await self.scheduler.cast(ExpectAdoptions(adopting))
        for record, start, note in self._recovered:
            await self._start_job(record, start, note)
        self._recovered.clear()

    async def handle(self, message: Any) -> Any:
        match message:
            case Submit(spec, caller):
                return await self._submit(spec, caller)
            case GetJob(job_id, caller):
                return await self._job(job_id, caller)
            case DescribeJob(job_id, caller):
                record = await self._job(job_id, caller)
                return record, await self.journal.call(LoadEvents(job_id))
            case CancelJob(job_id, caller):
                return await self._cancel(job_id, caller)
            case PauseJob(job_id, grace, caller):
                record = await self._job(job_id, caller)
                return record, await self._tell_job(record, Pause(grace))
            case ResumeJob(job_id, caller):
                record = await self._job(job_id, caller)
                await self._tell_job(record, Resume())
                return record
            case ListJobs(include_finished, caller):
                self._forget_expired()
                return [r for r in self.jobs.values() if (include_finished or not r.torn_down.is_set())
                        and caller.may_see(r.spec.owner)]
            case LiveJobs():
                return frozenset(job_id for job_id, r in self.jobs.items() if not r.torn_down.is_set())
            case DrainMessage():
                return await self.drains.handle(message)
            case SyncNodes():
                try:
                    await self._sync_nodes()
                except Exception as error:  # the manager is unreachable for a moment: keep the known nodes
                    log.warning("cluster: node sync failed: %s", error)
                return None
        raise TypeError(f"cluster: unknown message {message!r}")

    # ---- jobs -------------------------------------------------------------------------------------------------

    def is_live_job(self, job_id: str) -> bool:
        record = self.jobs.get(job_id)
        return record is not None and not record.torn_down.is_set()

    async def _job(self, job_id: str, caller: Caller) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            row = await self.journal.call(Load(job_id))
            if row is not None:
                record = self.jobs[job_id] = record_of(row)
        if record is None or not caller.may_see(record.spec.owner):  # the same answer: existence is not leaked
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for "
                           f"{self.settings.jobs.result_retention} s)")
        return record

    async def _tell_job(self, record: JobRecord, message: Pause | Resume) -> Any:
        """The answer of the job's actor; WrongJobState when the job has ended or its actor stopped meanwhile."""
        try:
            return await (await self._live_job(record)).call(message)
        except ActorDied:
            raise WrongJobState(f"job {record.job_id} is {record.state.value}: its actor stopped meanwhile "
                                "(ask again)") from None

    async def _live_job(self, record: JobRecord) -> ActorRef:
        """The actor of a job that has not ended (a PAUSED job whose actor stopped gets a new one); WrongJobState
        for one that has."""
        ref = self.jobs_supervisor.whereis(record.job_id)
        if (ref is None or not ref.alive) and record.state is JobState.PAUSED and not record.torn_down.is_set():
            ref = await self._start_job(record, Start.PAUSED)
        if ref is None or record.state.terminal:
            raise WrongJobState(f"job {record.job_id} has ended ({record.state.value}): only a job that has not "
                                "ended can be paused or resumed")
        return ref

    async def _submit(self, spec: JobSpec, caller: Caller) -> JobRecord:
        owner = caller.name
        if (spec.owner, spec.limits) != (owner, caller.limits) or not spec.trace_id:  # every job gets a trace id
            spec = replace(spec, owner=owner, limits=caller.limits, trace_id=spec.trace_id or new_trace_id())
        self.rates.take(owner, caller.limits.rate, trio.current_time())  # every submission counts, repeats too
        fingerprint = None
        if spec.idempotency_key:
            fingerprint = await trio.to_thread.run_sync(RequestFingerprint.of, spec)  # hashes the package
            existing = await self._find_key(owner, spec.idempotency_key)
            if existing is not None:
                check_same_request(spec.idempotency_key, existing.job_id, self.fingerprints[existing.job_id],
                                   fingerprint)
                return existing
        check_limits(caller.limits, self._usage(owner), spec.gpu)
        await self.scheduler.call(Admit(spec))  # Unsatisfiable, or CapacityExhausted when the queue is full
        record = JobRecord(self.job_prefix + secrets.token_hex(6), spec)
        self.jobs[record.job_id] = record
        self._track(record, fingerprint)
        await self._start_job(record, Start.NEW)
        metrics.current().jobs_submitted.labels(owner).inc()
        return record

    def _track(self, record: JobRecord, fingerprint: RequestFingerprint | None) -> None:
        """Count a job (new or recovered) against its owner's limits, and index its idempotency key."""
        spec = record.spec
        if not record.state.terminal:
            self.maybe_live.setdefault(spec.owner, {})[record.job_id] = record
        if spec.idempotency_key and fingerprint is not None:
            self.by_key[spec.owner, spec.idempotency_key] = record.job_id
            self.fingerprints[record.job_id] = fingerprint

    def _usage(self, owner: str) -> Usage:
        """What the owner's live jobs hold now (the ones seen ended are dropped from the index)."""
        jobs = self.maybe_live.get(owner, {})
        for job_id in [j for j, r in jobs.items() if r.state.terminal]:
            del jobs[job_id]
        if not jobs:
            self.maybe_live.pop(owner, None)
        return Usage.of((r.state, r.queue_position, r.spec.gpu) for r in jobs.values())

    async def _start_job(self, record: JobRecord, start: Start, note: str = "") -> ActorRef:
        assert self.ref is not None  # the actor runs
        router = CallRouter(self.ref, self.jobs_supervisor)  # where the job's calls on instances go
        return await self.jobs_supervisor.start_actor(record.job_id, lambda: JobActor(
            record, settings=self.settings, swarm=self.swarm, connections=self.connections,
            scheduler=self.scheduler, watcher=self.watcher, journal=self.journal, checkpoints=self.checkpoints,
            start=start, note=note, workers=self.worker_refs.get, router=router),
            shutdown=JOB_SHUTDOWN_RELEASES * self.settings.jobs.release_timeout + STOP_WAIT_SECONDS)

    async def _find_key(self, owner: str, key: str) -> JobRecord | None:
        """The owner's job of idempotency key ``key`` (its fingerprint known), from memory or the journal."""
        job_id = self.by_key.get((owner, key))
        if job_id is not None and job_id in self.jobs and job_id in self.fingerprints:
            return self.jobs[job_id]
        row = await self.journal.call(FindKey(key, owner))
        if row is None:
            return None
        stored = record_of(row)
        record = self.jobs.setdefault(stored.job_id, stored)
        self._track(record, await self._fingerprint_of(row, stored))
        return record

    @staticmethod
    async def _fingerprint_of(row: Any, record: JobRecord) -> RequestFingerprint:
        """The fingerprint of a journaled job's request: its spec with the package as journaled (an ended job's
        record no longer holds it)."""
        return await trio.to_thread.run_sync(RequestFingerprint.of, replace(record.spec, package=row["package"]))

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
            log.warning("cluster: could not remove the services of lost job %s: %s", job_id, error,
                        extra=job_log_fields(self.jobs.get(job_id), job_id=job_id))  # not the job's own task
            return None

    async def _recover(self) -> None:
        """Decide what becomes of each job the journal has as unfinished (it ran under a previous supervisor
        process); its JobActor, started once the node list is known, carries it out and writes its record.

        A job still running on its worker (leases on) is re-adopted. Otherwise what its lost attempt left in
        the Swarm is removed here (holders and job dirs are reaped by the workers), and the job runs again if
        its container was never created (so it runs once, not twice) or its retry policy allows another
        attempt; else it ends FAILED (lost).
        """
        for row in await self.journal.call(Unfinished()):
            record = record_of(row)
            self.jobs[record.job_id] = record
            self._track(record, await self._fingerprint_of(row, record) if record.spec.idempotency_key else None)
            lost_in = record.state.value
            if record.state.terminal:  # ended, but its teardown was never recorded (the orphan reaping that
                decision = Start.CLOSE, ""  # follows removes its service: its restored record is not live)
            elif record.state is JobState.PAUSED:  # it held nothing when it was paused: it waits to be resumed
                decision = Start.PAUSED, ""
            elif self._adoptable(record):
                decision = Start.ADOPT, ""
            else:
                services = await self._remove_services_of(record.job_id)  # what the lost attempt left in the Swarm
                if row.get(SECRETS_UNREADABLE):
                    decision = Start.LOST, ("its secret env values cannot be opened: the journal's key "
                                            "(security.secret_key_file) changed since it was submitted")
                elif services == 0 and not record.service_id and record.state in NOT_STARTED:
                    # Never ran. (What the interrupted attempt made on a worker - a partition holder - is
                    # replaced when it starts.)
                    decision = Start.RESTART, (f"supervisor restarted while {lost_in}, before the job's container "
                                               "was created")
                elif record.attempt <= record.spec.retries:
                    decision = Start.RESTART, f"supervisor restarted while {lost_in}"
                else:
                    decision = Start.LOST, f"the supervisor restarted while the job was {lost_in}"
            self._recovered.append((record, *decision))
        if self._recovered:
            log.warning("cluster: recovered %d unfinished jobs from the journal", len(self._recovered))

    async def _cancel(self, job_id: str, caller: Caller) -> tuple[JobRecord, bool]:
        record = await self._job(job_id, caller)
        if record.torn_down.is_set():
            return record, False
        ref = self.jobs_supervisor.whereis(job_id)
        if ref is None and record.state is JobState.PAUSED:  # its actor stopped while it was paused: a new one
            ref = await self._live_job(record)
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
            self.fingerprints.pop(job_id, None)
            self.maybe_live.get(record.spec.owner, {}).pop(job_id, None)
            if record.spec.idempotency_key:
                self.by_key.pop((record.spec.owner, record.spec.idempotency_key), None)

    # ---- nodes ------------------------------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        """Ask ourselves to sync nodes periodically; the work runs in the mailbox order."""
        while True:
            await trio.sleep(NODE_SYNC_SECONDS)
            await self.ref.cast(SyncNodes())

    async def _sync_nodes(self) -> None:
        if not self._reaped:
            await self._reap_orphan_services()
            self._reaped = True
        nodes = {n.id: n for n in await self.swarm.list_nodes() if n.labels.get("cumulus.worker") == "true"}
        if nodes != self.nodes:  # the Scheduler first: a worker that connects at once finds its node known
            await self.scheduler.cast(NodesChanged(tuple(node_inventory(node) for node in nodes.values())))
        for node_id in list(self.worker_refs):
            if node_id not in nodes:
                log.warning("cluster: node %s left the Swarm", self.nodes[node_id].hostname)
                self.worker_refs.pop(node_id)
                await self.workers.terminate_child(node_id)
        for node_id, node in nodes.items():
            ref = self.worker_refs.get(node_id)
            if ref is None or not ref.alive:
                self.worker_refs[node_id] = await self.workers.start_actor(node_id, lambda node=node: WorkerActor(
                    node, self.settings, self.backends, connections=self.connections, scheduler=self.scheduler,
                    cluster=self.ref, job_prefix=self.job_prefix, images=self.images, swarm=self.swarm,
                    watcher=self.watcher))
            elif self.nodes.get(node_id) != node:
                await ref.cast(NodeUpdate(node))
        self.nodes = nodes
        self.drains.synced()

    async def _reap_orphan_services(self) -> None:
        services = await self.swarm.list_services({LABEL_SUPERVISOR: self.settings.supervisor_id})
        # A warm service a job took keeps its warm id as its label: the job's record knows it by its id.
        taken = {r.service_id for r in self.jobs.values() if r.service_id and not r.torn_down.is_set()}
        for service in services:
            job_id = service.labels.get(LABEL_JOB, "")
            if not self.is_live_job(job_id) and service.id not in taken:
                await self.swarm.remove_service(service.id)
                self.reaped_services.append(service.id)
        if self.reaped_services:
            log.warning("cluster: removed %d orphan services", len(self.reaped_services))
        # Jobs' secret env (Swarm secrets), after the services that referenced them: Swarm refuses to remove a
        # secret in use. One that still cannot be removed is left for the next start; node sync goes on.
        reaped = 0
        for secret in await self.swarm.list_secrets({LABEL_SUPERVISOR: self.settings.supervisor_id}):
            if not self.is_live_job(secret.labels.get(LABEL_JOB, "")):
                try:
                    reaped += await self.swarm.remove_secret(secret.id)
                except CumulusError as error:
                    log.warning("cluster: orphan secret %s not removed: %s", secret.name, error)
        if reaped:
            log.warning("cluster: removed %d orphan secrets (secret env of jobs no longer live)", reaped)


__all__ = ["CancelJob", "ClusterActor", "DescribeJob", "GetJob", "ListJobs", "PauseJob", "ResumeJob", "Submit",
           "SyncNodes"]

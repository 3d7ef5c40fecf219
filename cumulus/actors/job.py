"""JobActor: one per job. Runs the job's life and owns, nested, everything the job holds outside the process:

    reservation (share on a device)  >  partition lease (holder on the worker)  >  job files  >  Swarm service

acquired in that order and released in reverse, so the reservation and the partition are given back only after
the service is gone, i.e. after the container's exit was observed. Each release is shielded and bounded, so
**killing a JobActor at any point of its life - cancel request, cancelled task, crash - releases its partition
and removes its service**; a release that fails is recorded in the teardown report, never hidden.

States: SCHEDULING -> CREATING_PARTITION -> RUNNING -> COMPLETED | FAILED | CANCELLED. The terminal state is
written once. A job that ended by itself (returned or raised) is COMPLETED/FAILED as soon as its exit and result
are known; a job that is stopped (cancel, timeout, lost partition, infrastructure failure) gets its terminal state
only after teardown, so it is never reported ended while its container still runs. The teardown outcome is
recorded separately (``record.teardown``) and then every event stream of the job ends.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import trio

from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.ownership import ResourceOwner
from cumulus.actors.watcher import Unwatch, Watch
from cumulus.backends import SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError
from cumulus.jobs import JobRecord, JobState, Placement, TeardownReport
from cumulus.resources.swarm import ServiceRequest, TaskState

log = logging.getLogger(__name__)

END_OF_JOB_MARKER = "[cumulus] job finished"
LOG_DRAIN_SECONDS = 2.0
MAX_RESULT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"


@dataclass(frozen=True)
class Place:
    """To the cluster actor: reserve a share for ``job_id`` somewhere (an :class:`Allocation` comes back)."""

    job_id: str
    record: JobRecord


@dataclass(frozen=True)
class Unplace:
    job_id: str


class JobStopped(Exception):
    """Raised inside the job's life to stop it with a terminal state and reason (after teardown)."""

    def __init__(self, state: JobState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@asynccontextmanager
async def open_reservation(cluster: ActorRef, record: JobRecord, release_timeout: float) -> AsyncIterator[Any]:
    """Reserve a share through the cluster actor; release it on exit (shielded, bounded, idempotent).

    The release also runs when the reservation call itself was cancelled: the cluster may have reserved before
    the caller stopped waiting, and ``Unplace`` of a job that holds nothing is a no-op. If the cluster actor is
    gone, so is its accounting, and there is nothing to release.
    """
    try:
        answer = await cluster.call(Place(record.job_id, record))
        if hasattr(answer, "ready"):  # a queue ticket: wait for the cluster to place us
            record.queue_position = answer.position
            record.set_state(JobState.QUEUED, f"waiting for capacity (position {answer.position})")
            limit = record.spec.max_queue_seconds or math.inf
            with trio.move_on_after(limit):
                await answer.ready.wait()
            if not answer.ready.is_set():
                raise JobStopped(JobState.FAILED, f"queue_timeout: no capacity within {limit:g} s")
            answer = answer.allocation
            record.set_state(JobState.SCHEDULING)
        yield answer
    finally:
        with trio.move_on_after(release_timeout, shield=True):
            try:
                await cluster.call(Unplace(record.job_id))
            except ActorDied:
                pass


@asynccontextmanager
async def open_task_watch(watcher: ActorRef, job_id: str) -> AsyncIterator[trio.MemoryReceiveChannel[TaskState]]:
    """Subscribe to the job's task changes; unsubscribe on exit."""
    updates = await watcher.call(Watch(job_id))
    try:
        yield updates
    finally:
        with trio.move_on_after(5, shield=True):
            try:
                await watcher.call(Unwatch(job_id))
            except ActorDied:
                pass


class JobActor(Actor):
    mailbox_size = 16

    def __init__(
        self,
        record: JobRecord,
        *,
        settings: Settings,
        swarm: SwarmBackend,
        cluster: ActorRef,
        watcher: ActorRef,
    ) -> None:
        super().__init__(f"job:{record.job_id}")
        self.record = record
        self.settings = settings
        self.swarm = swarm
        self.cluster = cluster
        self.watcher = watcher
        self._life_scope = trio.CancelScope()
        self._stop_reason: JobStopped | None = None
        # Owned by the _live task, which acquires and releases them (Trio scopes stay in one task).
        self.resources = ResourceOwner(self.name)

    async def on_start(self) -> None:
        self.start_soon(self._live)

    async def handle(self, message: Any) -> Any:
        match message:
            case Cancel(reason):
                self._stop(JobStopped(JobState.CANCELLED, reason))
                return None
        raise TypeError(f"{self.name}: unknown message {message!r}")

    def _stop(self, why: JobStopped) -> None:
        if self._stop_reason is None:
            self._stop_reason = why
        self._life_scope.cancel()

    # ---- the job's life ---------------------------------------------------------------------------------------

    async def _live(self) -> None:
        record = self.record
        failure: JobStopped | None = None
        try:
            with self._life_scope:
                try:
                    # Teardown on leaving this block, whatever the reason: newest first (service, files,
                    # partition, reservation), each shielded and bounded.
                    async with self.resources:
                        await self._run()
                except JobStopped as stopped:
                    failure = stopped
                except CumulusError as error:  # infrastructure said no: recorded as the job's failure
                    failure = JobStopped(JobState.FAILED, f"infrastructure: {error}")
                except Exception as error:  # a bug or an unexpected failure: the job fails, with the reason
                    log.exception("%s: unexpected failure", self.name)
                    failure = JobStopped(JobState.FAILED, f"internal error: {type(error).__name__}: {error}")
        finally:
            if failure is None:
                failure = self._stop_reason or JobStopped(JobState.CANCELLED, "supervisor stopped the job")
            record.set_state(failure.state, failure.reason)  # ignored if it already ended by itself
            record.set_torn_down(TeardownReport(
                released=tuple(self.resources.released),
                leaked=tuple(f"{leak.what}: {leak.reason}" for leak in self.resources.leaks),
            ))
            self.stop()

    async def _run(self) -> None:
        record, spec, own = self.record, self.record.spec, self.resources.own
        timeout = self.settings.jobs.release_timeout
        record.set_state(JobState.SCHEDULING)
        allocation = await own(open_reservation(self.cluster, record, timeout), what="reservation")
        record.placement = Placement(
            worker=allocation.worker, node_id=allocation.node_id, device_index=allocation.device_indexes[0],
            share=allocation.share, device_indexes=allocation.device_indexes, gpu_uuids=allocation.gpu_uuids,
        )
        record.add_message(f"placed on {allocation.worker} device {allocation.device_indexes[0]}")
        record.set_state(JobState.CREATING_PARTITION)
        node = allocation.backend
        lease = await own(
            node.open_partition(device=allocation.device_indexes[0], fraction=allocation.share,
                                duration=spec.duration, job_id=record.job_id),
            what="partition",
        )
        record.partition_id = lease.partition_id
        files = await own(node.open_job_files(job_id=record.job_id, package=spec.package), what="files")
        updates = await own(open_task_watch(self.watcher, record.job_id), what="task watch")
        service = await own(self.swarm.open_service(self._service_request(allocation, lease, files)),
                            what="service")
        record.service_id = service.id
        with trio.move_on_after(spec.duration) as deadline:
            exit_task = await self._follow(service, updates, lease)
        if deadline.cancelled_caught:
            raise JobStopped(JobState.FAILED, "timeout")
        await self._conclude(exit_task, files)

    def _service_request(self, allocation: Any, lease: Any, files: Any) -> ServiceRequest:
        record = self.record
        return ServiceRequest(
            job_id=record.job_id, supervisor_id=self.settings.supervisor_id, node_id=allocation.node_id,
            image=self.settings.cluster.image, device_index=allocation.device_indexes[0],
            partition_id=lease.partition_id, code_dir=files.code_dir, output_dir=files.output_dir,
            env={**record.spec.env, "CUMULUS_GPU_FRACTION": repr(allocation.share)},
            gpu_uuid=allocation.gpu_uuids[0], stop_grace=self.settings.jobs.stop_grace,
        )

    async def _follow(self, service: Any, updates: trio.MemoryReceiveChannel[TaskState], lease: Any) -> TaskState:
        """Relay logs while waiting for the task to end; return its terminal state. Raises JobStopped if the
        partition is lost meanwhile."""
        record = self.record
        logs_done = trio.Event()
        exit_task: TaskState | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._relay_logs, service.id, logs_done)
            nursery.start_soon(self._watch_lease, lease)
            async for task in updates:
                if task.state == "running" or task.terminal:
                    record.set_state(JobState.RUNNING)
                if task.terminal:
                    exit_task = task
                    break
            with trio.move_on_after(LOG_DRAIN_SECONDS):
                await logs_done.wait()  # the runner's last line: every earlier line has been relayed
            nursery.cancel_scope.cancel()
        if exit_task is None:
            raise JobStopped(JobState.FAILED, "task watch ended before the job's task finished")
        return exit_task

    async def _relay_logs(self, service_id: str, done: trio.Event) -> None:
        try:
            async with self.swarm.follow_logs(service_id) as lines:
                async for stream, line in lines:
                    self.record.set_state(JobState.RUNNING)  # output proves it runs, even before the next poll
                    self.record.add_log(stream, line)
                    if line.startswith(END_OF_JOB_MARKER):
                        done.set()
        except CumulusError as error:  # logs are for humans: losing them must not fail the job
            self.record.add_message(f"log stream ended: {error}")
        finally:
            done.set()

    async def _watch_lease(self, lease: Any) -> None:
        await lease.lost.wait()
        self._stop(JobStopped(JobState.FAILED, f"partition_lost: {lease.lost_reason}"))

    async def _conclude(self, task: TaskState, files: Any) -> None:
        """Fetch the result envelope and write the terminal state for a job that ended by itself."""
        record = self.record
        envelope = await files.fetch_result(MAX_RESULT_BYTES)
        if envelope is not None:
            record.set_result(envelope)
        if task.state == "complete" and task.exit_code == 0 and envelope is not None:
            record.set_state(JobState.COMPLETED)
        elif envelope is not None and task.exit_code == 1:
            record.set_state(JobState.FAILED, "user_exception")
        else:
            detail = task.error or task.message or ""
            record.set_state(JobState.FAILED, f"container {task.state} (exit code {task.exit_code})"
                                              + (f": {detail}" if detail else ""))

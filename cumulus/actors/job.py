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
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import trio

from cumulus.actors.base import Actor, ActorRef
from cumulus.actors.log_relay import LogRelay
from cumulus.actors.ownership import ResourceOwner
from cumulus.actors.watcher import PollNow, Unwatch, Watch
from cumulus.actors.worker import Release, Reserve, WorkerUnavailable
from cumulus.backends import SwarmBackend
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError, RequestRejected
from cumulus.jobs import JobRecord, JobState, Placement, TeardownReport
from cumulus.resources.swarm import LABEL_JOB, ServiceRequest, TaskState

log = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = 1.0
RETRY_BACKOFF_MAX_SECONDS = 30.0
#: Failures of the infrastructure, not of the job: retried by default (jobs.default_retries).
RETRIED_FAILURES = frozenset({"infrastructure", "node_lost", "partition_lost", "container_failed", "lost"})
# ("lost" - in a supervisor restart - is retried only when the job set retries itself.)
EXIT_AFTER_FINISH_SECONDS = 10.0  # a finished job's container gets this long to exit before it is stopped
STOP_WAIT_SECONDS = 5.0
MAX_RESULT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"


@dataclass(frozen=True)
class Place:
    """To the cluster actor: reserve a share for ``job_id`` somewhere (an :class:`Allocation` comes back).

    ``adopt``: the job already runs (re-adoption after a restart): reserve exactly its recorded placement.
    """

    job_id: str
    record: JobRecord
    adopt: bool = False


@dataclass(frozen=True)
class Enqueue:
    """To the cluster actor: no candidate had room; wait in the queue (a QueueTicket comes back)."""

    job_id: str
    record: JobRecord


@dataclass(frozen=True)
class Placed:
    """To the cluster actor (cast): the job holds a reservation on this worker."""

    job_id: str
    worker: str


@dataclass(frozen=True)
class Unplace:
    """To the cluster actor (cast): the job holds nothing any more, and waits for nothing."""

    job_id: str


class JobStopped(Exception):
    """How an attempt ended: raised inside the job's life to stop it, or returned by a job that ended by itself.

    ``result`` is the runner's envelope (recorded only once the outcome is final); ``retry=False`` marks an
    outcome that no retry policy applies to.
    """

    def __init__(self, state: JobState, reason: str = "", *, result: bytes | None = None, retry: bool = True) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.result = result
        self.retry = retry


@asynccontextmanager
async def open_reservation(
    cluster: ActorRef, record: JobRecord, release_timeout: float, *, allow_non_gpu: bool,
    adopt_within: float = 0.0,
) -> AsyncIterator[Any]:
    """Reserve a share for the job; release it on exit (shielded, bounded, idempotent).

    The cluster names candidate workers (or queues the job); the job asks them itself, so the cluster's mailbox
    never waits on a worker's. The release goes to every worker that was asked - also when the asking was
    cancelled, since a worker may have reserved before the caller stopped waiting - and ``Unplace`` tells the
    cluster (queue, packing, waiting jobs). Releasing what was never reserved is a no-op; a dead actor's
    accounting died with it.
    """
    asked: list[ActorRef] = []
    ticket = None
    try:
        allocation = None
        if adopt_within:  # re-adoption: its worker may still be connecting; wait for it up to the lease TTL
            with trio.fail_after(adopt_within):
                while allocation is None:
                    try:
                        (worker,) = await cluster.call(Place(record.job_id, record, adopt=True))
                        asked.append(worker)
                        placement = record.placement
                        assert placement is not None
                        allocation = await worker.call(
                            Reserve(record.job_id, record.spec, True, placement.device_indexes))
                    except (WorkerUnavailable, ActorDied):
                        await trio.sleep(0.5)
        else:
            answer = await cluster.call(Place(record.job_id, record))
            if isinstance(answer, list):  # candidates, in packing order
                allocation = await _reserve_first(answer, asked, record, allow_non_gpu)
                if allocation is None:
                    answer = await cluster.call(Enqueue(record.job_id, record))
            if allocation is None:
                ticket = answer
                allocation = await _wait_in_queue(ticket, record)
        cluster.cast_nowait(Placed(record.job_id, allocation.worker_ref.name))
        yield allocation
    finally:
        with trio.move_on_after(release_timeout, shield=True):
            if ticket is not None and ticket.allocation is not None:
                asked.append(ticket.allocation.worker_ref)
            for worker in asked:
                try:
                    await worker.cast(Release(record.job_id))
                except ActorDied:
                    pass
            try:
                await cluster.cast(Unplace(record.job_id))
            except ActorDied:
                pass


async def _reserve_first(candidates: list[ActorRef], asked: list[ActorRef], record: JobRecord,
                         allow_non_gpu: bool) -> Any:
    for worker in candidates:
        asked.append(worker)
        try:
            return await worker.call(Reserve(record.job_id, record.spec, allow_non_gpu))
        except (RequestRejected, ActorDied):
            continue
    return None


async def _wait_in_queue(ticket: Any, record: JobRecord) -> Any:
    record.queue_position = ticket.position
    record.set_state(JobState.QUEUED, f"waiting for capacity (position {ticket.position})")
    limit = record.spec.max_queue_seconds or math.inf
    with trio.move_on_after(limit):
        await ticket.ready.wait()
    if not ticket.ready.is_set():
        raise JobStopped(JobState.FAILED, f"queue_timeout: no capacity within {limit:g} s")
    record.set_state(JobState.SCHEDULING)
    return ticket.allocation


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
        adopt: bool = False,
    ) -> None:
        super().__init__(f"job:{record.job_id}")
        self._adopt = adopt
        self.record = record
        self.settings = settings
        self.swarm = swarm
        self.cluster = cluster
        self.watcher = watcher
        self._life_scope = trio.CancelScope()
        self._stop_reason: JobStopped | None = None
        # The current attempt's resources, acquired and released by the _live task.
        self.resources = ResourceOwner(self.name)
        self._attempt_scope: trio.CancelScope | None = None
        self._exited = False  # the current attempt's container has exited
        self._attempt_failure: JobStopped | None = None
        self._service: Any = None  # the current attempt's service handle, once created

    async def on_start(self) -> None:
        self.start_soon(self._live)

    async def handle(self, message: Any) -> Any:
        match message:
            case Cancel(reason):
                self._stop(JobStopped(JobState.CANCELLED, reason))
                return None
        raise TypeError(f"{self.name}: unknown message {message!r}")

    def _stop(self, why: JobStopped) -> None:
        """Stop the job for good (cancel): tear down, then record ``why``."""
        if self._stop_reason is None:
            self._stop_reason = why
        self._life_scope.cancel()

    def _attempt_failed(self, why: JobStopped) -> None:
        """End the current attempt (tear it down); the retry policy then decides."""
        self._attempt_failure = why
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    # ---- the job's life ---------------------------------------------------------------------------------------

    async def _live(self) -> None:
        record = self.record
        outcome: JobStopped | None = None
        released: list[str] = []
        leaked: list[str] = []
        try:
            with self._life_scope:
                while True:
                    outcome = await self._attempt(released, leaked)
                    if not self._should_retry(outcome):
                        break
                    delay = min(RETRY_BACKOFF_SECONDS * 2 ** (record.attempt - 1), RETRY_BACKOFF_MAX_SECONDS)
                    record.attempt += 1
                    record.note_retry(outcome.reason, delay)
                    log.info("%s: attempt %d failed (%s); retrying in %g s", self.name, record.attempt - 1,
                             outcome.reason, delay)
                    await trio.sleep(delay)
        finally:
            if outcome is None or self._life_scope.cancelled_caught:
                outcome = self._stop_reason or JobStopped(JobState.CANCELLED, "supervisor stopped the job")
            if outcome.result is not None:
                record.set_result(outcome.result)
            record.set_state(outcome.state, outcome.reason)  # ignored if it already ended by itself
            record.set_torn_down(TeardownReport(released=tuple(released), leaked=tuple(leaked)))
            self.stop()

    async def _attempt(self, released: list[str], leaked: list[str]) -> JobStopped:
        """Run the job once; tear down what this attempt acquired; return how it ended (not yet recorded if
        it might be retried). Cancellation of the whole job (cancel, shutdown) propagates after the teardown."""
        resources = self.resources = ResourceOwner(self.name)
        self._attempt_failure = None
        self._exited = False
        self._service = None
        outcome: JobStopped | None = None
        try:
            with trio.CancelScope() as self._attempt_scope:
                try:
                    # Teardown on leaving this block, whatever the reason: newest first (service, task watch,
                    # files, partition, reservation), each shielded and bounded.
                    async with resources:
                        outcome = await self._run()
                except JobStopped as stopped:
                    outcome = stopped
                except CumulusError as error:  # infrastructure said no: the attempt failed
                    outcome = JobStopped(JobState.FAILED, f"infrastructure: {error}")
                except Exception as error:  # a bug or an unexpected failure: the job fails, with the reason
                    log.exception("%s: unexpected failure", self.name)
                    outcome = JobStopped(JobState.FAILED, f"internal error: {type(error).__name__}: {error}",
                                         retry=False)
        finally:
            self._attempt_scope = None
            released.extend(resources.released)
            leaked.extend(f"{leak.what}: {leak.reason}" for leak in resources.leaks)
            service = self._service
            if service is not None and not service.removal_confirmed:
                # Removed from the Swarm, but its container was not seen gone: say so (the node reaps it).
                why = ("connection lost to its node" if service.node_unreachable
                       else "its task did not disappear in time")
                leaked.append(f"service {service.id}: container stop not confirmed ({why})")
        return outcome or self._attempt_failure or JobStopped(JobState.FAILED, "attempt stopped")

    def _should_retry(self, outcome: JobStopped) -> bool:
        spec, record = self.record.spec, self.record
        retries = spec.retries if spec.retries else self.settings.jobs.default_retries
        if outcome.reason.startswith("lost"):
            retries = spec.retries  # lost in a supervisor restart: run again only if the job itself asked
        if outcome.state is not JobState.FAILED or record.attempt > retries or self._stop_reason is not None:
            return False
        if outcome.reason == "user_exception":
            return spec.retry_exceptions
        return outcome.retry and outcome.reason.split(":")[0] in RETRIED_FAILURES

    async def _run(self) -> JobStopped:
        if self._adopt:
            self._adopt = False  # a retry after this attempt starts afresh
            return await self._run_adopted()
        record, spec, own = self.record, self.record.spec, self.resources.own
        timeout = self.settings.jobs.release_timeout
        record.set_state(JobState.SCHEDULING)
        allocation = await own(open_reservation(self.cluster, record, timeout,
                                                allow_non_gpu=self.settings.cluster.allow_non_gpu_devices),
                               what="reservation", same_task=True)
        record.set_placement(Placement(
            worker=allocation.worker, node_id=allocation.node_id, device_index=allocation.device_indexes[0],
            share=allocation.share, device_indexes=allocation.device_indexes, gpu_uuids=allocation.gpu_uuids,
        ))
        record.set_state(JobState.CREATING_PARTITION)
        node = allocation.backend
        # The partition and the upload go over the same SSH connection at once; they are still released in the
        # nested order (files, then partition).
        lease, files = await self.resources.own_together([
            (node.open_partition(device=allocation.device_indexes[0], fraction=allocation.share,
                                 duration=spec.duration, job_id=record.job_id,
                                 replace_earlier=record.attempt > 1), "partition"),
            (node.open_job_files(job_id=record.job_id, package=spec.package), "files"),
        ])
        record.partition_id = lease.partition_id
        updates = await own(open_task_watch(self.watcher, record.job_id), what="task watch", same_task=True)
        service = await own(self.swarm.open_service(self._service_request(allocation, lease, files)),
                            what="service", same_task=True)
        record.service_id = service.id
        record.persist()  # a restarted supervisor must find (and re-adopt) the service even before RUNNING
        self._service = service
        await own(self._stopped_on_its_node(node, lease), what="container stop", same_task=True)
        with trio.move_on_after(spec.duration) as deadline:
            exit_task = await self._follow(service, updates, lease, files)
        if deadline.cancelled_caught:
            raise JobStopped(JobState.FAILED, "timeout", retry=False)
        return await self._conclude(exit_task, files)

    async def _run_adopted(self) -> JobStopped:
        """Take over a job that a previous supervisor process started and that still runs on its worker.

        Everything of it that still exists is owned again (so it is torn down in the usual order whatever
        happens). If its partition holder is gone (the lease expired while no supervisor ran), the job is
        concluded from what it left if it had ended by then, and is lost otherwise.
        """
        record, own = self.record, self.resources.own
        placement = record.placement
        assert placement is not None
        record.add_message(f"re-adopting after a supervisor restart (on {placement.worker})")
        allocation = await own(open_reservation(self.cluster, record, self.settings.jobs.release_timeout,
                                                allow_non_gpu=True, adopt_within=max(self.settings.lease.ttl, 5.0)),
                               what="reservation", same_task=True)
        node = allocation.backend
        lost: Exception | None = None
        lease = files = service = None
        try:
            lease = await own(node.adopt_partition(job_id=record.job_id, partition_id=record.partition_id,
                                                   device=placement.device_index, fraction=placement.share),
                              what="partition")
        except CumulusError as error:
            lost = error
        try:
            files = await own(node.adopt_job_files(job_id=record.job_id), what="files")
        except CumulusError as error:
            lost = lost or error
        updates = await own(open_task_watch(self.watcher, record.job_id), what="task watch", same_task=True)
        try:
            service = self._service = await own(self.swarm.adopt_service(record.service_id, record.job_id),
                                                what="service", same_task=True)
        except CumulusError as error:
            lost = lost or error
        if files is None or service is None:
            raise JobStopped(JobState.FAILED, f"lost: could not re-adopt after a supervisor restart: {lost}")
        if lease is None:
            # Its partition ended while the supervisor was away (the lease expired). If the job had finished by
            # then, its outcome is in its job dir: the job is not lost, only its partition is gone.
            return await self._conclude_unattended(service, files, lost)
        remaining = record.spec.duration - (time.time() - (record.started_at or record.submitted_at))
        with trio.move_on_after(max(remaining, 0)) as deadline:
            exit_task = await self._follow(service, updates, lease, files)
        if deadline.cancelled_caught:
            raise JobStopped(JobState.FAILED, "timeout", retry=False)
        return await self._conclude(exit_task, files)

    async def _conclude_unattended(self, service: Any, files: Any, lost: Exception | None) -> JobStopped:
        """How a job ended whose partition lease expired while no supervisor watched it: completed (or failed
        with its own exception) if its task had ended with an outcome in its job dir; otherwise lost (stopped
        by its expired lease), which is retried only if the job itself asked for retries."""
        tasks = await self.swarm.task_states({LABEL_JOB: self.record.job_id})
        ended = [t for t in tasks if t.service_id == service.id and t.terminal]
        if ended:
            self._exited = True
            outcome = await self._conclude(ended[0], files)
            if outcome.state is JobState.COMPLETED or outcome.reason == "user_exception":
                self.record.add_message("re-adopted after a supervisor restart: it had ended meanwhile")
                return outcome
        raise JobStopped(JobState.FAILED, f"lost: could not re-adopt after a supervisor restart: {lost}")

    @asynccontextmanager
    async def _stopped_on_its_node(self, node: Any, lease: Any) -> AsyncIterator[None]:
        """On release, if the job still runs: tell its node to stop it at once (the lease's stop mark, which the
        runner acts on within 0.05 s) and wait until the Swarm task has ended. Removing the service through Swarm
        alone takes seconds; this way the container is stopped first and the removal has nothing to wait for.
        Once the container is stopped nothing uses the partition any more, so its holder is told to release it
        meanwhile (the partition's own release, after the service's, then only confirms it)."""
        try:
            yield
        finally:
            if not self._exited and not (self._service is not None and self._service.node_unreachable):
                with trio.move_on_after(STOP_WAIT_SECONDS, shield=True):
                    try:
                        await node.stop_job(self.record.job_id)
                        while not await self._task_ended():
                            await trio.sleep(0.02)
                        self.start_soon(node.kill_holder, lease.holder_pid)  # bounded, never raises
                    except CumulusError as error:
                        # Only a shortcut: the service removal that follows stops the container anyway (and
                        # with the node unreachable, its lease expires by itself).
                        log.info("%s: stopping on the node failed (%s); Swarm removal will", self.name, error)

    async def _task_ended(self) -> bool:
        tasks = await self.swarm.task_states({LABEL_JOB: self.record.job_id})
        service_id = self._service.id if self._service is not None else None
        return all(task.terminal for task in tasks if service_id is None or task.service_id == service_id)

    def _service_request(self, allocation: Any, lease: Any, files: Any) -> ServiceRequest:
        record = self.record
        return ServiceRequest(
            job_id=record.job_id, supervisor_id=self.settings.supervisor_id, node_id=allocation.node_id,
            image=self.settings.cluster.image, device_index=allocation.device_indexes[0],
            partition_id=lease.partition_id, code_dir=files.code_dir, output_dir=files.output_dir,
            env={**record.spec.env, "CUMULUS_GPU_FRACTION": repr(allocation.share)},
            gpu_uuid=allocation.gpu_uuids[0], stop_grace=self.settings.jobs.stop_grace,
            lease_dir=allocation.backend.lease_dir(record.job_id),
        )

    async def _follow(self, service: Any, updates: trio.MemoryReceiveChannel[TaskState], lease: Any,
                      files: Any) -> TaskState | None:
        """Relay logs while waiting for the task to end; return its terminal state. Raises JobStopped if the
        partition is lost meanwhile.

        The runner's last line says how the job ended; on "finished" the result is already written, so it is
        fetched and the job recorded COMPLETED at once, without waiting for Swarm to report the task's end
        (which takes a few hundred ms). That report still ends this wait, and the teardown follows it; a
        container that does not exit within ``EXIT_AFTER_FINISH_SECONDS`` of that (a job that left a non-daemon
        thread behind) is not waited for any longer: ``None`` is returned and the teardown stops it."""
        record = self.record
        relay = LogRelay(self.swarm, record, on_end_of_job=self._poll_now)
        exit_task: TaskState | None = None
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as waiting:
                nursery.start_soon(relay.run, service.id)
                nursery.start_soon(self._watch_lease, lease)
                nursery.start_soon(self._complete_when_finished, relay.finished, files, waiting)
                async for task in updates:
                    if task.service_id != service.id:
                        continue  # an earlier attempt's task, reported late (e.g. by a node that came back)
                    if task.state == "running" or task.terminal:
                        record.set_state(JobState.RUNNING)
                    if task.terminal:
                        exit_task = task
                        self._exited = True
                        break
                await relay.drain()
            nursery.cancel_scope.cancel()
        if exit_task is None and not (waiting.cancelled_caught and record.state is JobState.COMPLETED):
            raise JobStopped(JobState.FAILED, "task watch ended before the job's task finished")
        return exit_task

    async def _complete_when_finished(self, finished: trio.Event, files: Any, waiting: trio.CancelScope) -> None:
        await finished.wait()
        try:
            envelope = await files.fetch_result(MAX_RESULT_BYTES)
        except CumulusError:
            return  # the task's end decides, as usual
        if envelope is not None:
            self.record.set_result(envelope)
            self.record.set_state(JobState.COMPLETED)
            waiting.deadline = trio.current_time() + EXIT_AFTER_FINISH_SECONDS

    def _poll_now(self) -> None:
        """The runner wrote its last line: the container's exit follows, so have its task's state read at once."""
        try:
            self.watcher.cast_nowait(PollNow())
        except (ActorDied, trio.WouldBlock):
            pass

    async def _watch_lease(self, lease: Any) -> None:
        await lease.lost.wait()
        kind = "node_lost" if "connection" in (lease.lost_reason or "") else "partition_lost"
        if kind == "node_lost" and self._service is not None:
            self._service.node_unreachable = True  # its removal cannot be confirmed: do not wait for it
        self._attempt_failed(JobStopped(JobState.FAILED, f"{kind}: {lease.lost_reason}"))

    async def _conclude(self, task: TaskState | None, files: Any) -> JobStopped:
        """How a job that ended by itself ended. A completed job is recorded at once (its result reaches the
        caller before teardown); a failure is left to the retry policy."""
        record = self.record
        if record.state is JobState.COMPLETED:  # concluded on the runner's last line already
            return JobStopped(JobState.COMPLETED)
        envelope = await files.fetch_result(MAX_RESULT_BYTES)
        assert task is not None  # only a COMPLETED job may be concluded without its task's end
        if task.state == "complete" and task.exit_code == 0 and envelope is not None:
            record.set_result(envelope)
            record.set_state(JobState.COMPLETED)
            return JobStopped(JobState.COMPLETED)
        if envelope is not None and task.exit_code == 1:
            return JobStopped(JobState.FAILED, "user_exception", result=envelope)
        detail = task.error or task.message or ""
        return JobStopped(JobState.FAILED, f"container_failed: {task.state} (exit code {task.exit_code})"
                                           + (f": {detail}" if detail else ""), result=envelope,
                          retry=envelope is None)

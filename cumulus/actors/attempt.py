"""One attempt of a job: reserve, (its user image,) partition, upload, run as a Swarm service, follow, conclude -
and tear it down. Everything the attempt holds outside the process is owned, nested, by its :class:`ResourceOwner`::

    reservation (Scheduler)  >  partition lease + job files (worker)  >  task watch  >  secret env  >  service
        >  container stop

acquired in that order and released in reverse, each release shielded and bounded, so a cancelled or crashed
attempt still gives everything back; a failed release is a leak in the teardown report. Its JobActor
(``cumulus/actors/job.py``) runs it, owns the record it writes to and decides on retries.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

import trio

from cumulus import metrics
from cumulus.actors.base import ActorRef
from cumulus.actors.call_routing import CallRouter
from cumulus.actors.checkpoint_step import (CheckpointCopier, checkpoint_env, open_checkpoint_copy,
                                            pause_was_requested, request_pause, restore_point)
from cumulus.actors.instance_calls import InstanceCalls, serve_instance
from cumulus.actors.job_calls import JobCalls
from cumulus.actors.log_relay import LogRelay
from cumulus.actors.outcome import JobStopped, Outcome, PauseCause
from cumulus.actors.ownership import ResourceOwner
from cumulus.actors.requirements_step import job_requirements
from cumulus.actors.result_fetch import MAX_RESULT_BYTES, conclude, fetch_result
from cumulus.actors.scheduler import Granted, Queued, QueuePosition, Release, Reservation, Reserve
from cumulus.actors.service_request import NO_PATH, job_service_request, starts_early, warm_eligible
from cumulus.actors.user_image_step import prepare_user_image
from cumulus.actors.warm_step import make_early, start_warm, take_warm
from cumulus.actors.watcher import PollNow, Unwatch, Watch
from cumulus.backends import NodeBackend, NodeConnections, SwarmBackend, WorkerUnavailable
from cumulus.config import Settings
from cumulus.errors import ActorDied, CumulusError
from cumulus.jobs import CheckpointNote, FailureReason, JobRecord, JobState
from cumulus.journal import Load
from cumulus.resources.checkpoint_store import CheckpointStore, StoredCheckpoint
from cumulus.resources.partition import LeaseLoss
from cumulus.resources.swarm import LABEL_JOB, ServiceRequest, TaskState

log = logging.getLogger(__name__)

EXIT_AFTER_FINISH_SECONDS = 10.0  # a finished job's container gets this long to exit before it is stopped
STOP_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class JobContext:
    """What a job's attempts use: its record (written by the job's actor), the doors to the world, its actors."""

    record: JobRecord
    settings: Settings
    swarm: SwarmBackend
    connections: NodeConnections
    scheduler: ActorRef
    watcher: ActorRef
    name: str
    start_soon: Callable[..., None]
    self_ref: Callable[[], ActorRef | None]
    journal: ActorRef | None = None  # where a retry finds the package again (it leaves memory once uploaded)
    checkpoints: CheckpointStore | None = None  # where its checkpoints are kept (None: no checkpoints)
    workers: Callable[[str], ActorRef | None] | None = None  # a node's WorkerActor, which hands out warm services
    calls: InstanceCalls | None = None  # a class instance's method calls (its JobActor's), served while it runs
    router: CallRouter | None = None  # where the calls the job makes on instances go (handles passed to it)


class Attempt:
    """Runs one attempt (:meth:`run`); the job's actor forwards the Scheduler's grant to :meth:`granted`."""

    adopted = False  # it follows a job that a previous supervisor process started (AdoptedAttempt)

    def __init__(self, ctx: JobContext, ticket: int) -> None:
        self.ctx = ctx
        self.record = ctx.record
        self.ticket = ticket
        self.resources = ResourceOwner(ctx.name)
        self.failure: Outcome | None = None  # set by a watcher of the attempt (lost lease) before cancelling it
        self.scope = trio.CancelScope()
        self.exited = False  # the container has exited
        self.only_waits = False  # its container (warm, or made early) waits for its job, not handed it yet
        self.service: Any = None  # the service handle, once created
        self.node: NodeBackend | None = None  # its worker and job files, once made
        self.files: Any = None
        self.copier: CheckpointCopier | None = None
        self.restored: StoredCheckpoint | None = None  # the checkpoint it starts from
        self._grant: Reservation | None = None
        self._granted = trio.Event()
        self._moved = False  # a QueuePosition came for this attempt
        self.task_key = ctx.record.job_id  # its task's job label (a warm service's keeps the warm id)

    def granted(self, message: Granted) -> None:
        if message.ticket == self.ticket and not self._granted.is_set():
            self._grant = message.reservation
            self._granted.set()

    def queue_moved(self, message: QueuePosition) -> None:  # may arrive before the answer to the Reserve
        """The Scheduler's newer word on this attempt's place in the queue."""
        if message.ticket == self.ticket and not self._granted.is_set():
            self._moved = True
            self.record.set_queue_position(message.position)

    def fail(self, outcome: Outcome) -> None:
        """End this attempt with ``outcome`` (it is torn down; the retry policy decides)."""
        self.failure = outcome
        self.scope.cancel()

    def pause(self, grace: float) -> bool:
        """Ask the job to pause: a job whose container runs gets ``grace`` seconds to return after its
        ``should_pause()`` turns true, and is then stopped (PAUSED at its last checkpoint); one that does not run
        yet ends PAUSED at once. Returns whether its container was running."""
        if self.service is None or self.exited or self.node is None or self.files is None:
            self.fail(Outcome.paused("paused before it ran", PauseCause.NOT_RUNNING))
            return False
        self.ctx.start_soon(self._pause_running, self.node, self.files, grace)
        return True

    async def _pause_running(self, node: NodeBackend, files: Any, grace: float) -> None:
        try:
            await request_pause(node, files, self.record.job_id)
            self.record.add_message(f"asked to pause: it has {grace:g} s to return")
        except CumulusError as error:  # its node did not take the request: the grace period still ends it
            log.warning("%s: the pause request did not reach its worker: %s", self.ctx.name, error)
        await trio.sleep(grace)
        self.fail(Outcome.paused(f"did not return within {grace:g} s of the pause request: stopped, paused at "
                                 "its last checkpoint", PauseCause.STOPPED))

    @property
    def duration(self) -> float:
        """How long this attempt may hold its share: the job's duration, less what its paused attempts ran
        (with ``resume_on_timeout``, the whole duration each time)."""
        spec = self.record.spec
        return float(spec.duration) if spec.resume_on_timeout else max(spec.duration - self.record.ran_seconds, 1.0)

    def timed_out(self) -> Outcome:
        return Outcome.failed(FailureReason.TIMEOUT, f"ran {self.duration:g} s: it runs again from its last "
                              "checkpoint (resume_on_timeout)") if self.record.spec.resume_on_timeout else \
            Outcome.failed(FailureReason.TIMEOUT, retry=False)

    # ---- resources --------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _reservation(self, exact: bool) -> AsyncIterator[Reservation]:
        """A share from the Scheduler (waiting in its queue if needed); released on exit, always (shielded,
        bounded, idempotent), also if the asking was cancelled: the Scheduler may have granted meanwhile."""
        record, scheduler = self.record, self.ctx.scheduler
        try:
            if exact:
                yield await self._reserve_exactly()
                return
            answer = await scheduler.call(Reserve(record.job_id, record.spec, self.ticket, self.ctx.self_ref()))
            if isinstance(answer, Queued):
                answer = await self._wait_in_queue(answer.position)
            yield answer
        finally:
            with trio.move_on_after(self.ctx.settings.jobs.release_timeout, shield=True) as releasing:
                with suppress(ActorDied):  # its accounting died with it
                    await scheduler.cast(Release(record.job_id))
            if releasing.cancelled_caught:  # the Scheduler's mailbox stayed full: a leak, said as one
                raise CumulusError(f"the Scheduler took no Release within {self.ctx.settings.jobs.release_timeout:g} s")

    async def _reserve_exactly(self) -> Reservation:
        """Re-adoption: the devices the job holds; its worker may still be connecting, so ask until the lease
        TTL is over."""
        record = self.record
        within = max(self.ctx.settings.lease.ttl, 5.0)
        with trio.move_on_after(within):
            while True:
                try:
                    return await self.ctx.scheduler.call(
                        Reserve(record.job_id, record.spec, self.ticket, exact=record.placement))
                except (WorkerUnavailable, ActorDied):
                    await trio.sleep(0.5)
        # Its worker did not come back while its lease could still hold: the job is lost, and its service goes
        # now (it was never owned again, so no teardown would remove it).
        with trio.move_on_after(self.ctx.settings.jobs.release_timeout, shield=True):
            try:
                await self.ctx.swarm.remove_service(record.service_id)
            except CumulusError as error:
                log.warning("%s: removing the service of a job that could not be re-adopted: %s", self.ctx.name, error)
        worker = record.placement.worker if record.placement else "its worker"
        raise JobStopped(Outcome.failed(FailureReason.LOST, f"{worker} did not come back within {within:g} s"))

    async def _wait_in_queue(self, position: int) -> Reservation:
        record = self.record
        if not self._moved:
            record.set_queue_position(position)
        record.set_state(JobState.QUEUED, f"waiting for capacity (position {record.queue_position or position})")
        limit = record.spec.max_queue_seconds or math.inf
        with trio.move_on_after(limit):
            await self._granted.wait()
        if self._grant is None:
            raise JobStopped(Outcome.failed(FailureReason.QUEUE_TIMEOUT, f"no capacity within {limit:g} s"))
        record.set_queue_position(0)
        record.set_state(JobState.SCHEDULING)
        return self._grant

    @asynccontextmanager
    async def _task_watch(self) -> AsyncIterator[trio.MemoryReceiveChannel[TaskState]]:
        watcher, job_id = self.ctx.watcher, self.task_key
        updates = await watcher.call(Watch(job_id))
        try:
            yield updates
        finally:
            with trio.move_on_after(5, shield=True), suppress(ActorDied):
                await watcher.call(Unwatch(job_id))

    @asynccontextmanager
    async def _stopped_on_its_node(self, node: NodeBackend, lease: Any) -> AsyncIterator[None]:
        """On release, if the job still runs: tell its node to stop it at once (the lease's stop mark, which the
        runner acts on within 0.05 s) and wait until the Swarm task has ended. Removing the service through Swarm
        alone takes seconds; this way the container is stopped first and the removal has nothing to wait for.
        Once the container is stopped nothing uses the partition any more, so its holder is told to release it
        meanwhile (the partition's own release, after the service's, then only confirms it). A container that only
        waits for its job (never sent it) runs nothing: the service's removal ends it."""
        try:
            yield
        finally:
            if not self.exited and not self.only_waits \
                    and not (self.service is not None and self.service.node_unreachable):
                with trio.move_on_after(STOP_WAIT_SECONDS, shield=True):
                    try:
                        if not await node.stop_job(self.record.job_id):  # not seen on the node: ask the Swarm
                            while not await self._task_ended():
                                await trio.sleep(0.02)
                        await node.kill_holder(lease.holder_pid)  # bounded, never raises
                        self.record.halted.set()  # a cancel returns now; the service's removal follows
                    except CumulusError as error:
                        # Only a shortcut: the service removal that follows stops the container anyway (and
                        # with the node unreachable, its lease expires by itself).
                        log.info("%s: stopping on the node failed (%s); Swarm removal will", self.ctx.name, error)

    async def _task_ended(self) -> bool:
        tasks = await self.ctx.swarm.task_states({LABEL_JOB: self.task_key})
        service_id = self.service.id if self.service is not None else None
        return all(task.terminal for task in tasks if service_id is None or task.service_id == service_id)

    async def _package(self) -> bytes:  # from the journal: memory drops it once uploaded
        row = await self.ctx.journal.call(Load(self.record.job_id)) if self.ctx.journal else None
        if row and row.get("package"):
            return bytes(row["package"])
        raise JobStopped(Outcome.failed(FailureReason.LOST, "the job's package is not in the journal any more"))

    # ---- running ----------------------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Run the job once, as a new job: SCHEDULING -> CREATING_PARTITION -> RUNNING -> its end."""
        record, spec, own, ctx = self.record, self.record.spec, self.resources.own, self.ctx
        record.set_state(JobState.SCHEDULING)
        reservation = await own(self._reservation(exact=False), what="reservation", same_task=True)
        record.set_placement(reservation.placement())
        record.set_state(JobState.CREATING_PARTITION)
        node = ctx.connections.get(reservation.node_id, reservation.worker)
        image = await prepare_user_image(ctx, reservation.node_id, spec, record.add_log) if spec.image else None
        restore = await restore_point(ctx)
        self.restored = restore[0] if restore else None
        ahead = self._service_request(reservation, node)  # what the job's container will be, made ahead of it
        taken = await take_warm(ctx, own, node, reservation.node_id, ahead) if warm_eligible(ctx.settings, spec) \
            else None
        metrics.current().job_starts.labels("cold" if taken is None else "warm").inc()
        if taken is None and starts_early(spec):  # Swarm starts it while the partition and the upload are made
            taken = await make_early(ctx, own, node, ahead)
        warm = taken.warm if taken is not None else None
        if taken is not None:  # its container waits (or will), owned now, removed like a job's own
            self.service, self.task_key, self.only_waits = taken.service, taken.warm.warm_id, True
        # The partition and the upload go over the same SSH connection at once; they are still released in the
        # nested order (files, then partition).
        lease, files, *deps = await self.resources.own_together([
            (node.open_partition(device=reservation.device_indexes[0], fraction=reservation.share,
                                 duration=self.duration, job_id=record.job_id, replace_earlier=record.attempt > 1,
                                 from_warm=warm and warm.warm_id), "partition"),
            (node.open_job_files(job_id=record.job_id, package=spec.package or await self._package(),
                                 restore=restore[1] if restore else None, from_warm=warm and warm.warm_id), "files"),
        ] + ([(job_requirements(ctx, node, reservation.node_id), "requirements")] if spec.requirements else []))
        if taken is not None:  # the job's now (renamed, or filled in place): released with its files and partition
            taken.dirs.handed_over = True
        if spec.package:  # uploaded: a retry reads it from the journal again
            record.spec = spec = replace(spec, package=b"")
        record.partition_id = lease.partition_id
        if self.restored is not None:
            record.note_checkpoint(CheckpointNote(self.restored.step, self.restored.size, restored=True),
                                   record.checkpoints)
        self.node, self.files = node, files
        self.copier = await own(open_checkpoint_copy(ctx, files), what="checkpoint copy", same_task=True)
        updates = await own(self._task_watch(), what="task watch", same_task=True)
        request = self._service_request(reservation, node, lease, files)
        if warm is None:
            secret = await own(ctx.swarm.open_secret_env(record.job_id, record.attempt, spec.secret_env),
                               what="secret env", same_task=True) if spec.secret_env else None  # after the service
            request = replace(request, deps_dir=deps[0] if deps else None, secret_env=secret,
                              **({"image": image.reference, "runner_volume": image.runner_volume} if image else {}))
            self.service = await own(ctx.swarm.open_service(request), what="service", same_task=True)
        service = self.service
        record.set_service(service.id, taken.warm.name if taken is not None and not taken.early else "")
        await own(self._stopped_on_its_node(node, lease), what="container stop", same_task=True)
        if taken is not None:
            self.only_waits = False  # from the start message on, the job may run: a stop must stop it
            await start_warm(node, request, reservation.worker, taken, updates)
            record.set_state(JobState.RUNNING)
        with trio.move_on_after(self.duration) as deadline:
            exit_task = await self._follow(service, updates, lease, files)
        if deadline.cancelled_caught:
            raise JobStopped(self.timed_out())
        return await self._conclude(exit_task, files)

    def _service_request(self, reservation: Reservation, node: NodeBackend, lease: Any = None,
                         files: Any = None) -> ServiceRequest:
        """The job's service request (before its partition and files exist: to compare with warm services')."""
        record, settings, spec = self.record, self.ctx.settings, self.record.spec
        return job_service_request(
            settings, spec, job_id=record.job_id, node_id=reservation.node_id,
            device_index=reservation.device_indexes[0], gpu_uuid=reservation.gpu_uuids[0], job_user=node.job_user,
            lease_dir=node.lease_dir(record.job_id), partition_id=lease.partition_id if lease else "pending",
            code_dir=files.code_dir if files else NO_PATH, output_dir=files.output_dir if files else NO_PATH,
            env={**spec.env, "CUMULUS_GPU_FRACTION": repr(reservation.share), "CUMULUS_TRACE_ID": spec.trace_id,
                 "CUMULUS_MAX_PACKAGE_BYTES": str(settings.jobs.max_package_mb * 2**20),
                 **checkpoint_env(settings, self.restored, leases=node.lease_dir(record.job_id) is not None)})

    async def _follow(self, service: Any, updates: trio.MemoryReceiveChannel[TaskState], lease: Any,
                      files: Any) -> TaskState | None:
        """Relay logs, and serve the job's calls on instances, while waiting for the task to end; return its
        terminal state. The attempt fails (its scope is cancelled) if the partition is lost meanwhile. On the
        runner's "finished" line the result is fetched and the job recorded COMPLETED at once; Swarm's report of
        the task's end (a few hundred ms later) still ends this wait, but a container that does not exit within
        ``EXIT_AFTER_FINISH_SECONDS`` of the line (a non-daemon thread left behind) is not waited for: ``None``
        is returned and the teardown stops it."""
        record, copier, job_calls = self.record, self.copier, JobCalls.of_attempt(self, files.output_dir)
        relay = LogRelay(self.ctx.swarm, record, on_end_of_job=self._poll_now, on_calls_ready=job_calls.ready,
                         on_checkpoint=copier.saw if copier is not None else None)
        exit_task: TaskState | None = None
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as waiting:
                nursery.start_soon(relay.run, service.id)
                nursery.start_soon(self._watch_lease, lease)
                nursery.start_soon(self._complete_when_finished, relay.finished, files, waiting)
                if copier is not None:
                    nursery.start_soon(copier.run)
                nursery.start_soon(job_calls.run)
                if self.ctx.calls is not None and self.node is not None:
                    nursery.start_soon(serve_instance, self.node, files.output_dir, self.ctx.calls)
                async for task in updates:
                    if task.service_id != service.id:
                        continue  # an earlier attempt's task, reported late (e.g. by a node that came back)
                    if task.state == "running" or task.terminal:
                        record.set_state(JobState.RUNNING)
                    if task.terminal:
                        exit_task = task
                        self.exited = True
                        break
                await relay.drain()
            nursery.cancel_scope.cancel()
        if exit_task is None and not (waiting.cancelled_caught and record.state is JobState.COMPLETED):
            # It may have run: not retried by default (a retry could run it twice).
            raise JobStopped(Outcome.failed(FailureReason.INFRASTRUCTURE,
                                            "task watch ended before the job's task finished", retry=False))
        return exit_task

    async def _complete_when_finished(self, finished: trio.Event, files: Any, waiting: trio.CancelScope) -> None:
        await finished.wait()
        try:
            envelope = await fetch_result(files, self.ctx.settings)
        except JobStopped as refused:  # what the job left is no result: it fails now, whatever its task's end
            self.fail(refused.outcome)
            return
        except CumulusError:
            return  # the task's end decides, as usual
        if envelope is not None:
            self.record.set_result(envelope)
            self.record.set_state(JobState.COMPLETED)
            waiting.deadline = trio.current_time() + EXIT_AFTER_FINISH_SECONDS

    def _poll_now(self) -> None:
        """The runner wrote its last line: the container's exit follows, so have its task's state read at once."""
        with suppress(ActorDied, trio.WouldBlock):
            self.ctx.watcher.cast_nowait(PollNow())

    async def _watch_lease(self, lease: Any) -> None:
        await lease.lost.wait()
        metrics.current().lease_lost(self.record.placement, lease.lost_cause)
        if lease.lost_cause is LeaseLoss.NODE_UNREACHABLE:
            if self.service is not None:
                self.service.node_unreachable = True  # its removal cannot be confirmed: do not wait for it
            self.fail(Outcome.failed(FailureReason.NODE_LOST, lease.lost_reason or ""))
        else:
            self.fail(Outcome.failed(FailureReason.PARTITION_LOST, lease.lost_reason or ""))

    async def _conclude(self, task: TaskState | None, files: Any) -> Outcome:
        """How a job that ended by itself ended (:func:`~cumulus.actors.result_fetch.conclude`)."""
        asked = functools.partial(pause_was_requested, self.node, files, self.record.job_id)
        return await conclude(self.record, task, files, self.ctx.settings, asked)


__all__ = ["Attempt", "EXIT_AFTER_FINISH_SECONDS", "JobContext", "MAX_RESULT_BYTES", "STOP_WAIT_SECONDS"]

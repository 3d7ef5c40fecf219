"""Re-adoption: the attempt a previous supervisor process started, taken over after a restart while its job
still runs on its worker (:class:`AdoptedAttempt`; the cluster decides to adopt, :class:`~cumulus.actors.job.Start`).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from cumulus.actors.attempt import Attempt
from cumulus.actors.checkpoint_step import open_checkpoint_copy
from cumulus.actors.outcome import JobStopped, Outcome
from cumulus.errors import CumulusError
from cumulus.jobs import FailureReason, JobState
from cumulus.resources.swarm import LABEL_JOB


class AdoptedAttempt(Attempt):
    """An attempt that owns again what a previous supervisor process made for it, and follows it to its end."""

    adopted = True

    async def run(self) -> Outcome:
        """Take over a job that a previous supervisor process started and that still runs on its worker.

        Everything of it that still exists is owned again (so it is torn down in the usual order whatever
        happens). If its partition holder is gone (the lease expired while no supervisor ran), the job is
        concluded from what it left if it had ended by then, and is lost otherwise.
        """
        record, own, ctx = self.record, self.resources.own, self.ctx
        placement = record.placement
        assert placement is not None
        record.add_message(f"re-adopting after a supervisor restart (on {placement.worker})")
        reservation = await own(self._reservation(exact=True), what="reservation", same_task=True)
        node = ctx.connections.get(reservation.node_id, reservation.worker)
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
        if files is not None:  # its checkpoints are copied on, as for a new attempt
            self.copier = await own(open_checkpoint_copy(ctx, files), what="checkpoint copy", same_task=True)
        self.node, self.files = node, files
        if record.spec.secret_env:  # its Swarm secret goes after its service, as for a new attempt
            await own(ctx.swarm.adopt_secret_env(record.job_id), what="secret env", same_task=True)
        try:
            service = self.service = await own(ctx.swarm.adopt_service(record.service_id, record.job_id),
                                               what="service", same_task=True)
            self.task_key = service.job_id  # a warm service's task keeps its warm id
        except CumulusError as error:
            lost = lost or error
        updates = await own(self._task_watch(), what="task watch", same_task=True)
        if files is None or service is None:
            raise JobStopped(Outcome.failed(FailureReason.LOST,
                                            f"could not re-adopt after a supervisor restart: {lost}"))
        if lease is None:
            # Its partition ended while the supervisor was away (the lease expired). If the job had finished by
            # then, its outcome is in its job dir: the job is not lost, only its partition is gone.
            return await self._conclude_unattended(service, files, lost)
        remaining = self.duration - (time.time() - (record.running_at or record.started_at or record.submitted_at))
        with trio.move_on_after(max(remaining, 0)) as deadline:
            exit_task = await self._follow(service, updates, lease, files)
        if deadline.cancelled_caught:
            raise JobStopped(self.timed_out())
        return await self._conclude(exit_task, files)

    async def _conclude_unattended(self, service: Any, files: Any, lost: Exception | None) -> Outcome:
        """How a job ended whose partition lease expired while no supervisor watched it: completed (or failed
        with its own exception) if its task had ended with an outcome in its job dir; otherwise lost (stopped
        by its expired lease), which is retried only if the job itself asked for retries."""
        tasks = await self.ctx.swarm.task_states({LABEL_JOB: self.task_key})
        ended = [t for t in tasks if t.service_id == service.id and t.terminal]
        if ended:
            self.exited = True
            outcome = await self._conclude(ended[0], files)
            if outcome.state is JobState.COMPLETED or outcome.failure is FailureReason.USER_EXCEPTION:
                self.record.add_message("re-adopted after a supervisor restart: it had ended meanwhile")
                return outcome
        raise JobStopped(Outcome.failed(FailureReason.LOST, f"could not re-adopt after a supervisor restart: {lost}"))


__all__ = ["AdoptedAttempt"]

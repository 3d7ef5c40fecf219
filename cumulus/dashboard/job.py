"""The job page: its state, the timeline of its phases (from its journal history and record), placement, attempts,
failure reason, teardown report and GPU-seconds; its Pause or Resume and Cancel (the owner's or an admin's, with the
CSRF token); and the fragment the page reloads when the job's state changes. Its live log comes from :mod:`cumulus.dashboard.events`.

Timeline times: queued is the submission; placed, partition and running are the history's placement and state
events of the current attempt; the upload goes with the partition (one SSH step, both at once); the service's
creation has no history event of its own (its id is in the record), so it shows no time; teardown is the time its
report was written. GPU-seconds are the usage records of the job's ended attempts (``api.usage``) plus, while it
runs, the current attempt so far, counted by the same rule (:func:`cumulus.usage.attempt_usage`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from cumulus.dashboard.auth import SignedIn, check_csrf, read_form
from cumulus.dashboard.base import View, job_id_of, not_yours
from cumulus.dashboard.render import page
from cumulus.errors import NotFound, WrongJobState
from cumulus.history import HistoryEvent
from cumulus.identity import Caller
from cumulus.jobs import JobRecord, JobState
from cumulus.usage import attempt_usage

if TYPE_CHECKING:
    from cumulus.app import SupervisorApi

PHASES = ("queued", "placed", "partition", "upload", "service", "running", "teardown")


@dataclass(frozen=True)
class Phase:
    name: str
    at: float | None
    note: str
    done: bool


def _state_at(events: Sequence[HistoryEvent], state: str) -> HistoryEvent | None:
    return next((e for e in events if e.kind == "state" and e.state == state), None)


def timeline(record: JobRecord, history: Sequence[HistoryEvent]) -> list[Phase]:
    """The phases of the job's current attempt, each with its time where the history has one."""
    current = [e for e in history if e.attempt == record.attempt] or list(history)
    placement = record.placement
    placed = next((e for e in reversed(current) if e.kind == "placement"), None)
    partition = _state_at(current, JobState.CREATING_PARTITION.value)
    running = _state_at(current, JobState.RUNNING.value)
    torn = next((e for e in reversed(history) if e.kind == "teardown"), None)
    queued = _state_at(history, JobState.QUEUED.value)
    reached_partition = partition is not None or bool(record.partition_id)
    reached_running = running is not None or record.running_at is not None
    service = next((e for e in reversed(current) if e.kind == "service"), None)
    service_note = (f"service {record.service_id}" if record.service_id
                    else "not created" if record.state.terminal else "not yet")
    teardown = record.teardown
    teardown_note = ("not yet" if teardown is None else "clean" if teardown.clean
                     else f"{len(teardown.leaked)} leaked")
    return [
        Phase("queued", queued.at if queued else record.submitted_at,
              (queued.reason if queued and queued.reason else "submitted"), True),
        Phase("placed", placed.at if placed else None,
              placed.text if placed else (f"on {placement.worker}" if placement else "not placed"),
              placed is not None or placement is not None),
        Phase("partition", partition.at if partition else None,
              f"partition {record.partition_id}" if record.partition_id else "—", reached_partition),
        Phase("upload", partition.at if partition else None, "the job's files, sent with the partition",
              reached_partition),
        Phase("service", service.at if service else None, service_note, bool(record.service_id) or reached_running),
        Phase("running", running.at if running else record.running_at, f"attempt {record.attempt}",
              reached_running),
        Phase("teardown", torn.at if torn else None, teardown_note, teardown is not None),
    ]


async def gpu_seconds(api: SupervisorApi, record: JobRecord, caller: Caller) -> tuple[float, float]:
    """(GPU-seconds, device-seconds) of the job: its ended attempts' usage records, and the running one so far."""
    report = await api.usage(since=record.submitted_at, by="job", caller=caller)
    row = next((r for r in report.rows if r.key == record.job_id), None)
    gpu, device = (row.gpu_seconds, row.device_seconds) if row is not None else (0.0, 0.0)
    if record.state is JobState.RUNNING:  # its record is written when the attempt ends
        running = attempt_usage(record, started_at=record.running_at, ended_at=time.time(), queued_at=None)
        if running is not None:
            gpu, device = gpu + running.gpu_seconds, device + running.device_seconds
    return gpu, device


class JobPages(View):
    async def _details(self, signed: SignedIn, job_id: str) -> dict[str, object] | None:
        try:
            record, history = await self.api.describe(job_id, caller=signed.caller)
        except NotFound:
            return None
        gpu, device = await gpu_seconds(self.api, record, signed.caller)
        failed = record.state in (JobState.FAILED, JobState.CANCELLED)
        return self.context(signed, "jobs", job=record, history=history, timeline=timeline(record, history),
                            gpu_seconds=gpu, device_seconds=device, failure=record.reason if failed else "",
                            max_attempts=1 + record.spec.retries, terminal=record.state.terminal)

    async def page(self, request: Request) -> Response:
        signed = self.sessions.require(request)
        job_id = job_id_of(request)
        details = await self._details(signed, job_id) if job_id else None
        if details is None:
            return not_yours(job_id or "with that id", signed)
        return page("job.html", details)

    async def fragment(self, request: Request) -> Response:
        signed = self.sessions.require(request)
        job_id = job_id_of(request)
        details = await self._details(signed, job_id) if job_id else None
        if details is None:
            return not_yours(job_id or "with that id", signed)
        return page("job_details.html", details)

    async def cancel(self, request: Request) -> Response:
        return await self._act(request, lambda job_id, caller: self.api.cancel(job_id, caller=caller))

    async def pause(self, request: Request) -> Response:
        """Ask the job to pause and show its page at once: it turns PAUSED there (live) when it has returned."""
        return await self._act(request, lambda job_id, caller: self.api.pause(job_id, caller=caller, wait=False))

    async def resume(self, request: Request) -> Response:
        return await self._act(request, lambda job_id, caller: self.api.resume(job_id, caller=caller))

    async def _act(self, request: Request, action: Callable[[str, Caller], Awaitable[object]]) -> Response:
        """A button of the job page: the owner's or an admin's (the API refuses anyone else), with the CSRF token;
        then back to the job's page. A job no longer in a state for it (it ended meanwhile) just shows its page."""
        signed = self.sessions.require(request)
        check_csrf(request, signed, await read_form(request))
        job_id = job_id_of(request)
        try:
            if not job_id:
                raise NotFound(job_id)
            await action(job_id, signed.caller)
        except NotFound:
            return not_yours(job_id or "with that id", signed)
        except WrongJobState:
            pass
        return RedirectResponse(f"/jobs/{quote(job_id, safe='')}", status_code=303)


__all__ = ["JobPages", "PHASES", "Phase", "gpu_seconds", "timeline"]

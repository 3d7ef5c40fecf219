"""Wire types <-> the supervisor's Python types (:mod:`cumulus.jobs`).

Everything a client sends is checked before the supervisor sees it: :func:`spec_from_submission` (re-exported
from :mod:`cumulus.rpc.submission`, where the validation of job submissions lives) turns a ``JobSubmission`` into
a :class:`~cumulus.jobs.JobSpec` or raises :class:`~cumulus.errors.InvalidRequest`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

from google.protobuf.timestamp_pb2 import Timestamp

from cumulus.errors import InvalidRequest
from cumulus.history import HistoryEvent
from cumulus.identity import TokenInfo
from cumulus.devices import WorkerInfo
from cumulus.jobs import JobEvent, JobRecord, JobState, TeardownReport
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from cumulus.rpc.submission import spec_from_submission as spec_from_submission  # re-exported (the servicer's)
from cumulus.usage import UsageReport

# ---- Python -> wire ------------------------------------------------------------------------------------------


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def state_to_pb(state: JobState) -> int:
    return pb.JobState.Value(state.value)


def teardown_to_pb(report: TeardownReport | None) -> pb.TeardownReport | None:
    if report is None:
        return None
    return pb.TeardownReport(released=list(report.released), leaked=list(report.leaked))


def event_to_pb(event: JobEvent) -> pb.JobEvent:
    msg = pb.JobEvent(job_id=event.job_id, time=timestamp(event.time), reason=event.reason,
                      queue_position=event.queue_position, attempt=event.attempt)
    if event.state is not None:
        msg.state = state_to_pb(event.state)
    elif event.log is not None:
        msg.log.CopyFrom(pb.LogLine(stream=event.log[0], text=event.log[1]))
    elif event.result is not None:
        msg.result.CopyFrom(pb.JobResult(envelope=event.result))
    elif event.message is not None:
        msg.message = event.message
    elif event.checkpoint is not None:
        msg.checkpoint.CopyFrom(pb.Checkpoint(step=event.checkpoint.step, size_bytes=event.checkpoint.size_bytes,
                                              restored=event.checkpoint.restored))
    return msg


def events_to_pb(events: list[JobEvent], *, max_lines: int = 1000) -> list[pb.JobEvent]:
    """``events`` as messages, in order; runs of consecutive log lines become ``logs`` batches of at most
    ``max_lines`` lines (a lone line stays a ``log`` event)."""
    messages: list[pb.JobEvent] = []
    run: list[JobEvent] = []

    def flush() -> None:
        for start in range(0, len(run), max_lines):
            chunk = run[start:start + max_lines]
            if len(chunk) == 1:
                messages.append(event_to_pb(chunk[0]))
                continue
            last = chunk[-1]
            msg = pb.JobEvent(job_id=last.job_id, time=timestamp(last.time), attempt=last.attempt)
            msg.logs.lines.extend(pb.LogLine(stream=e.log[0], text=e.log[1]) for e in chunk)
            msg.logs.time_unix_nanos.extend(int(e.time * 1e9) for e in chunk)
            messages.append(msg)
        run.clear()

    for event in events:
        if event.log is not None:
            run.append(event)
            continue
        flush()
        messages.append(event_to_pb(event))
    flush()
    return messages


def message_event(job_id: str, text: str, when: float) -> pb.JobEvent:
    return pb.JobEvent(job_id=job_id, time=timestamp(when), message=text)


def status_to_pb(record: JobRecord) -> pb.JobStatus:
    placement = record.placement
    msg = pb.JobStatus(
        job_id=record.job_id,
        name=record.spec.name,
        state=state_to_pb(record.state),
        reason=record.reason,
        worker=placement.worker if placement else "",
        device_index=placement.device_index if placement else -1,
        gpu=record.spec.gpu,
        partition_id=record.partition_id,
        service_id=record.service_id,
        submitted_at=timestamp(record.submitted_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        attempt=record.attempt,
        has_result=record.result is not None,
        queue_position=record.queue_position,
        owner=record.spec.owner,
        trace_id=record.spec.trace_id,
        python=record.spec.python,
        image=record.spec.image,
        checkpoint_step=-1 if record.checkpoint_step is None else record.checkpoint_step,
        checkpoints=record.checkpoints,
        ran_seconds=record.ran_seconds,
    )
    if record.spec.instance:
        calls = record.calls
        msg.instance, msg.calls, msg.failed_calls = True, calls.calls, calls.failed
        msg.methods.extend(pb.MethodCalls(method=name, calls=m.calls, failed=m.failed, seconds=m.seconds)
                           for name, m in sorted(calls.methods.items()))
    if record.teardown is not None:
        msg.teardown.CopyFrom(teardown_to_pb(record.teardown))
    return msg


def history_event_to_pb(event: HistoryEvent) -> pb.JobEvent:
    """One history entry as a JobEvent: ``detail`` is its human line; its kind picks the oneof (a ``queue``
    change is a ``message`` with ``queue_position``)."""
    data = event.data
    msg = pb.JobEvent(job_id=event.job_id, time=timestamp(event.at), reason=event.reason, attempt=event.attempt,
                      detail=event.text)
    if event.kind == "state" and event.state in JobState.__members__:
        msg.state = state_to_pb(JobState(event.state))
    elif event.kind == "placement":
        msg.placement.CopyFrom(pb.Placement(worker=data.get("worker", ""), node_id=data.get("node_id", ""),
                                            device_indexes=list(data.get("device_indexes", ())),
                                            share=data.get("share", 0.0)))
    elif event.kind == "retry":
        msg.retry.CopyFrom(pb.Retry(failed_attempt=data.get("failed_attempt", 0),
                                    backoff_seconds=data.get("backoff_seconds", 0.0)))
    elif event.kind == "checkpoint":
        msg.checkpoint.CopyFrom(pb.Checkpoint(step=data.get("step", 0), size_bytes=data.get("size_bytes", 0),
                                              restored=data.get("restored", False)))
    elif event.kind == "teardown":
        msg.teardown.CopyFrom(pb.TeardownReport(released=list(data.get("released", ())),
                                                leaked=list(data.get("leaked", ()))))
    else:  # message, queue, and any kind this version does not know
        msg.message = event.text
        msg.queue_position = data.get("position", 0) if event.kind == "queue" else 0
    return msg


def description_to_pb(record: JobRecord, events: list[HistoryEvent]) -> pb.JobDescription:
    return pb.JobDescription(status=status_to_pb(record), events=[history_event_to_pb(e) for e in events])


def worker_to_pb(info: WorkerInfo) -> pb.Worker:
    return pb.Worker(
        node_id=info.node_id,
        hostname=info.hostname,
        ssh_address=info.ssh_address,
        state=info.state,
        healthy=info.healthy,
        running_jobs=info.running_jobs,
        reason=info.reason,
        availability=info.availability,
        labels=dict(info.labels),
        devices=[
            pb.Device(index=d.index, name=d.name, kind=d.kind, is_gpu=d.is_gpu, memory_bytes=max(0, d.memory_bytes),
                      uuid=d.uuid or "", used_share=d.used_share, free_share=d.free_share)
            for d in info.devices
        ],
    )


def token_to_pb(info: TokenInfo) -> pb.Token:
    limits = info.limits
    return pb.Token(name=info.name, admin=info.admin, max_running=limits.max_running, max_queued=limits.max_queued,
                    max_gpu=limits.max_gpu, rate=limits.rate, created_at=timestamp(info.created_at),
                    revoked=info.revoked_at is not None)


# ---- usage ---------------------------------------------------------------------------------------------------------

USAGE_GROUPS = {pb.USAGE_GROUP_UNSPECIFIED: "user", pb.BY_USER: "user", pb.BY_JOB: "job", pb.BY_WORKER: "worker"}
SINCE_SLACK_SECONDS = 300.0  # a client clock a little ahead is not a mistake; a "since" far in the future is


def usage_query(request: pb.GetUsageRequest, now: float | None = None) -> tuple[float | None, str]:
    """``(since, by)`` of a GetUsage request (since None: unset); InvalidRequest says what to fix."""
    by = USAGE_GROUPS.get(request.by)
    if by is None:
        raise InvalidRequest(f"by={request.by} is not a UsageGroup: use BY_USER, BY_JOB or BY_WORKER")
    if not request.HasField("since"):
        return None, by
    if not 0 <= request.since.nanos < 1_000_000_000:
        raise InvalidRequest(f"since has nanos={request.since.nanos}: a Timestamp's nanos are 0..999999999")
    since = request.since.seconds + request.since.nanos / 1e9
    now = time.time() if now is None else now
    if since > now + SINCE_SLACK_SECONDS:
        raise InvalidRequest(f"since is {since - now:.0f} s in the future: give a time in the past, or leave it "
                             "unset for everything the journal keeps")
    return since, by


def usage_to_pb(report: UsageReport) -> pb.GetUsageResponse:
    reply = pb.GetUsageResponse(rows=[pb.UsageRow(**asdict(row)) for row in report.rows],
                                total=pb.UsageRow(**asdict(report.total)), currency=report.currency)
    if report.since is not None:
        reply.since.CopyFrom(timestamp(report.since))
    return reply

"""Wire types <-> the supervisor's Python types (:mod:`cumulus.jobs`), and the validation of job submissions.

Everything a client sends is checked here before the supervisor sees it: :func:`spec_from_submission` turns a
``JobSubmission`` into a :class:`~cumulus.jobs.JobSpec` or raises :class:`~cumulus.errors.InvalidRequest` whose
message names the field, what was sent and what is allowed (the servicer answers ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from cumulus.client.packaging import validate_package
from cumulus.errors import InvalidRequest
from cumulus.history import HistoryEvent
from cumulus.jobformat import check_gpu_share
from cumulus.jobs import JobEvent, JobRecord, JobSpec, JobState, TeardownReport, WorkerInfo
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

MAX_NAME_LEN = 128
MAX_IDEMPOTENCY_KEY_LEN = 128
MAX_ENV_VARS = 256
MAX_ENV_VALUE_LEN = 32 * 1024
PRIORITY_RANGE = (-1000, 1000)
MAX_RETRIES = 10
MAX_QUEUE_SECONDS = 7 * 86400
MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_LEN = 500
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MiB = 1024 * 1024

# ---- submission -> JobSpec ------------------------------------------------------------------------------------


def spec_from_submission(request: pb.JobSubmission, settings: Any) -> JobSpec:
    """Validate ``request`` against ``settings`` (a :class:`cumulus.config.Settings`) and build the JobSpec.

    Raises InvalidRequest (or its subclass PackageTooLarge) naming the first problem found.
    """
    jobs = settings.jobs
    gpu = check_gpu_share(request.gpu)  # 0 (unset) is refused too: the message lists the allowed values
    duration = check_duration(request.duration_seconds, default=jobs.default_duration, maximum=jobs.max_duration)
    name = check_text("name", request.name, MAX_NAME_LEN)
    key = check_text("idempotency_key", request.idempotency_key, MAX_IDEMPOTENCY_KEY_LEN)
    _check_range("priority", request.priority, *PRIORITY_RANGE)
    _check_range("retries", request.retries, 0, MAX_RETRIES)
    _check_range("max_queue_seconds", request.max_queue_seconds, 0, MAX_QUEUE_SECONDS,
                 hint="0 waits as long as the queue allows")
    env = check_env(dict(request.env))
    requirements = check_requirements(list(request.requirements))
    info = validate_package(request.code_package, jobs.max_package_mb * MiB)
    if requirements and list(requirements) != list(info.requirements):
        raise InvalidRequest(
            f"requirements {list(requirements)} differ from the package's requirements.txt {info.requirements}; "
            f"the worker installs the package's list: build the package with the same requirements "
            f"(cumulus.client.packaging.build_package(..., requirements=...)) or leave the field empty")
    if not requirements:
        requirements = check_requirements(list(info.requirements), where="the package's requirements.txt")
    return JobSpec(
        package=bytes(request.code_package),
        gpu=gpu,
        duration=duration,
        requirements=tuple(requirements),
        env=env,
        name=name,
        idempotency_key=key,
        retries=request.retries,
        retry_exceptions=request.retry_exceptions,
        priority=request.priority,
        max_queue_seconds=request.max_queue_seconds,
    )


def check_duration(seconds: int, *, default: int, maximum: int) -> int:
    if seconds == 0:
        return default
    if not 1 <= seconds <= maximum:
        raise InvalidRequest(f"duration_seconds={seconds!r} is not allowed; use 1..{maximum} seconds "
                             f"(0 means the default, {default} s)")
    return seconds


def check_text(field: str, value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise InvalidRequest(f"{field} is {len(value)} characters long; at most {max_len} are allowed")
    bad = [c for c in value if unicodedata.category(c).startswith("C")]
    if bad:
        raise InvalidRequest(f"{field} {value[:40]!r} contains control character {bad[0]!r}; "
                             f"use printable characters only")
    return value


def _check_range(field: str, value: int, low: int, high: int, *, hint: str = "") -> None:
    if not low <= value <= high:
        extra = f" ({hint})" if hint else ""
        raise InvalidRequest(f"{field}={value} is out of range; allowed {low}..{high}{extra}")


def check_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_VARS:
        raise InvalidRequest(f"env has {len(env)} variables; at most {MAX_ENV_VARS} are allowed")
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise InvalidRequest(f"env name {key!r} is not a valid variable name: use letters, digits and '_', "
                                 f"not starting with a digit ([A-Za-z_][A-Za-z0-9_]*)")
        if key.upper().startswith("CUMULUS_"):
            raise InvalidRequest(f"env name {key!r}: the CUMULUS_ prefix is reserved for Cumulus; rename it")
        if "\0" in value:
            raise InvalidRequest(f"env value of {key!r} contains a NUL byte")
        if len(value) > MAX_ENV_VALUE_LEN:
            raise InvalidRequest(f"env value of {key!r} is {len(value)} characters; at most {MAX_ENV_VALUE_LEN}")
    return env


def check_requirements(requirements: Iterable[str], *, where: str = "requirements") -> list[str]:
    """Each item must be one PEP 508 requirement (``numpy>=1.26``, ``torch[cuda]==2.3.*; python_version>='3.10'``,
    ``pkg @ https://host/pkg.whl``). Refused: pip options (``-e``, ``--index-url``, ``-r``), bare URLs or paths,
    ``file:`` URLs (they name the client's disk), line breaks, empty items."""
    requirements = list(requirements)
    if len(requirements) > MAX_REQUIREMENTS:
        raise InvalidRequest(f"{where}: {len(requirements)} requirements; at most {MAX_REQUIREMENTS} are allowed")
    out = []
    for item in requirements:
        out.append(_check_requirement(item, where))
    return out


def _check_requirement(item: str, where: str) -> str:
    example = "a PEP 508 requirement such as 'numpy>=1.26', 'requests[socks]==2.32.*' or 'pkg @ https://host/pkg.whl'"
    text = item.strip()
    if not text:
        raise InvalidRequest(f"{where}: empty requirement; remove it")
    if len(text) > MAX_REQUIREMENT_LEN:
        raise InvalidRequest(f"{where}: requirement {text[:40]!r}... is longer than {MAX_REQUIREMENT_LEN} characters")
    if any(c in text for c in "\r\n\0"):
        raise InvalidRequest(f"{where}: requirement {text[:60]!r} contains a line break or NUL; "
                             f"give one requirement per item")
    if text.startswith("-"):
        raise InvalidRequest(f"{where}: {text!r} is a pip option; options are not allowed, give {example}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or text.startswith((".", "/", "~")):
        raise InvalidRequest(f"{where}: {text!r} is a URL or a path, not a requirement; give {example} "
                             f"(a package that only exists as a URL: 'name @ https://...')")
    req = _parse(text, where, example)
    url = getattr(req, "url", None)
    if url:
        scheme = url.split(":", 1)[0].lower()
        if scheme not in ("https", "http", "git+https"):
            raise InvalidRequest(f"{where}: {text!r} points at {scheme}: which a worker cannot reach; "
                                 f"publish the package or use an https:// URL")
    return text


def _parse(text: str, where: str, example: str) -> Any:
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is in every venv we ship, keep a strict fallback
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?\s*"
                            r"((~=|==|!=|<=|>=|<|>|===)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*", text):
            raise InvalidRequest(f"{where}: {text!r} is not a valid requirement; give {example}") from None
        return None
    try:
        return Requirement(text)
    except InvalidRequirement as error:
        first = str(error).splitlines()[0]
        raise InvalidRequest(f"{where}: {text!r} is not a valid requirement ({first}); give {example}") from None


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
    )
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
        devices=[
            pb.Device(index=d.index, name=d.name, kind=d.kind, is_gpu=d.is_gpu, memory_bytes=max(0, d.memory_bytes),
                      uuid=d.uuid or "", used_share=d.used_share, free_share=d.free_share)
            for d in info.devices
        ],
    )

"""Plain Python views of what the supervisor reports (built from the wire types; no gRPC needed to use them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cumulus.errors import CumulusError as CumulusError  # re-exported
from cumulus.errors import JobCancelled as JobCancelled
from cumulus.errors import JobFailed as JobFailed
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")


def _time(ts: Any) -> float | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return float(ts.seconds + ts.nanos / 1e9)


@dataclass(frozen=True)
class MethodCalls:
    """A class instance's calls of one method that returned (a value or the method's exception)."""

    method: str
    calls: int = 0
    failed: int = 0
    """Of ``calls``, those whose method raised."""
    seconds: float = 0.0
    """Their time, summed (from the supervisor sending each to the instance to its reply)."""


@dataclass(frozen=True)
class JobInfo:
    """One job's status (``cumulus status``, :meth:`JobRef.status`). Times are Unix seconds or None."""

    job_id: str
    state: str
    name: str = ""
    reason: str = ""
    worker: str = ""
    device_index: int = -1
    gpu: float = 0.0
    partition_id: str = ""
    service_id: str = ""
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    has_result: bool = False
    queue_position: int = 0
    released: tuple[str, ...] = ()
    leaked: tuple[str, ...] = ()
    owner: str = ""
    """The name of the token that submitted the job ("" on a supervisor without tokens)."""
    trace_id: str = ""
    """The W3C trace id of the submission (32 hex digits); the job sees it as ``CUMULUS_TRACE_ID``."""
    python: str = ""
    """The client's Python minor version (the job runs on the worker image for it)."""
    image: str = ""
    """The user image the job runs in ("" = the worker image)."""
    checkpoint_step: int | None = None
    """The step of its newest checkpoint in the supervisor's store (None: none)."""
    checkpoints: int = 0
    """How many of its checkpoints the store keeps."""
    ran_seconds: float = 0.0
    """How long its paused attempts ran (a resumed attempt gets its duration less this)."""
    instance: bool = False
    """A class instance (``@cumulus.remote`` on a class) serving method calls, not a function's job."""
    calls: int = 0
    """An instance: its method calls that returned (a value or the method's exception)."""
    failed_calls: int = 0
    """An instance: of ``calls``, those whose method raised."""
    methods: tuple[MethodCalls, ...] = ()
    """An instance: its calls per method."""

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_pb(cls, msg: pb.JobStatus) -> JobInfo:
        return cls(
            job_id=msg.job_id, state=pb.JobState.Name(msg.state), name=msg.name, reason=msg.reason,
            worker=msg.worker, device_index=msg.device_index, gpu=msg.gpu, partition_id=msg.partition_id,
            service_id=msg.service_id, submitted_at=_time(msg.submitted_at), started_at=_time(msg.started_at),
            finished_at=_time(msg.finished_at), attempt=msg.attempt, has_result=msg.has_result,
            queue_position=msg.queue_position, released=tuple(msg.teardown.released),
            leaked=tuple(msg.teardown.leaked), owner=msg.owner, trace_id=msg.trace_id, python=msg.python,
            image=msg.image, checkpoint_step=None if msg.checkpoint_step < 0 else msg.checkpoint_step,
            checkpoints=msg.checkpoints, ran_seconds=msg.ran_seconds, instance=msg.instance, calls=msg.calls,
            failed_calls=msg.failed_calls,
            methods=tuple(MethodCalls(m.method, m.calls, m.failed, m.seconds) for m in msg.methods),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["released"], data["leaked"] = list(self.released), list(self.leaked)
        data["methods"] = [asdict(m) for m in self.methods]
        return data


@dataclass(frozen=True)
class PauseResult:
    """What :meth:`JobRef.pause` / ``cumulus pause`` learnt: returned once the job is PAUSED (or has ended: it
    finished before it paused)."""

    job_id: str
    was_running: bool
    state: str
    status: JobInfo

    @classmethod
    def from_pb(cls, msg: pb.PauseJobResponse) -> PauseResult:
        info = JobInfo.from_pb(msg.status)
        return cls(job_id=info.job_id, was_running=msg.was_running, state=info.state, status=info)


@dataclass(frozen=True)
class CancelResult:
    """What :meth:`JobRef.cancel` / ``cumulus cancel`` learnt: returned once the job's resources are torn down."""

    job_id: str
    was_running: bool
    state: str
    released: tuple[str, ...] = ()
    leaked: tuple[str, ...] = ()
    status: JobInfo | None = None

    @property
    def clean(self) -> bool:
        return not self.leaked

    @classmethod
    def from_pb(cls, msg: pb.CancelJobResponse) -> CancelResult:
        info = JobInfo.from_pb(msg.status)
        return cls(job_id=info.job_id, was_running=msg.was_running, state=info.state,
                   released=tuple(msg.teardown.released), leaked=tuple(msg.teardown.leaked), status=info)


@dataclass(frozen=True)
class DeviceStatus:
    index: int
    name: str
    kind: str
    is_gpu: bool
    memory_bytes: int
    uuid: str
    used_share: float
    free_share: float


@dataclass(frozen=True)
class WorkerStatus:
    node_id: str
    hostname: str
    ssh_address: str
    state: str
    healthy: bool
    running_jobs: int = 0
    reason: str = ""
    devices: tuple[DeviceStatus, ...] = field(default=())
    availability: str = "active"  # "active", "draining", "drained" (`cumulus worker drain` / `activate`)
    labels: dict[str, str] = field(default_factory=dict, hash=False)  # given at join (`--labels k=v`)

    @classmethod
    def from_pb(cls, msg: pb.Worker) -> WorkerStatus:
        return cls(
            node_id=msg.node_id, hostname=msg.hostname, ssh_address=msg.ssh_address, state=msg.state,
            healthy=msg.healthy, running_jobs=msg.running_jobs, reason=msg.reason,
            devices=tuple(DeviceStatus(d.index, d.name, d.kind, d.is_gpu, d.memory_bytes, d.uuid, d.used_share,
                                       d.free_share) for d in msg.devices),
            availability=msg.availability or "active", labels=dict(sorted(msg.labels.items())),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = [asdict(d) for d in self.devices]
        return data


@dataclass(frozen=True)
class JobUpdate:
    """One event of a job as a client sees it (``kind`` is "state", "log", "result", "message", "checkpoint";
    a checkpoint's ``text`` says its step)."""

    job_id: str
    time: float | None
    kind: str
    state: str = ""
    reason: str = ""
    stream: str = ""
    text: str = ""
    queue_position: int = 0
    attempt: int = 0

    @classmethod
    def all_from_pb(cls, ev: pb.JobEvent) -> list[JobUpdate]:
        """The updates one message carries: a ``logs`` batch is one "log" update per line, others one update."""
        if ev.WhichOneof("kind") != "logs":
            return [cls.from_pb(ev)]
        return [cls(job_id=ev.job_id, time=ns / 1e9, kind="log", stream=line.stream, text=line.text,
                    attempt=ev.attempt) for line, ns in zip(ev.logs.lines, ev.logs.time_unix_nanos)]

    @classmethod
    def from_pb(cls, ev: pb.JobEvent) -> JobUpdate:
        kind = ev.WhichOneof("kind") or "message"
        return cls(
            job_id=ev.job_id, time=_time(ev.time), kind=kind,
            state=pb.JobState.Name(ev.state) if kind == "state" else "",
            reason=ev.reason, stream=ev.log.stream if kind == "log" else "",
            text=ev.log.text if kind == "log" else (ev.message if kind == "message" else _checkpoint_text(ev)),
            queue_position=ev.queue_position, attempt=ev.attempt,
        )


def _checkpoint_text(ev: pb.JobEvent) -> str:
    if ev.WhichOneof("kind") != "checkpoint":
        return ""
    point = ev.checkpoint
    if point.restored:
        return f"attempt {ev.attempt} starts from the checkpoint of step {point.step}"
    return f"checkpoint of step {point.step} saved ({point.size_bytes} bytes)"


@dataclass(frozen=True)
class JobHistoryEvent:
    """One entry of a job's history (``cumulus describe``): ``kind`` is "state", "message", "placement", "retry",
    "checkpoint" or "teardown"; ``text`` is one human line; ``state`` is the state's name for kind "state", else "";
    ``at`` is Unix seconds."""

    at: float
    kind: str
    text: str
    state: str = ""
    reason: str = ""
    attempt: int = 0

    @classmethod
    def from_pb(cls, ev: pb.JobEvent) -> JobHistoryEvent:
        kind = ev.WhichOneof("kind")
        kind = kind if kind in ("state", "placement", "retry", "teardown", "checkpoint") else "message"
        return cls(at=_time(ev.time) or 0.0, kind=kind, text=ev.detail or ev.message,
                   state=pb.JobState.Name(ev.state) if kind == "state" else "", reason=ev.reason, attempt=ev.attempt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobDescription:
    """A job's status and its history, oldest first (:meth:`CumulusClient.describe`)."""

    info: JobInfo
    events: list[JobHistoryEvent] = field(default_factory=list)

    @classmethod
    def from_pb(cls, msg: pb.JobDescription) -> JobDescription:
        return cls(info=JobInfo.from_pb(msg.status), events=[JobHistoryEvent.from_pb(e) for e in msg.events])

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info.to_dict(), "events": [e.to_dict() for e in self.events]}

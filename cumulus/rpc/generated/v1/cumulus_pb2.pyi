import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    SCHEDULING: _ClassVar[JobState]
    CREATING_PARTITION: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    COMPLETED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
    PAUSED: _ClassVar[JobState]

class CallEnd(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_END_UNSPECIFIED: _ClassVar[CallEnd]
    CALL_RETURNED: _ClassVar[CallEnd]
    CALL_INSTANCE_DIED: _ClassVar[CallEnd]
    CALL_CANCELLED: _ClassVar[CallEnd]
    CALL_REFUSED: _ClassVar[CallEnd]

class UsageGroup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_GROUP_UNSPECIFIED: _ClassVar[UsageGroup]
    BY_USER: _ClassVar[UsageGroup]
    BY_JOB: _ClassVar[UsageGroup]
    BY_WORKER: _ClassVar[UsageGroup]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
SCHEDULING: JobState
CREATING_PARTITION: JobState
RUNNING: JobState
COMPLETED: JobState
FAILED: JobState
CANCELLED: JobState
PAUSED: JobState
CALL_END_UNSPECIFIED: CallEnd
CALL_RETURNED: CallEnd
CALL_INSTANCE_DIED: CallEnd
CALL_CANCELLED: CallEnd
CALL_REFUSED: CallEnd
USAGE_GROUP_UNSPECIFIED: UsageGroup
BY_USER: UsageGroup
BY_JOB: UsageGroup
BY_WORKER: UsageGroup

class JobSubmission(_message.Message):
    __slots__ = ("code_package", "requirements", "gpu", "duration_seconds", "env", "idempotency_key", "name", "retries", "retry_exceptions", "priority", "max_queue_seconds", "memory_bytes", "cpus", "network", "secret_env", "image", "index_url", "resume_on_timeout", "instance", "max_restarts")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_PACKAGE_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SECRET_ENV_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    code_package: bytes
    requirements: _containers.RepeatedScalarFieldContainer[str]
    gpu: float
    duration_seconds: int
    env: _containers.ScalarMap[str, str]
    idempotency_key: str
    name: str
    retries: int
    retry_exceptions: bool
    priority: int
    max_queue_seconds: int
    memory_bytes: int
    cpus: float
    network: str
    secret_env: _containers.ScalarMap[str, str]
    image: str
    index_url: str
    resume_on_timeout: bool
    instance: bool
    max_restarts: int
    def __init__(self, code_package: _Optional[bytes] = ..., requirements: _Optional[_Iterable[str]] = ..., gpu: _Optional[float] = ..., duration_seconds: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ..., name: _Optional[str] = ..., retries: _Optional[int] = ..., retry_exceptions: _Optional[bool] = ..., priority: _Optional[int] = ..., max_queue_seconds: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., network: _Optional[str] = ..., secret_env: _Optional[_Mapping[str, str]] = ..., image: _Optional[str] = ..., index_url: _Optional[str] = ..., resume_on_timeout: _Optional[bool] = ..., instance: _Optional[bool] = ..., max_restarts: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: str
    text: str
    def __init__(self, stream: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("lines", "time_unix_nanos")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    time_unix_nanos: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., time_unix_nanos: _Optional[_Iterable[int]] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class TeardownReport(_message.Message):
    __slots__ = ("released", "leaked")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    LEAKED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedScalarFieldContainer[str]
    leaked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, released: _Optional[_Iterable[str]] = ..., leaked: _Optional[_Iterable[str]] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("worker", "node_id", "device_indexes", "share")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    worker: str
    node_id: str
    device_indexes: _containers.RepeatedScalarFieldContainer[int]
    share: float
    def __init__(self, worker: _Optional[str] = ..., node_id: _Optional[str] = ..., device_indexes: _Optional[_Iterable[int]] = ..., share: _Optional[float] = ...) -> None: ...

class Retry(_message.Message):
    __slots__ = ("failed_attempt", "backoff_seconds")
    FAILED_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_SECONDS_FIELD_NUMBER: _ClassVar[int]
    failed_attempt: int
    backoff_seconds: float
    def __init__(self, failed_attempt: _Optional[int] = ..., backoff_seconds: _Optional[float] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "size_bytes", "restored")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    step: int
    size_bytes: int
    restored: bool
    def __init__(self, step: _Optional[int] = ..., size_bytes: _Optional[int] = ..., restored: _Optional[bool] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "time", "state", "log", "result", "message", "logs", "teardown", "placement", "retry", "checkpoint", "reason", "queue_position", "attempt", "detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    time: _timestamp_pb2.Timestamp
    state: JobState
    log: LogLine
    result: JobResult
    message: str
    logs: LogBatch
    teardown: TeardownReport
    placement: Placement
    retry: Retry
    checkpoint: Checkpoint
    reason: str
    queue_position: int
    attempt: int
    detail: str
    def __init__(self, job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., message: _Optional[str] = ..., logs: _Optional[_Union[LogBatch, _Mapping]] = ..., teardown: _Optional[_Union[TeardownReport, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., retry: _Optional[_Union[Retry, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., reason: _Optional[str] = ..., queue_position: _Optional[int] = ..., attempt: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class DescribeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobDescription(_message.Message):
    __slots__ = ("status", "events")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "include_logs")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    include_logs: bool
    def __init__(self, job_id: _Optional[str] = ..., include_logs: _Optional[bool] = ...) -> None: ...

class GetJobStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "state", "reason", "worker", "device_index", "gpu", "partition_id", "service_id", "submitted_at", "started_at", "finished_at", "attempt", "teardown", "has_result", "queue_position", "owner", "trace_id", "python", "image", "checkpoint_step", "checkpoints", "ran_seconds", "instance", "calls", "failed_calls", "methods")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_FIELD_NUMBER: _ClassVar[int]
    HAS_RESULT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    RAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILED_CALLS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: JobState
    reason: str
    worker: str
    device_index: int
    gpu: float
    partition_id: str
    service_id: str
    submitted_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    attempt: int
    teardown: TeardownReport
    has_result: bool
    queue_position: int
    owner: str
    trace_id: str
    python: str
    image: str
    checkpoint_step: int
    checkpoints: int
    ran_seconds: float
    instance: bool
    calls: int
    failed_calls: int
    methods: _containers.RepeatedCompositeFieldContainer[MethodCalls]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., worker: _Optional[str] = ..., device_index: _Optional[int] = ..., gpu: _Optional[float] = ..., partition_id: _Optional[str] = ..., service_id: _Optional[str] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., teardown: _Optional[_Union[TeardownReport, _Mapping]] = ..., has_result: _Optional[bool] = ..., queue_position: _Optional[int] = ..., owner: _Optional[str] = ..., trace_id: _Optional[str] = ..., python: _Optional[str] = ..., image: _Optional[str] = ..., checkpoint_step: _Optional[int] = ..., checkpoints: _Optional[int] = ..., ran_seconds: _Optional[float] = ..., instance: _Optional[bool] = ..., calls: _Optional[int] = ..., failed_calls: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodCalls, _Mapping]]] = ...) -> None: ...

class MethodCalls(_message.Message):
    __slots__ = ("method", "calls", "failed", "seconds")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    method: str
    calls: int
    failed: int
    seconds: float
    def __init__(self, method: _Optional[str] = ..., calls: _Optional[int] = ..., failed: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class InstanceCall(_message.Message):
    __slots__ = ("job_id", "call_id", "method", "args", "cancel")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    call_id: int
    method: str
    args: bytes
    cancel: bool
    def __init__(self, job_id: _Optional[str] = ..., call_id: _Optional[int] = ..., method: _Optional[str] = ..., args: _Optional[bytes] = ..., cancel: _Optional[bool] = ...) -> None: ...

class InstanceReply(_message.Message):
    __slots__ = ("call_id", "end", "envelope", "message", "code")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    end: CallEnd
    envelope: bytes
    message: str
    code: int
    def __init__(self, call_id: _Optional[int] = ..., end: _Optional[_Union[CallEnd, str]] = ..., envelope: _Optional[bytes] = ..., message: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "until_stopped")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_STOPPED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    until_stopped: bool
    def __init__(self, job_id: _Optional[str] = ..., until_stopped: _Optional[bool] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id", "grace_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_seconds: int
    def __init__(self, job_id: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class PauseJobResponse(_message.Message):
    __slots__ = ("status", "was_running")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    was_running: bool
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ..., was_running: _Optional[bool] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("status", "was_running", "teardown")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WAS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    was_running: bool
    teardown: TeardownReport
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ..., was_running: _Optional[bool] = ..., teardown: _Optional[_Union[TeardownReport, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("index", "name", "kind", "is_gpu", "memory_bytes", "uuid", "used_share", "free_share")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IS_GPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    USED_SHARE_FIELD_NUMBER: _ClassVar[int]
    FREE_SHARE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    kind: str
    is_gpu: bool
    memory_bytes: int
    uuid: str
    used_share: float
    free_share: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., is_gpu: _Optional[bool] = ..., memory_bytes: _Optional[int] = ..., uuid: _Optional[str] = ..., used_share: _Optional[float] = ..., free_share: _Optional[float] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("node_id", "hostname", "ssh_address", "state", "healthy", "devices", "running_jobs", "reason", "availability", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SSH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    ssh_address: str
    state: str
    healthy: bool
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    running_jobs: int
    reason: str
    availability: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ssh_address: _Optional[str] = ..., state: _Optional[str] = ..., healthy: _Optional[bool] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., running_jobs: _Optional[int] = ..., reason: _Optional[str] = ..., availability: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("include_finished", "limit")
    INCLUDE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    include_finished: bool
    limit: int
    def __init__(self, include_finished: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class HealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ("status", "reason", "version", "supervisor_id", "workers_ready", "jobs_active", "python_versions")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[HealthCheckResponse.Status]
        SERVING: _ClassVar[HealthCheckResponse.Status]
        NOT_SERVING: _ClassVar[HealthCheckResponse.Status]
    UNKNOWN: HealthCheckResponse.Status
    SERVING: HealthCheckResponse.Status
    NOT_SERVING: HealthCheckResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_READY_FIELD_NUMBER: _ClassVar[int]
    JOBS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    status: HealthCheckResponse.Status
    reason: str
    version: str
    supervisor_id: str
    workers_ready: int
    jobs_active: int
    python_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[HealthCheckResponse.Status, str]] = ..., reason: _Optional[str] = ..., version: _Optional[str] = ..., supervisor_id: _Optional[str] = ..., workers_ready: _Optional[int] = ..., jobs_active: _Optional[int] = ..., python_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("name", "admin", "max_running", "max_queued", "max_gpu", "rate", "created_at", "revoked")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_GPU_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    name: str
    admin: bool
    max_running: int
    max_queued: int
    max_gpu: float
    rate: float
    created_at: _timestamp_pb2.Timestamp
    revoked: bool
    def __init__(self, name: _Optional[str] = ..., admin: _Optional[bool] = ..., max_running: _Optional[int] = ..., max_queued: _Optional[int] = ..., max_gpu: _Optional[float] = ..., rate: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RotateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("since", "by")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    by: UsageGroup
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., by: _Optional[_Union[UsageGroup, str]] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("key", "jobs", "attempts", "device_seconds", "gpu_seconds", "wall_seconds", "queue_seconds", "cost", "unpriced_device_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    jobs: int
    attempts: int
    device_seconds: float
    gpu_seconds: float
    wall_seconds: float
    queue_seconds: float
    cost: float
    unpriced_device_seconds: float
    def __init__(self, key: _Optional[str] = ..., jobs: _Optional[int] = ..., attempts: _Optional[int] = ..., device_seconds: _Optional[float] = ..., gpu_seconds: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., cost: _Optional[float] = ..., unpriced_device_seconds: _Optional[float] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rows", "total", "currency", "since")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    total: UsageRow
    currency: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., total: _Optional[_Union[UsageRow, _Mapping]] = ..., currency: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

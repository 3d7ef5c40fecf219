import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinTokenState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOIN_TOKEN_STATE_UNSPECIFIED: _ClassVar[JoinTokenState]
    JOIN_TOKEN_PENDING: _ClassVar[JoinTokenState]
    JOIN_TOKEN_REGISTERED: _ClassVar[JoinTokenState]
    JOIN_TOKEN_USED: _ClassVar[JoinTokenState]
    JOIN_TOKEN_EXPIRED: _ClassVar[JoinTokenState]
    JOIN_TOKEN_REVOKED: _ClassVar[JoinTokenState]
JOIN_TOKEN_STATE_UNSPECIFIED: JoinTokenState
JOIN_TOKEN_PENDING: JoinTokenState
JOIN_TOKEN_REGISTERED: JoinTokenState
JOIN_TOKEN_USED: JoinTokenState
JOIN_TOKEN_EXPIRED: JoinTokenState
JOIN_TOKEN_REVOKED: JoinTokenState

class JoinTokenInfo(_message.Message):
    __slots__ = ("id", "state", "created_at", "expires_at", "created_by", "labels", "hostname", "ssh_address", "node_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SSH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JoinTokenState
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    created_by: str
    labels: _containers.ScalarMap[str, str]
    hostname: str
    ssh_address: str
    node_id: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JoinTokenState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hostname: _Optional[str] = ..., ssh_address: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, ttl_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "info", "command", "script_url", "tls_public_key_pin")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_URL_FIELD_NUMBER: _ClassVar[int]
    TLS_PUBLIC_KEY_PIN_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: JoinTokenInfo
    command: str
    script_url: str
    tls_public_key_pin: str
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[JoinTokenInfo, _Mapping]] = ..., command: _Optional[str] = ..., script_url: _Optional[str] = ..., tls_public_key_pin: _Optional[str] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinTokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinTokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("hostname", "ssh_address", "host_key")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SSH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_KEY_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ssh_address: str
    host_key: str
    def __init__(self, hostname: _Optional[str] = ..., ssh_address: _Optional[str] = ..., host_key: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("swarm_join_token", "manager_addresses", "supervisor_ssh_public_key", "ssh_user", "worker_image", "registry", "ca_certificate", "cluster_name")
    SWARM_JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MANAGER_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SUPERVISOR_SSH_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SSH_USER_FIELD_NUMBER: _ClassVar[int]
    WORKER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    swarm_join_token: str
    manager_addresses: _containers.RepeatedScalarFieldContainer[str]
    supervisor_ssh_public_key: str
    ssh_user: str
    worker_image: str
    registry: str
    ca_certificate: str
    cluster_name: str
    def __init__(self, swarm_join_token: _Optional[str] = ..., manager_addresses: _Optional[_Iterable[str]] = ..., supervisor_ssh_public_key: _Optional[str] = ..., ssh_user: _Optional[str] = ..., worker_image: _Optional[str] = ..., registry: _Optional[str] = ..., ca_certificate: _Optional[str] = ..., cluster_name: _Optional[str] = ...) -> None: ...

class CompleteJoinRequest(_message.Message):
    __slots__ = ("node_id", "worker_json")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_JSON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    worker_json: str
    def __init__(self, node_id: _Optional[str] = ..., worker_json: _Optional[str] = ...) -> None: ...

class CompleteJoinResponse(_message.Message):
    __slots__ = ("node_id", "hostname", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("name", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_seconds: int
    def __init__(self, name: _Optional[str] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("node_id", "hostname", "availability", "running_jobs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    availability: str
    running_jobs: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., availability: _Optional[str] = ..., running_jobs: _Optional[int] = ...) -> None: ...

class ActivateWorkerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ActivateWorkerResponse(_message.Message):
    __slots__ = ("node_id", "hostname", "availability")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    availability: str
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., availability: _Optional[str] = ...) -> None: ...

class RemoveWorkerRequest(_message.Message):
    __slots__ = ("name", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_seconds: int
    def __init__(self, name: _Optional[str] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class RemoveWorkerResponse(_message.Message):
    __slots__ = ("node_id", "hostname", "cancelled_jobs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_JOBS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    cancelled_jobs: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., cancelled_jobs: _Optional[int] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IndexCredentialsInfo(_message.Message):
    __slots__ = ("index_url", "owner", "created_at", "updated_at")
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    index_url: str
    owner: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, index_url: _Optional[str] = ..., owner: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StoreIndexCredentialsRequest(_message.Message):
    __slots__ = ("index_url", "username", "password")
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    index_url: str
    username: str
    password: str
    def __init__(self, index_url: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class StoreIndexCredentialsResponse(_message.Message):
    __slots__ = ("info", "replaced")
    INFO_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    info: IndexCredentialsInfo
    replaced: bool
    def __init__(self, info: _Optional[_Union[IndexCredentialsInfo, _Mapping]] = ..., replaced: _Optional[bool] = ...) -> None: ...

class ListIndexCredentialsRequest(_message.Message):
    __slots__ = ("all_users",)
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    all_users: bool
    def __init__(self, all_users: _Optional[bool] = ...) -> None: ...

class ListIndexCredentialsResponse(_message.Message):
    __slots__ = ("credentials", "allowed_indexes")
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_INDEXES_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[IndexCredentialsInfo]
    allowed_indexes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, credentials: _Optional[_Iterable[_Union[IndexCredentialsInfo, _Mapping]]] = ..., allowed_indexes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteIndexCredentialsRequest(_message.Message):
    __slots__ = ("index_url",)
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    index_url: str
    def __init__(self, index_url: _Optional[str] = ...) -> None: ...

class DeleteIndexCredentialsResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: IndexCredentialsInfo
    def __init__(self, info: _Optional[_Union[IndexCredentialsInfo, _Mapping]] = ...) -> None: ...

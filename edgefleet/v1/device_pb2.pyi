from edgefleet.v1 import profile_pb2 as _profile_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_STARTING: _ClassVar[AgentState]
    AGENT_STATE_READY: _ClassVar[AgentState]
    AGENT_STATE_DEGRADED: _ClassVar[AgentState]
    AGENT_STATE_STOPPING: _ClassVar[AgentState]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_STARTING: AgentState
AGENT_STATE_READY: AgentState
AGENT_STATE_DEGRADED: AgentState
AGENT_STATE_STOPPING: AgentState

class RegisterRequest(_message.Message):
    __slots__ = ("instance_key", "name", "profile", "agent_version", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    instance_key: str
    name: str
    profile: _profile_pb2.DeviceProfile
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, instance_key: _Optional[str] = ..., name: _Optional[str] = ..., profile: _Optional[_Union[_profile_pb2.DeviceProfile, _Mapping]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("device_id", "credential", "heartbeat_interval_seconds")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    credential: str
    heartbeat_interval_seconds: float
    def __init__(self, device_id: _Optional[str] = ..., credential: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("device_id", "state", "sequence", "uptime_seconds", "active_variant")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    state: AgentState
    sequence: int
    uptime_seconds: float
    active_variant: str
    def __init__(self, device_id: _Optional[str] = ..., state: _Optional[_Union[AgentState, str]] = ..., sequence: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., active_variant: _Optional[str] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "variant_id")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    generation: int
    variant_id: str
    def __init__(self, generation: _Optional[int] = ..., variant_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("desired", "heartbeat_interval_seconds", "server_time_unix")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    desired: DesiredState
    heartbeat_interval_seconds: float
    server_time_unix: float
    def __init__(self, desired: _Optional[_Union[DesiredState, _Mapping]] = ..., heartbeat_interval_seconds: _Optional[float] = ..., server_time_unix: _Optional[float] = ...) -> None: ...

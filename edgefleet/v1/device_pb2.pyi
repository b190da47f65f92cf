from edgefleet.v1 import profile_pb2 as _profile_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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
    __slots__ = ("instance_key", "name", "profile", "agent_version", "labels", "benchmark", "csr_pem")
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
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    instance_key: str
    name: str
    profile: _profile_pb2.DeviceProfile
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    benchmark: DeviceBenchmark
    csr_pem: bytes
    def __init__(self, instance_key: _Optional[str] = ..., name: _Optional[str] = ..., profile: _Optional[_Union[_profile_pb2.DeviceProfile, _Mapping]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., benchmark: _Optional[_Union[DeviceBenchmark, _Mapping]] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class DeviceBenchmark(_message.Message):
    __slots__ = ("macs_per_second", "method")
    MACS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    macs_per_second: float
    method: str
    def __init__(self, macs_per_second: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("device_id", "credential", "heartbeat_interval_seconds", "bundle_public_keys", "certificate_pem", "ca_certificate_pem", "device_endpoint", "device_endpoints")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    credential: str
    heartbeat_interval_seconds: float
    bundle_public_keys: _containers.RepeatedScalarFieldContainer[str]
    certificate_pem: bytes
    ca_certificate_pem: bytes
    device_endpoint: str
    device_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., credential: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., bundle_public_keys: _Optional[_Iterable[str]] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., device_endpoint: _Optional[str] = ..., device_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("device_id", "state", "sequence", "uptime_seconds", "active_variant", "previous_variant", "failed_variant", "failure_reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VARIANT_FIELD_NUMBER: _ClassVar[int]
    FAILED_VARIANT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    state: AgentState
    sequence: int
    uptime_seconds: float
    active_variant: str
    previous_variant: str
    failed_variant: str
    failure_reason: str
    def __init__(self, device_id: _Optional[str] = ..., state: _Optional[_Union[AgentState, str]] = ..., sequence: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., active_variant: _Optional[str] = ..., previous_variant: _Optional[str] = ..., failed_variant: _Optional[str] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "variant_id", "model", "variant_bytes", "rollout_id", "runtime", "context_limit")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    variant_id: str
    model: str
    variant_bytes: int
    rollout_id: str
    runtime: str
    context_limit: int
    def __init__(self, generation: _Optional[int] = ..., variant_id: _Optional[str] = ..., model: _Optional[str] = ..., variant_bytes: _Optional[int] = ..., rollout_id: _Optional[str] = ..., runtime: _Optional[str] = ..., context_limit: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("desired", "heartbeat_interval_seconds", "server_time_unix", "federation", "bundle_public_keys", "device_endpoints")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    desired: DesiredState
    heartbeat_interval_seconds: float
    server_time_unix: float
    federation: Federation
    bundle_public_keys: _containers.RepeatedScalarFieldContainer[str]
    device_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, desired: _Optional[_Union[DesiredState, _Mapping]] = ..., heartbeat_interval_seconds: _Optional[float] = ..., server_time_unix: _Optional[float] = ..., federation: _Optional[_Union[Federation, _Mapping]] = ..., bundle_public_keys: _Optional[_Iterable[str]] = ..., device_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class Federation(_message.Message):
    __slots__ = ("superlink_address", "tls")
    SUPERLINK_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    superlink_address: str
    tls: bool
    def __init__(self, superlink_address: _Optional[str] = ..., tls: _Optional[bool] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "message", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("sequence", "time_unix", "metric", "event")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time_unix: float
    metric: Metric
    event: Event
    def __init__(self, sequence: _Optional[int] = ..., time_unix: _Optional[float] = ..., metric: _Optional[_Union[Metric, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class ReportTelemetryRequest(_message.Message):
    __slots__ = ("device_id", "records")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    records: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    def __init__(self, device_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ...) -> None: ...

class ReportTelemetryResponse(_message.Message):
    __slots__ = ("acked_sequence", "accepted", "duplicates")
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    acked_sequence: int
    accepted: int
    duplicates: int
    def __init__(self, acked_sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

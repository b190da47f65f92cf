import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from edgefleet.v1 import device_pb2 as _device_pb2
from edgefleet.v1 import profile_pb2 as _profile_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_ONLINE: _ClassVar[DeviceStatus]
    DEVICE_STATUS_OFFLINE: _ClassVar[DeviceStatus]
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
DEVICE_STATUS_ONLINE: DeviceStatus
DEVICE_STATUS_OFFLINE: DeviceStatus

class Device(_message.Message):
    __slots__ = ("id", "name", "profile", "status", "registered_at", "last_seen", "agent_version", "labels", "reported_state", "uptime_seconds", "active_variant", "desired", "telemetry_records", "telemetry_sequence", "latest_metrics", "previous_variant", "failed_variant", "failure_reason", "benchmark")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LatestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_STATE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_RECORDS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VARIANT_FIELD_NUMBER: _ClassVar[int]
    FAILED_VARIANT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    profile: _profile_pb2.DeviceProfile
    status: DeviceStatus
    registered_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    reported_state: _device_pb2.AgentState
    uptime_seconds: float
    active_variant: str
    desired: _device_pb2.DesiredState
    telemetry_records: int
    telemetry_sequence: int
    latest_metrics: _containers.ScalarMap[str, float]
    previous_variant: str
    failed_variant: str
    failure_reason: str
    benchmark: _device_pb2.DeviceBenchmark
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., profile: _Optional[_Union[_profile_pb2.DeviceProfile, _Mapping]] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., reported_state: _Optional[_Union[_device_pb2.AgentState, str]] = ..., uptime_seconds: _Optional[float] = ..., active_variant: _Optional[str] = ..., desired: _Optional[_Union[_device_pb2.DesiredState, _Mapping]] = ..., telemetry_records: _Optional[int] = ..., telemetry_sequence: _Optional[int] = ..., latest_metrics: _Optional[_Mapping[str, float]] = ..., previous_variant: _Optional[str] = ..., failed_variant: _Optional[str] = ..., failure_reason: _Optional[str] = ..., benchmark: _Optional[_Union[_device_pb2.DeviceBenchmark, _Mapping]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("profile", "status")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    profile: str
    status: DeviceStatus
    def __init__(self, profile: _Optional[str] = ..., status: _Optional[_Union[DeviceStatus, str]] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class GetDeviceResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RemoveDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetFleetSummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProfileCount(_message.Message):
    __slots__ = ("profile", "online", "offline")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    online: int
    offline: int
    def __init__(self, profile: _Optional[str] = ..., online: _Optional[int] = ..., offline: _Optional[int] = ...) -> None: ...

class GetFleetSummaryResponse(_message.Message):
    __slots__ = ("total", "online", "offline", "by_profile", "offline_after_seconds")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    BY_PROFILE_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    total: int
    online: int
    offline: int
    by_profile: _containers.RepeatedCompositeFieldContainer[ProfileCount]
    offline_after_seconds: float
    def __init__(self, total: _Optional[int] = ..., online: _Optional[int] = ..., offline: _Optional[int] = ..., by_profile: _Optional[_Iterable[_Union[ProfileCount, _Mapping]]] = ..., offline_after_seconds: _Optional[float] = ...) -> None: ...

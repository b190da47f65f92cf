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
    __slots__ = ("profile", "status", "page_size", "page_token")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    profile: str
    status: DeviceStatus
    page_size: int
    page_token: str
    def __init__(self, profile: _Optional[str] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

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

class ExplainDeviceRequest(_message.Message):
    __slots__ = ("device_id", "model", "accuracy_tolerance", "latency_slo_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: str
    accuracy_tolerance: float
    latency_slo_ms: float
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[str] = ..., accuracy_tolerance: _Optional[float] = ..., latency_slo_ms: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("variant_id", "recipe", "precision", "accuracy", "bundle_bytes", "runtime", "predicted_latency_ms", "fits", "failures", "chosen")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    recipe: str
    precision: str
    accuracy: float
    bundle_bytes: int
    runtime: str
    predicted_latency_ms: float
    fits: bool
    failures: _containers.RepeatedScalarFieldContainer[str]
    chosen: bool
    def __init__(self, variant_id: _Optional[str] = ..., recipe: _Optional[str] = ..., precision: _Optional[str] = ..., accuracy: _Optional[float] = ..., bundle_bytes: _Optional[int] = ..., runtime: _Optional[str] = ..., predicted_latency_ms: _Optional[float] = ..., fits: _Optional[bool] = ..., failures: _Optional[_Iterable[str]] = ..., chosen: _Optional[bool] = ...) -> None: ...

class ExplainDeviceResponse(_message.Message):
    __slots__ = ("device_id", "model", "reason", "chosen_variant", "candidates", "device_macs_per_second", "latency_correction")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_VARIANT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MACS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: str
    reason: str
    chosen_variant: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    device_macs_per_second: float
    latency_correction: float
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ..., chosen_variant: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., device_macs_per_second: _Optional[float] = ..., latency_correction: _Optional[float] = ...) -> None: ...

class RolloutGate(_message.Message):
    __slots__ = ("soak_seconds", "max_failed_devices", "max_error_rate", "max_latency_ratio", "min_accuracy", "wave_timeout_seconds", "min_inferences", "max_ttft_ms", "min_tokens_per_s")
    SOAK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    WAVE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_INFERENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    soak_seconds: float
    max_failed_devices: int
    max_error_rate: float
    max_latency_ratio: float
    min_accuracy: float
    wave_timeout_seconds: float
    min_inferences: int
    max_ttft_ms: float
    min_tokens_per_s: float
    def __init__(self, soak_seconds: _Optional[float] = ..., max_failed_devices: _Optional[int] = ..., max_error_rate: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., min_accuracy: _Optional[float] = ..., wave_timeout_seconds: _Optional[float] = ..., min_inferences: _Optional[int] = ..., max_ttft_ms: _Optional[float] = ..., min_tokens_per_s: _Optional[float] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("model", "selector", "strategy", "waves", "canary_fraction", "gate", "accuracy_tolerance", "latency_slo_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    CANARY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    selector: str
    strategy: str
    waves: _containers.RepeatedScalarFieldContainer[float]
    canary_fraction: float
    gate: RolloutGate
    accuracy_tolerance: float
    latency_slo_ms: float
    def __init__(self, model: _Optional[str] = ..., selector: _Optional[str] = ..., strategy: _Optional[str] = ..., waves: _Optional[_Iterable[float]] = ..., canary_fraction: _Optional[float] = ..., gate: _Optional[_Union[RolloutGate, _Mapping]] = ..., accuracy_tolerance: _Optional[float] = ..., latency_slo_ms: _Optional[float] = ...) -> None: ...

class RolloutDevice(_message.Message):
    __slots__ = ("device_id", "name", "profile", "wave", "variant_id", "recipe", "runtime", "predicted_latency_ms", "status", "detail", "context_limit")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    profile: str
    wave: int
    variant_id: str
    recipe: str
    runtime: str
    predicted_latency_ms: float
    status: str
    detail: str
    context_limit: int
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., profile: _Optional[str] = ..., wave: _Optional[int] = ..., variant_id: _Optional[str] = ..., recipe: _Optional[str] = ..., runtime: _Optional[str] = ..., predicted_latency_ms: _Optional[float] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., context_limit: _Optional[int] = ...) -> None: ...

class SkippedDevice(_message.Message):
    __slots__ = ("device_id", "name", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    name: str
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "model", "selector", "strategy", "state", "current_wave", "waves", "message", "devices", "skipped", "created_at", "updated_at", "gate")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    selector: str
    strategy: str
    state: str
    current_wave: int
    waves: _containers.RepeatedScalarFieldContainer[float]
    message: str
    devices: _containers.RepeatedCompositeFieldContainer[RolloutDevice]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedDevice]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    gate: RolloutGate
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., selector: _Optional[str] = ..., strategy: _Optional[str] = ..., state: _Optional[str] = ..., current_wave: _Optional[int] = ..., waves: _Optional[_Iterable[float]] = ..., message: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[RolloutDevice, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedDevice, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gate: _Optional[_Union[RolloutGate, _Mapping]] = ...) -> None: ...

class RolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class ControlRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "action")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    action: str
    def __init__(self, rollout_id: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class CreateEnrollmentTokenRequest(_message.Message):
    __slots__ = ("uses", "ttl_seconds")
    USES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    uses: int
    ttl_seconds: float
    def __init__(self, uses: _Optional[int] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class CreateEnrollmentTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at", "uses")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    uses: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uses: _Optional[int] = ...) -> None: ...

class RevokeDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RevokeDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("tensor", "values", "labels")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    values: FloatList
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., values: _Optional[_Union[FloatList, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values", "shape")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("logits", "argmax")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    ARGMAX_FIELD_NUMBER: _ClassVar[int]
    logits: _containers.RepeatedScalarFieldContainer[float]
    argmax: int
    def __init__(self, logits: _Optional[_Iterable[float]] = ..., argmax: _Optional[int] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("predictions", "latency_ms", "latency_source", "variant_id", "runtime")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    latency_ms: float
    latency_source: str
    variant_id: str
    runtime: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., latency_source: _Optional[str] = ..., variant_id: _Optional[str] = ..., runtime: _Optional[str] = ...) -> None: ...

class GetServingStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServingStatusResponse(_message.Message):
    __slots__ = ("variant_id", "runtime", "requests", "errors", "rejected", "latency_bounds_ms", "latency_counts", "last_refusal")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    runtime: str
    requests: int
    errors: int
    rejected: int
    latency_bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    last_refusal: str
    def __init__(self, variant_id: _Optional[str] = ..., runtime: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., rejected: _Optional[int] = ..., latency_bounds_ms: _Optional[_Iterable[float]] = ..., latency_counts: _Optional[_Iterable[int]] = ..., last_refusal: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("text", "data", "max_tokens", "temperature", "top_k", "top_p", "stop", "seed")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    text: str
    data: bytes
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[bytes]
    seed: int
    def __init__(self, text: _Optional[str] = ..., data: _Optional[bytes] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[bytes]] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("data", "index", "finish_reason", "time_to_first_token_ms", "tokens_per_second", "prompt_tokens", "variant_id", "context_limit")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    index: int
    finish_reason: str
    time_to_first_token_ms: float
    tokens_per_second: float
    prompt_tokens: int
    variant_id: str
    context_limit: int
    def __init__(self, data: _Optional[bytes] = ..., index: _Optional[int] = ..., finish_reason: _Optional[str] = ..., time_to_first_token_ms: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., variant_id: _Optional[str] = ..., context_limit: _Optional[int] = ...) -> None: ...

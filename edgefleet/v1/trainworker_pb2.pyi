from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NamedArray(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("arch", "arch_config", "frontend")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ARCH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    arch: str
    arch_config: str
    frontend: str
    def __init__(self, arch: _Optional[str] = ..., arch_config: _Optional[str] = ..., frontend: _Optional[str] = ...) -> None: ...

class FitRequest(_message.Message):
    __slots__ = ("model", "params", "epochs", "batch_size", "lr", "proximal_mu", "seed", "budget_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    params: _containers.RepeatedCompositeFieldContainer[NamedArray]
    epochs: int
    batch_size: int
    lr: float
    proximal_mu: float
    seed: int
    budget_bytes: int
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., params: _Optional[_Iterable[_Union[NamedArray, _Mapping]]] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., proximal_mu: _Optional[float] = ..., seed: _Optional[int] = ..., budget_bytes: _Optional[int] = ...) -> None: ...

class FitResponse(_message.Message):
    __slots__ = ("trained", "train_loss", "before_loss", "before_acc", "after_loss", "after_acc", "scope", "batch_size", "trained_params", "num_examples", "eval_examples", "worker_seconds")
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_LOSS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ACC_FIELD_NUMBER: _ClassVar[int]
    AFTER_LOSS_FIELD_NUMBER: _ClassVar[int]
    AFTER_ACC_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRAINED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    WORKER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    trained: _containers.RepeatedCompositeFieldContainer[NamedArray]
    train_loss: float
    before_loss: float
    before_acc: float
    after_loss: float
    after_acc: float
    scope: str
    batch_size: int
    trained_params: int
    num_examples: int
    eval_examples: int
    worker_seconds: float
    def __init__(self, trained: _Optional[_Iterable[_Union[NamedArray, _Mapping]]] = ..., train_loss: _Optional[float] = ..., before_loss: _Optional[float] = ..., before_acc: _Optional[float] = ..., after_loss: _Optional[float] = ..., after_acc: _Optional[float] = ..., scope: _Optional[str] = ..., batch_size: _Optional[int] = ..., trained_params: _Optional[int] = ..., num_examples: _Optional[int] = ..., eval_examples: _Optional[int] = ..., worker_seconds: _Optional[float] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "params")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    params: _containers.RepeatedCompositeFieldContainer[NamedArray]
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., params: _Optional[_Iterable[_Union[NamedArray, _Mapping]]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("loss", "accuracy", "num_examples")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    loss: float
    accuracy: float
    num_examples: int
    def __init__(self, loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., num_examples: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("pid", "data_path", "fits", "evaluates", "rejected", "shard_cache_hits", "shard_cache_misses", "torch_loaded", "busy", "uptime_seconds")
    PID_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    EVALUATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SHARD_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    SHARD_CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    TORCH_LOADED_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    data_path: str
    fits: int
    evaluates: int
    rejected: int
    shard_cache_hits: int
    shard_cache_misses: int
    torch_loaded: bool
    busy: bool
    uptime_seconds: float
    def __init__(self, pid: _Optional[int] = ..., data_path: _Optional[str] = ..., fits: _Optional[int] = ..., evaluates: _Optional[int] = ..., rejected: _Optional[int] = ..., shard_cache_hits: _Optional[int] = ..., shard_cache_misses: _Optional[int] = ..., torch_loaded: _Optional[bool] = ..., busy: _Optional[bool] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

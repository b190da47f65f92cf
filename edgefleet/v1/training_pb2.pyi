from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartRunRequest(_message.Message):
    __slots__ = ("model", "rounds", "strategy", "min_devices", "select", "lr", "local_epochs", "proximal_mu", "dp", "dp_noise", "dp_clip", "round_timeout_seconds", "name", "register", "init_weights", "buffer", "max_staleness", "update_codec", "secure_agg", "lora_rank", "lora_alpha", "lora_targets", "lora_steps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MIN_DEVICES_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    INIT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CODEC_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGG_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGETS_FIELD_NUMBER: _ClassVar[int]
    LORA_STEPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    rounds: int
    strategy: str
    min_devices: int
    select: str
    lr: float
    local_epochs: int
    proximal_mu: float
    dp: str
    dp_noise: float
    dp_clip: float
    round_timeout_seconds: float
    name: str
    register: bool
    init_weights: bytes
    buffer: int
    max_staleness: int
    update_codec: str
    secure_agg: bool
    lora_rank: int
    lora_alpha: float
    lora_targets: _containers.RepeatedScalarFieldContainer[str]
    lora_steps: int
    def __init__(self, model: _Optional[str] = ..., rounds: _Optional[int] = ..., strategy: _Optional[str] = ..., min_devices: _Optional[int] = ..., select: _Optional[str] = ..., lr: _Optional[float] = ..., local_epochs: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., dp: _Optional[str] = ..., dp_noise: _Optional[float] = ..., dp_clip: _Optional[float] = ..., round_timeout_seconds: _Optional[float] = ..., name: _Optional[str] = ..., register: _Optional[bool] = ..., init_weights: _Optional[bytes] = ..., buffer: _Optional[int] = ..., max_staleness: _Optional[int] = ..., update_codec: _Optional[str] = ..., secure_agg: _Optional[bool] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., lora_targets: _Optional[_Iterable[str]] = ..., lora_steps: _Optional[int] = ...) -> None: ...

class TrainingRound(_message.Message):
    __slots__ = ("round", "participants", "failed", "train_loss", "client_eval_acc", "test_acc", "seconds")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_EVAL_ACC_FIELD_NUMBER: _ClassVar[int]
    TEST_ACC_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    round: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    failed: int
    train_loss: float
    client_eval_acc: float
    test_acc: float
    seconds: float
    def __init__(self, round: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., failed: _Optional[int] = ..., train_loss: _Optional[float] = ..., client_eval_acc: _Optional[float] = ..., test_acc: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class TrainingRun(_message.Message):
    __slots__ = ("name", "state", "reason", "model", "strategy", "num_rounds", "superlink", "flwr_run_id", "rounds", "initial_test_acc", "final_test_acc", "registered_model", "created_unix", "record_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SUPERLINK_FIELD_NUMBER: _ClassVar[int]
    FLWR_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_TEST_ACC_FIELD_NUMBER: _ClassVar[int]
    FINAL_TEST_ACC_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    reason: str
    model: str
    strategy: str
    num_rounds: int
    superlink: str
    flwr_run_id: int
    rounds: _containers.RepeatedCompositeFieldContainer[TrainingRound]
    initial_test_acc: float
    final_test_acc: float
    registered_model: str
    created_unix: float
    record_json: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., model: _Optional[str] = ..., strategy: _Optional[str] = ..., num_rounds: _Optional[int] = ..., superlink: _Optional[str] = ..., flwr_run_id: _Optional[int] = ..., rounds: _Optional[_Iterable[_Union[TrainingRound, _Mapping]]] = ..., initial_test_acc: _Optional[float] = ..., final_test_acc: _Optional[float] = ..., registered_model: _Optional[str] = ..., created_unix: _Optional[float] = ..., record_json: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[TrainingRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[TrainingRun, _Mapping]]] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
